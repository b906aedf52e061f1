"""`datamate run DATASET [--stages STAGE ...]`: validate the dataset's spec, select its assets and materialize them.

    datamate run mydocs                              # every stage of the dataset
    datamate run mydocs --stages collected cleaned   # only these (their inputs must have been materialized)

Runs in this process on the project's Dagster instance ($DAGSTER_HOME, else `.datamate/dagster_home`), so the run
shows in the web UI. Exits 1 when the spec is broken (with the spec's errors: file, field, reason), when a stage
name is not one of the dataset's, or when any step fails; never runs anything it was not asked to.
"""

from __future__ import annotations

import sys
import warnings
from typing import TYPE_CHECKING

from datamate_assets.cli.project import Project, ensure_dagster_home, find_project, load_datasets

if TYPE_CHECKING:
    from datamate_assets.spec import DatasetSpec


def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="Validate a dataset's spec and materialize its stages")
    parser.add_argument("dataset", help="Dataset name (the `name` of a spec in the datasets folder)")
    parser.add_argument("--stages", nargs="+", metavar="STAGE",
                        help="Only these stages, e.g. collected cleaned (default: every stage of the dataset)")
    parser.set_defaults(func=run)


def dataset_spec(project: Project, name: str) -> tuple[DatasetSpec | None, list[str]]:
    """The valid spec named `name`, or the reasons there is none (its file's mistakes first)."""
    specs, errors = load_datasets(project)
    spec = next((s for s in specs if s.name == name), None)
    if spec is not None:
        return spec, []
    own = [str(error) for error in errors if name in (error.file.stem, error.file.parent.name)]
    if own:
        return None, own
    known = ", ".join(s.name for s in specs) or "none"
    broken = f"; {len(errors)} mistake(s) in other datasets (see `datamate validate`)" if errors else ""
    return None, [f"no dataset '{name}' in project {project.root or project.datasets_dir} (valid datasets: "
                  f"{known}){broken}"]


def run(args) -> int:
    from datamate_assets.cli.validate import run_time_warnings

    project = find_project()
    spec, errors = dataset_spec(project, args.dataset)
    for error in errors:
        print(f"error  {error}", file=sys.stderr)
    if spec is None:
        return 1
    for warning in run_time_warnings(spec):
        print(f"warn   {warning}", file=sys.stderr)
    settings = project.activate()
    ensure_dagster_home(project)

    import dagster as dg

    # why: Dagster's notes on its own beta/preview APIs (components) are for us, not for the user of this command.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)

    from datamate_assets.automation import DATASET_TAG, TRIGGER_TAG
    from datamate_assets.definitions import build_definitions

    repository = build_definitions(settings).get_repository_def()
    stages = {key.path[-1]: key for key in dg.AssetSelection.groups(spec.name).resolve(repository.asset_graph)}
    unknown = sorted(set(args.stages or []) - set(stages))
    if not stages or unknown:
        print(f"error  {spec.spec_path}: dataset '{spec.name}' has no stage {', '.join(unknown) or '(none defined)'}; "
              f"its stages: {', '.join(sorted(stages)) or 'none'}", file=sys.stderr)
        return 1
    keys = [stages[stage] for stage in args.stages] if args.stages else list(stages.values())
    job = repository.get_implicit_job_def_for_assets(keys)
    print(f"Materializing {', '.join(sorted(k.to_user_string() for k in keys))} …", flush=True)
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance, asset_selection=keys, raise_on_error=False,
            tags={DATASET_TAG: spec.name, TRIGGER_TAG: "cli"},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
    failures = [event for event in result.all_events if event.is_step_failure]
    for event in failures:
        print(f"FAILED {event.step_key}: {event.step_failure_data.error.message.strip()}", file=sys.stderr)
    materialized = {event.asset_key for event in result.get_asset_materialization_events()}
    for key in sorted(keys, key=lambda k: k.to_user_string()):
        print(f"  {'ok' if key in materialized else 'not materialized':<16} {key.to_user_string()}")
    if not result.success:
        print(f"Run {result.run_id} failed ({len(failures)} step(s)); see it in the web UI (`make dev`).",
              file=sys.stderr)
        return 1
    print(f"Run {result.run_id} succeeded.")
    return 0
