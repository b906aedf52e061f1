"""Reporting: the dbt project in `dbt_project/` (dbt-duckdb over the stage outputs' Delta tables) as assets.

The models read each stage's Delta table with DuckDB's `delta_scan` (the `delta` extension, shipped in the
`duckdb-ext-delta` wheel beside `httpfs`, so nothing is downloaded at run time), on a local folder or S3 alike;
`delta_scan` reads a table's latest committed version, so a report never sees half a write.

Each dbt source table is a stage; its Dagster dependencies are that stage's `[<dataset>, <stage>]` assets of
every dataset, so lineage in the UI runs from collection to the reports. dbt tests are asset checks. The
manifest is prepared at install time (`make install` runs `dagster-dbt project prepare-and-package`); a
checkout without one parses the project once at load.
"""

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import dagster as dg
import yaml
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from datamate_resources import tables
from datamate_resources.settings import Settings
from datamate_resources.storage import ObjectStore

REPORTING_GROUP = "reporting"
SOURCE_PREFIX = "datamate_stage"  # placeholder key of a dbt source, replaced by the stage's real assets
DBT_PROJECT_DIR = Path(__file__).resolve().parents[1] / "dbt_project"

DBT_EXECUTABLE = str(Path(sys.executable).parent / "dbt")
# dbt sources that are no stage's output but a log some stages append to (datamate_resources.llm.record_usage):
# a model reading one depends on those stages, and reads the log of every dataset that has one of them.
# `annotated` appends to llm_usage only with `labeler: llm`; with embeddings the dependency costs nothing.
LOG_TABLES = {"llm_usage": ("synthesized", "evaluation", "annotated")}

# Only paths: the manifest is prepared when the definitions are built (`with_reporting`), not at import.
dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR)


class ReportingTranslator(DagsterDbtTranslator):
    """dbt models become `reporting/<model>` assets; a model reading the dbt source `<stage>` depends on the
    `[<dataset>, <stage>]` asset of every dataset, so runs order them and lineage runs to collection."""

    def __init__(self, stage_keys: dict[str, list[dg.AssetKey]]):
        super().__init__()
        self.stage_keys = stage_keys

    def get_asset_spec(self, manifest, unique_id, project) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        props = self.get_resource_props(manifest, unique_id)
        if props["resource_type"] == "source":  # a placeholder: models depend on the stages' assets instead
            return spec.replace_attributes(key=dg.AssetKey([SOURCE_PREFIX, props["name"]]))
        deps = []
        for dep in spec.deps:
            if dep.asset_key.path[0] == SOURCE_PREFIX:
                deps += [dg.AssetDep(k) for k in self.stage_keys.get(dep.asset_key.path[1], [])]
            else:
                deps.append(dep)
        return spec.replace_attributes(
            key=dg.AssetKey([REPORTING_GROUP, props["name"]]), group_name=REPORTING_GROUP, deps=deps,
            automation_condition=dg.AutomationCondition.eager(),
        )


def duckdb_extension_directory() -> str:
    """Where the `duckdb-ext-delta` and `duckdb-ext-httpfs` wheels put their extensions: duckdb cannot download
    extensions here."""
    return str(Path(importlib.util.find_spec("duckdb_ext").submodule_search_locations[0]) / "extensions")


def write_profile(settings: Settings) -> Path:
    """profiles.yml for this environment, under DATAMATE_HOME; secrets stay env_var() references."""
    output: dict = {
        "type": "duckdb",
        "path": str(settings.home / "reporting.duckdb"),
        "threads": 1,
        "config_options": {"extension_directory": duckdb_extension_directory()},
        "extensions": ["delta"],
    }
    if settings.uses_s3:
        endpoint = settings.s3_endpoint_url or "https://s3.amazonaws.com"
        output["extensions"] = ["httpfs", "delta"]
        output["secrets"] = [{
            "type": "s3",
            "key_id": "{{ env_var('AWS_ACCESS_KEY_ID', '') }}",
            "secret": "{{ env_var('AWS_SECRET_ACCESS_KEY', '') }}",
            "region": "{{ env_var('AWS_REGION', 'us-east-1') }}",
            "endpoint": endpoint.split("://", 1)[-1].rstrip("/"),
            "use_ssl": endpoint.startswith("https://"),
            # MinIO and other custom endpoints address buckets by path.
            "url_style": "path" if settings.s3_endpoint_url else "vhost",
        }]
    directory = settings.home / "dbt"
    directory.mkdir(parents=True, exist_ok=True)
    profile = {"datamate": {"target": "run", "outputs": {"run": output}}}
    (directory / "profiles.yml").write_text(yaml.safe_dump(profile, sort_keys=False), encoding="utf-8")
    return directory


def stage_tables(storage: ObjectStore, stage_keys: list[dg.AssetKey]) -> dict[str, list[dict[str, str]]]:
    """dbt source name → the Delta tables written so far, `{"dataset", "uri"}` each (the `stage_tables` dbt var)."""
    found: dict[str, list[dict[str, str]]] = {}
    for asset_key in stage_keys:
        *folders, stage = asset_key.path
        dataset = "/".join(folders)
        ref = tables.current(storage, dataset, stage)
        if ref is not None:
            found.setdefault(stage, []).append({"dataset": dataset, "uri": ref.uri})
    return found


def with_reporting(defs: dg.Definitions, settings: Settings) -> dg.Definitions:
    """`defs` plus the dbt models, each depending on the stage assets of every dataset that has them."""
    # dagster-dbt finds dbt on PATH; `dg` and daemons started outside the venv do not have its bin there.
    if shutil.which("dbt") is None:
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    dbt_project.prepare_if_dev()  # under `dagster dev`, picks up edited models
    if not dbt_project.manifest_path.exists():
        dbt_project.preparer.prepare(dbt_project)
    existing = {k for a in defs.assets or [] for k in (a.keys if isinstance(a, dg.AssetsDefinition) else [a.key])}
    by_stage: dict[str, list[dg.AssetKey]] = {}
    for asset_key in sorted(existing, key=lambda k: k.path):
        if len(asset_key.path) == 2 and asset_key.path[0] != REPORTING_GROUP:
            by_stage.setdefault(asset_key.path[1], []).append(asset_key)
    writers = {log: [k for stage in stages for k in by_stage.get(stage, [])] for log, stages in LOG_TABLES.items()}
    # One key per dataset: `stage_tables` finds `<dataset>/<log>` from it, once.
    log_keys = {log: sorted({dg.AssetKey([*k.path[:-1], log]) for k in keys}, key=lambda k: k.path)
                for log, keys in writers.items()}

    # Dependencies are set by the translator, not by `map_asset_specs` afterwards: in Dagster 1.13 that keeps
    # the op's old input→key mapping, so a run would start the dbt step before the stages it reads.
    @dbt_assets(
        manifest=dbt_project.manifest_path, project=dbt_project, name="reporting_dbt",
        dagster_dbt_translator=ReportingTranslator({**by_stage, **writers}),
    )
    def reporting(context: dg.AssetExecutionContext, dbt: DbtCliResource, storage: ObjectStore):
        sources = [k for stage, keys in {**by_stage, **log_keys}.items() for k in keys if stage in source_tables]
        dbt_vars = json.dumps({"stage_tables": stage_tables(storage, sources)})
        yield from dbt.cli(["build", "--vars", dbt_vars], context=context).stream()

    manifest = json.loads(dbt_project.manifest_path.read_text(encoding="utf-8"))
    source_tables = {source["name"] for source in manifest["sources"].values()}

    dbt = DbtCliResource(
        project_dir=dbt_project, profiles_dir=str(write_profile(settings)), dbt_executable=DBT_EXECUTABLE
    )
    return dg.Definitions.merge(
        defs, dg.Definitions(assets=[reporting], resources={"dbt": dbt})
    )
