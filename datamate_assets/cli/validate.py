"""`datamate validate`: check every dataset spec, report each mistake with file, field and reason, and warn about
what would fail at run time (a folder source that does not exist, an unset `url_env`)."""

import os
import sys
from pathlib import Path

from datamate_assets.cli.project import dataset_files, find_project, load_datasets


def register(subparsers) -> None:
    parser = subparsers.add_parser("validate", help="Validate the project's datasets (spec files and defs folder)")
    parser.set_defaults(func=run)


def run_time_warnings(spec) -> list[str]:
    """What the spec's sources need from this machine and do not find (the spec itself is valid)."""
    from datamate_assets.spec import FolderSource, SqlSource

    # Folder sources are relative to the folder holding datasets/, as in collection.
    base = spec.spec_path.resolve().parent.parent if spec.spec_path else Path.cwd()
    warnings = []
    for index, source in enumerate(spec.sources):
        where = f"{spec.spec_path}: sources[{index}]"
        if isinstance(source, FolderSource) and not (base / source.path).is_dir():
            warnings.append(f"{where}.path: folder {base / source.path} does not exist; collection will fail")
        if isinstance(source, SqlSource) and not os.environ.get(source.url_env):
            warnings.append(f"{where}.url_env: environment variable {source.url_env} is not set; collection "
                            "will fail until it holds the SQLAlchemy URL")
    return warnings


def run(args) -> int:
    project = find_project()
    if not dataset_files(project):
        defs = f" nor {project.defs_dir}/*/defs.yaml" if project.defs_dir else ""
        print(f"error: no dataset: no {project.datasets_dir}/*.yaml{defs} (project found by {project.found_by})",
              file=sys.stderr)
        return 1
    specs, errors = load_datasets(project)
    for spec in specs:
        print(f"ok     {spec.spec_path}: dataset '{spec.name}', {len(spec.sources)} source(s)")
        for warning in run_time_warnings(spec):
            print(f"warn   {warning}")
    for error in errors:
        print(f"error  {error}")
    return 1 if errors else 0
