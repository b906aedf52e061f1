"""The code location: every dataset is a `DatasetComponent`; this module gathers them with what serves them all.

Datasets come from the dg project's `defs/` folder (`datamate_assets/defs/<name>/defs.yaml`) and from spec files
(`datasets/*.yaml`); when DATAMATE_DATASETS_DIR is set, from that folder's spec files only (deployments, tests).
Load with `dg dev`, `dg check defs`, `dagster dev -m datamate_assets.definitions`, or the workspace.yaml.

A dataset that does not load never takes the others down in a running webserver or daemon: it is logged and
replaced by a one-asset group of its name whose materialization fails with its error, so a command that targets
it (`--select 'group:NAME'`, its `NAME_pipeline` job) fails with the error rather than matching nothing.
`dagster definitions validate` / `dg check defs` fail on it.
"""

import logging
import os
from pathlib import Path

import dagster as dg
from dagster._core.definitions.assets.job.asset_job import IMPLICIT_ASSET_JOB_NAME
from dagster._core.definitions.executor_definition import multiple_process_executor_requirements
from dagster._core.executor.base import Executor

from datamate_assets.automation import project_automation
from datamate_assets.component import DatasetComponent, broken_dataset_definitions, dataset_definitions
from datamate_assets.reporting import with_reporting
from datamate_assets.spec import DatasetSpec, SpecError, SpecFileError, load_specs
from datamate_resources import shared_resources
from datamate_resources.settings import Settings

log = logging.getLogger("datamate")
PACKAGE_DIR = Path(__file__).resolve().parent


class EmptySelectionGuard(Executor):
    """Refuses a run of the implicit asset job that selects nothing. Dagster's CLI (`dagster asset materialize`,
    `dg launch --assets`) hands an empty selection on as "no selection", which runs every asset of every dataset:
    a misspelt `group:` would start hours of work and LLM calls."""

    def __init__(self, inner: Executor):
        self.inner = inner

    @property
    def retries(self):
        return self.inner.retries

    def execute(self, plan_context, execution_plan):
        run = plan_context.dagster_run
        if run.job_name == IMPLICIT_ASSET_JOB_NAME and run.asset_selection is None and not run.op_selection:
            raise dg.DagsterInvalidSubsetError(
                "This run selects no asset: the selection matched nothing (a misspelt group or dataset name?). "
                "Nothing was run. `dagster asset list --select ...` shows what a selection matches; "
                "`datamate run DATASET` validates the dataset and runs its stages."
            )
        yield from self.inner.execute(plan_context, execution_plan)


@dg.executor(name="datamate_executor", config_schema=dg.multiprocess_executor.config_schema,
             requirements=multiple_process_executor_requirements())
def guarded_multiprocess_executor(init_context):
    return EmptySelectionGuard(dg.multiprocess_executor.executor_creation_fn(init_context))


# Runs outside the datasets' own jobs (sensor and automation runs, `dagster asset materialize`): steps in
# processes forked from one that has the code location imported already, so a step does not pay that import.
EXECUTOR = guarded_multiprocess_executor.configured(
    {"start_method": {"forkserver": {"preload_modules": ["datamate_assets.definitions"]}}},
    name="datamate_forkserver_executor",
)


def strict() -> bool:
    """`dagster definitions validate` / `dg check defs`: a broken dataset is an error, not a log line."""
    return os.environ.get("DAGSTER_IS_DEFS_VALIDATION_CLI") == "1"


def load_dataset_specs(settings: Settings) -> list[DatasetSpec]:
    """The spec files' datasets; a broken one is logged and left out (raises under `strict()`)."""
    return spec_file_datasets(settings)[0]


def spec_file_datasets(settings: Settings) -> tuple[list[DatasetSpec], list[SpecError]]:
    if not settings.datasets_dir.is_dir():
        return [], []
    specs, errors = load_specs(settings.datasets_dir)
    if errors and strict():
        raise SpecFileError(errors)
    for error in errors:
        log.error("Dataset spec does not load: %s", error)
    return specs, errors


def defs_folder_datasets(project_dir: Path) -> list[dg.Definitions]:
    """Each component folder of the dg project's defs/ (`defs/<name>/defs.yaml`) built on its own, so one that
    fails spoils no other."""
    from dagster.components.core.component_tree import ComponentTree

    if not (project_dir / "pyproject.toml").is_file():
        return []  # an installed package: the datasets live in the user's own project
    tree = ComponentTree.for_project(project_dir)
    defs_dir = tree.defs_module_path
    built = []
    for folder in sorted(path.parent for path in defs_dir.glob("*/defs.yaml")):
        try:
            built.append(tree.build_defs(folder.relative_to(defs_dir)))
        except Exception as error:  # why: any error of one dataset's definitions is that dataset's alone
            message = error_text(error)
            if strict():
                raise RuntimeError(f"{folder / 'defs.yaml'} does not load:\n{message}") from error
            log.error("Dataset %s does not load: %s", folder / "defs.yaml", message)
            built.append(broken_dataset_definitions(folder.name, message))
    return built


def dataset_specs(settings: Settings) -> tuple[list[DatasetSpec], list[str]]:
    """Every dataset's spec, from the defs/ folder and the spec files, and the errors of those that do not load
    (for the CLI: `datamate validate`, `datamate run`), without building any definitions."""
    from dagster.components.core.component_tree import ComponentTree

    specs, errors = load_specs(settings.datasets_dir) if settings.datasets_dir.is_dir() else ([], [])
    messages = [str(error) for error in errors]
    project_dir = PACKAGE_DIR.parent
    if settings.project_datasets and (project_dir / "pyproject.toml").is_file():
        tree = ComponentTree.for_project(project_dir)
        for folder in sorted(path.parent for path in tree.defs_module_path.glob("*/defs.yaml")):
            try:
                specs.append(tree.load_component(folder.relative_to(tree.defs_module_path), DatasetComponent).spec)
            except Exception as error:  # why: each dataset's error is reported, the others still load
                messages.append(f"{folder / 'defs.yaml'}: {error_text(error)}")
    return specs, messages


def error_text(error: BaseException) -> str:
    """The causes of a component's load error (Dagster wraps them in a tree of the defs folder)."""
    messages = []
    while error is not None:
        messages.append(f"{type(error).__name__}: {error}".strip())
        error = error.__cause__
    return "\n".join(reversed(messages[1:] or messages))


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    datasets = defs_folder_datasets(PACKAGE_DIR.parent) if settings.project_datasets else []
    specs, errors = spec_file_datasets(settings)
    datasets += [dataset_definitions(spec) for spec in specs]
    for file in sorted({error.file for error in errors}):
        problems = "\n".join(str(e) for e in errors if e.file == file)
        datasets.append(broken_dataset_definitions(file.stem, problems))
    merged = dg.Definitions.merge(
        dg.Definitions(resources=shared_resources(settings), executor=EXECUTOR), project_automation(), *datasets
    )
    return with_reporting(merged, settings)


defs = build_definitions()

__all__ = ["DatasetComponent", "build_definitions", "defs"]
