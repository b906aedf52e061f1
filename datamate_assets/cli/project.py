"""`datamate project`: show which project the commands use (its datasets, its state) and why.

Every command finds the project the same way, from any directory (`find_project`):
DATAMATE_HOME (state: storage, Milvus Lite, Dagster instance) and DATAMATE_DATASETS_DIR (spec files) when set,
else the dg project around the current directory: the nearest pyproject.toml with a [tool.dg] table, walking up
from the current directory, whose `.datamate/`, `datasets/*.yaml` and `<root_module>/defs/*/defs.yaml` datasets
are used (as the code location does: the defs folder unless DATAMATE_DATASETS_DIR is set). With neither, the
command says so, naming what it looked for. `load_datasets` reads the datasets without importing Dagster.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datamate_assets.spec import DatasetSpec, SpecError

HOME_ENV = "DATAMATE_HOME"
DATASETS_ENV = "DATAMATE_DATASETS_DIR"


class ProjectError(Exception):
    """The project cannot be used as it is; `datamate` prints the message and exits 1."""


class ProjectNotFoundError(ProjectError, LookupError):
    pass


class ProjectSettingsError(ProjectError, ValueError):
    """A DATAMATE_* variable of the wrong form."""


@dataclass(frozen=True)
class Project:
    root: Path | None  # the dg project directory, None when both variables are set
    home: Path
    datasets_dir: Path
    defs_dir: Path | None  # the dg project's defs folder, whose `<name>/defs.yaml` are datasets too
    found_by: str  # how: which variables, or which pyproject.toml

    def activate(self):
        """Work as if started in the project's root: the code location and resources read the same locations
        whatever the current directory. Returns the resources' settings (raises ValueError naming a DATAMATE_*
        variable of the wrong form)."""
        from datamate_resources.settings import Settings

        os.environ[HOME_ENV] = str(self.home)
        if self.defs_dir is None:  # DATAMATE_DATASETS_DIR was set, maybe relative to the directory we leave
            os.environ[DATASETS_ENV] = str(self.datasets_dir)
        if self.root is not None:
            os.chdir(self.root)
        try:
            return Settings.from_env()
        except ValueError as error:
            raise ProjectSettingsError(str(error)) from error


def dg_table(directory: Path) -> dict | None:
    """The [tool.dg] table of the directory's pyproject.toml, if it has one."""
    pyproject = directory / "pyproject.toml"
    if not pyproject.is_file():
        return None
    try:
        return tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {}).get("dg")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None


def find_project(cwd: Path | None = None, environ: dict[str, str] | None = None) -> Project:
    env = os.environ if environ is None else environ
    cwd = (cwd or Path.cwd()).resolve()
    home, datasets = env.get(HOME_ENV), env.get(DATASETS_ENV)
    if home and datasets:
        return Project(None, Path(home).resolve(), Path(datasets).resolve(), None, f"${HOME_ENV} and ${DATASETS_ENV}")
    root = next((d for d in (cwd, *cwd.parents) if dg_table(d) is not None), None)
    if root is None:
        unset = [f"${name}" for name, value in ((HOME_ENV, home), (DATASETS_ENV, datasets)) if not value]
        raise ProjectNotFoundError(
            f"no DataMate project found: {' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set, and "
            f"no pyproject.toml with a [tool.dg] table in {cwd} or any directory above it. Run the command inside "
            f"the project, or set {HOME_ENV} (state) and {DATASETS_ENV} (dataset specs)."
        )
    overrides = "".join(f" and ${name}" for name, value in ((HOME_ENV, home), (DATASETS_ENV, datasets)) if value)
    dg_project = dg_table(root).get("project", {})
    defs_module = dg_project.get("defs_module") or f"{dg_project.get('root_module', root.name)}.defs"
    return Project(
        root,
        Path(home).resolve() if home else root / ".datamate",
        Path(datasets).resolve() if datasets else root / "datasets",
        None if datasets else root.joinpath(*defs_module.split(".")),
        f"{root / 'pyproject.toml'}{overrides}",
    )


def dataset_files(project: Project) -> list[Path]:
    """Spec files (`datasets/*.yaml`) and the defs folder's `<name>/defs.yaml`, the places the code location reads."""
    files = sorted([*project.datasets_dir.glob("*.yaml"), *project.datasets_dir.glob("*.yml")])
    if project.defs_dir is not None:
        files += sorted(project.defs_dir.glob("*/defs.yaml"))
    return files


def load_datasets(project: Project) -> tuple[list[DatasetSpec], list[SpecError]]:
    """Every dataset of the project, and the mistakes of those that do not load (one spoils no other)."""
    from datamate_assets.spec import SpecFileError, keep_unique, load_spec

    specs: list[DatasetSpec] = []
    errors: list[SpecError] = []
    seen: dict[str, Path] = {}
    for path in dataset_files(project):
        try:
            loaded = [load_spec(path)] if path.name != "defs.yaml" else load_component_specs(path, project.root)
        except SpecFileError as error:
            errors.extend(error.errors)
            continue
        for spec in loaded:
            keep_unique(spec, path, specs, seen, errors)
    return specs, errors


ENV_TEMPLATE = re.compile(r"""{{\s*env(?:\.(\w+)|\(\s*['"](\w+)['"]\s*\))\s*}}""")


def load_component_specs(path: Path, root: Path | None) -> list[DatasetSpec]:
    """The dataset specs of a `defs.yaml`'s DatasetComponents, read as `DatasetComponent.load` reads them:
    the name defaults to the folder's, `{{ env.X }}` templates are filled in, folders are relative to the project."""
    import yaml

    from datamate_assets.spec import SpecError, SpecFileError, validate_spec

    try:
        documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise SpecFileError([SpecError(path, "", f"cannot be read as YAML: {error}")]) from error
    specs = []
    for document in documents:
        if not (isinstance(document, dict) and str(document.get("type", "")).endswith("DatasetComponent")):
            continue
        raw, unset = fill_env_templates(document.get("attributes") or {})
        if unset:
            raise SpecFileError([SpecError(path, "attributes", f"{{{{ env.{name} }}}}: environment variable {name} is "
                                                               "not set") for name in sorted(unset)])
        raw.setdefault("name", path.parent.name)
        for source in raw.get("sources") or []:
            if isinstance(source, dict) and source.get("type") == "folder" and isinstance(source.get("path"), str):
                source["path"] = str(Path(root or path.parent, source["path"]).resolve())
        specs.append(validate_spec(raw, path))
    return specs


def fill_env_templates(value: Any, unset: set[str] | None = None) -> tuple[Any, set[str]]:
    unset = set() if unset is None else unset
    if isinstance(value, str):
        def fill(match: re.Match) -> str:
            name = match.group(1) or match.group(2)
            if name not in os.environ:
                unset.add(name)
            return os.environ.get(name, "")
        return ENV_TEMPLATE.sub(fill, value), unset
    if isinstance(value, dict):
        return {k: fill_env_templates(v, unset)[0] for k, v in value.items()}, unset
    if isinstance(value, list):
        return [fill_env_templates(v, unset)[0] for v in value], unset
    return value, unset


def ensure_dagster_home(project: Project) -> Path:
    """$DAGSTER_HOME, or the project's `.datamate/dagster_home` whose dagster.yaml is the project's embedded default
    (so runs made by the CLI show in `make dev`)."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    home = project.home / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    shipped = project.root / "deploy" / "local" / "dagster.yaml" if project.root else None
    if not config.exists() and shipped and shipped.is_file():
        config.symlink_to(shipped)
    elif not config.exists():  # else Dagster warns on every command that it found none
        config.write_text("# Dagster's default local instance (SQLite in this folder), made by `datamate`;\n"
                          "# telemetry off as in the project's deploy/local/dagster.yaml (and no banner per run).\n"
                          "telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def published_table(settings, dataset: str, stage: str, version: int | None = None):
    """The TableRef of a stage's Delta table (the given version, else the latest); a ProjectError says what to do
    when there is none."""
    from datamate_resources import open_storage, tables

    storage = open_storage(settings)
    try:
        ref = tables.current(storage, dataset, stage, version)
    except tables.TableError as error:
        raise ProjectError(str(error)) from error
    if ref is None:
        raise ProjectError(f"{dataset}/{stage} has no table in {storage.url}: materialize it first "
                           "(`datamate datasets` lists what exists)")
    return ref


def register(subparsers) -> None:
    parser = subparsers.add_parser("project", help="Show which project, dataset specs and state the commands use")
    parser.set_defaults(func=run)


def run(args) -> int:
    project = find_project()
    print(f"project       {project.root or '(none: both variables set)'}  (found by {project.found_by})")
    print(f"state         {project.home}")
    print(f"spec files    {project.datasets_dir}/*.yaml")
    if project.defs_dir is not None:
        print(f"defs folder   {project.defs_dir}/*/defs.yaml")
    print(f"datasets      {', '.join(str(path) for path in dataset_files(project)) or 'none'}")
    print(f"dagster home  {os.environ.get('DAGSTER_HOME') or project.home / 'dagster_home'}")
    return 0
