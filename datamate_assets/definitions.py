"""The code location: every dataset spec becomes an asset group, each stage module adds its assets.

Load with `dagster dev -m datamate_assets.definitions`, `dg check defs`, or the workspace.yaml.
"""

import importlib
import logging
import os

import dagster as dg

from datamate_assets.automation import apply_automation
from datamate_assets.reporting import with_reporting
from datamate_assets.spec import DatasetSpec, SpecFileError, load_specs
from datamate_resources import build_resources
from datamate_resources.settings import Settings

# Each module exposes build_defs(spec) -> dg.Definitions for one dataset (empty when its section is absent).
STAGE_MODULES = [
    "datamate_assets.collection",
    "datamate_assets.cleaning",
    "datamate_assets.indexing",
    "datamate_assets.annotation",
    "datamate_assets.synthesis",
    "datamate_assets.evaluation",
]

log = logging.getLogger("datamate")


def load_dataset_specs(settings: Settings) -> list[DatasetSpec]:
    specs, errors = load_specs(settings.datasets_dir)
    if errors:
        # `dagster definitions validate` / `dg check defs` must fail on a bad spec; a running webserver or
        # daemon keeps serving the good datasets and logs the bad one.
        if os.environ.get("DAGSTER_IS_DEFS_VALIDATION_CLI") == "1":
            raise SpecFileError(errors)
        for error in errors:
            log.error("Skipping dataset spec: %s", error)
    return specs


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    specs = load_dataset_specs(settings)
    stages = [importlib.import_module(name) for name in STAGE_MODULES]
    per_dataset = [stage.build_defs(spec) for spec in specs for stage in stages]
    pipelines = dg.Definitions(jobs=[pipeline_job(spec) for spec in specs])
    merged = dg.Definitions.merge(dg.Definitions(resources=build_resources(settings)), pipelines, *per_dataset)
    return apply_automation(with_reporting(merged, settings), specs)


def pipeline_job(spec: DatasetSpec):
    """Every stage of one dataset, in lineage order: what `datamate demo` and the UI's launchpad run."""
    return dg.define_asset_job(
        f"{spec.name}_pipeline",
        selection=dg.AssetSelection.groups(spec.name),
        description=f"All stages of dataset '{spec.name}'",
    )


defs = build_definitions()
