"""`datamate migrate`: turn legacy `datasets/*.yaml` spec files into component folders (`<defs>/<name>/defs.yaml`).

Each spec becomes a `datamate_assets.DatasetComponent` whose `attributes:` are the spec's lines, indented as they
were, so its comments stay where they were. Relative paths are rewritten for the component's place (see
`rebased_paths`) in the text itself when each occurs once. The new file is parsed back and must give the same
spec; when it does not, or a path could not be rewritten in place, the YAML library writes the spec instead and
the comments are lost, which the command says.

Nothing is overwritten: an existing `<defs>/<name>/defs.yaml` stops the whole migration before anything is written.
A migrated spec file is renamed to `<file>.migrated` (the code location would otherwise load the dataset twice).
`--dry-run` prints what would be written and changes nothing.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from datamate_assets.cli.project import ProjectNotFoundError, find_project

COMPONENT_TYPE = "datamate_assets.DatasetComponent"


class MigrationError(ValueError):
    pass


@dataclass(frozen=True)
class Migration:
    spec_file: Path
    name: str
    target: Path  # <defs>/<name>/defs.yaml
    text: str
    comments_kept: bool


def register(subparsers) -> None:
    parser = subparsers.add_parser("migrate", help="Turn datasets/*.yaml spec files into component folders")
    parser.add_argument("--from", dest="source", type=Path,
                        help="folder of spec files (default: the project's datasets/ or $DATAMATE_DATASETS_DIR)")
    parser.add_argument("--to", dest="defs", type=Path, help="the defs folder (default: the dg project's)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be written; change nothing")
    parser.set_defaults(func=run)


def indented_component(spec_text: str, origin: str) -> str:
    """The spec's own lines under `attributes:`, each indented by two spaces (blank lines stay blank, so block
    scalars keep their content). The comment lines at the top of the file stay at the top."""
    lines = spec_text.splitlines()
    head = 0
    while head < len(lines) and (lines[head].startswith("#") or not lines[head].strip()):
        head += 1
    body = lines[head:]
    if body and body[0].rstrip() == "---":  # an explicit document start; a component file has its own structure
        body = body[1:]
    header = [line for line in lines[:head] if line.strip()]
    return "\n".join([
        *header,
        f"# Migrated from {origin} by `datamate migrate`.",
        f"type: {COMPONENT_TYPE}",
        "",
        "attributes:",
        *(f"  {line}" if line.strip() else "" for line in body),
    ]) + "\n"


def dumped_component(raw: dict, origin: str) -> str:
    import yaml

    document = {"type": COMPONENT_TYPE, "attributes": raw}
    return (f"# Migrated from {origin} by `datamate migrate` (its comments could not be kept).\n"
            + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=120))


def _rebase(value, old_base: Path, new_base: Path):
    """A relative path under `old_base`, written relative to `new_base`; anything else as it is."""
    if not isinstance(value, str) or Path(value).is_absolute() or "{{" in value or "://" in value:
        return value
    return Path(os.path.relpath(old_base.resolve() / value, new_base.resolve())).as_posix()


def rebased_paths(raw: dict, spec_file: Path, target: Path, project_root: Path) -> tuple[dict, list[tuple[str, str]]]:
    """The spec with its relative paths rewritten for the component's place, and the (old, new) pairs.

    A spec file's folder sources and `index.checks.questions` are relative to the folder holding datasets/; a
    component's folder sources to the project root and its questions to the folder holding its folder. Its
    `cleaning.config`, `synthesis.self_instruct.seed_file` and template files are relative to the file itself."""
    import copy

    raw = copy.deepcopy(raw)
    changes: list[tuple[str, str]] = []

    def rebase(section: dict, field: str, old_base: Path, new_base: Path, only_txt: bool = False) -> None:
        value = section.get(field)
        if only_txt and not (isinstance(value, str) and value.endswith(".txt") and "\n" not in value):
            return
        new = _rebase(value, old_base, new_base)
        if new != value:
            section[field] = new
            changes.append((value, new))

    for source in raw.get("sources") or []:
        if isinstance(source, dict) and source.get("type") == "folder":
            rebase(source, "path", spec_file.parent.parent, project_root)
    checks = (raw.get("index") or {}).get("checks") if isinstance(raw.get("index"), dict) else None
    if isinstance(checks, dict):
        rebase(checks, "questions", spec_file.parent.parent, target.parent.parent)
    if isinstance(raw.get("cleaning"), dict):
        rebase(raw["cleaning"], "config", spec_file.parent, target.parent)
    synthesis = raw.get("synthesis")
    if isinstance(synthesis, dict):
        if isinstance(synthesis.get("self_instruct"), dict):
            rebase(synthesis["self_instruct"], "seed_file", spec_file.parent, target.parent)
        if isinstance(synthesis.get("templates"), dict):
            for name in list(synthesis["templates"]):
                rebase(synthesis["templates"], name, spec_file.parent, target.parent, only_txt=True)
    return raw, changes


def with_replacements(text: str, changes: list[tuple[str, str]]) -> str | None:
    """The spec text with each old path replaced by the new one, when each occurs once (else None)."""
    for old, new in changes:
        if text.count(old) != 1:
            return None
        text = text.replace(old, new)
    return text


def plan(spec_files: list[Path], defs_dir: Path, project_root: Path) -> list[Migration]:
    """What each spec file becomes; raises MigrationError listing every file that cannot be migrated."""
    import yaml

    from datamate_assets.spec import check_dataset_name

    migrations: list[Migration] = []
    problems: list[str] = []
    names: dict[str, Path] = {}
    for path in spec_files:
        try:
            text = path.read_text(encoding="utf-8")
            raw = yaml.safe_load(text)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            problems.append(f"{path}: cannot be read as YAML: {error}")
            continue
        if not isinstance(raw, dict):
            problems.append(f"{path}: must be a mapping with at least `name` and `sources`")
            continue
        name = raw.get("name", path.stem)
        try:
            check_dataset_name(name if isinstance(name, str) else "")
        except ValueError as error:
            problems.append(f"{path}: name: {name!r} {error}")
            continue
        if name in names:
            problems.append(f"{path}: name: dataset '{name}' is also defined in {names[name]}")
            continue
        names[name] = path
        target = defs_dir / name / "defs.yaml"
        if target.exists():
            problems.append(f"{path}: {target} exists; refusing to overwrite it (move it away, or migrate by hand)")
            continue
        origin = os.path.relpath(path, project_root)
        wanted, changes = rebased_paths(raw, path, target, project_root)
        # The spec's own text, indented under `attributes:`, keeps its comments; it must parse back to the spec.
        edited = with_replacements(text, changes)
        component = indented_component(edited, origin) if edited is not None else None
        kept = component is not None and _attributes(component) == wanted
        if not kept:  # a construct the indentation changes, or a path we could not rewrite in place
            component = dumped_component(wanted, origin)
        if _attributes(component) != wanted:
            problems.append(f"{path}: the component file would not give the same spec; migrate it by hand")
            continue
        migrations.append(Migration(path, name, target, component, kept))
    if problems:
        raise MigrationError("\n".join(problems))
    return migrations


def _attributes(component_text: str):
    import yaml

    try:
        document = yaml.safe_load(component_text)
    except yaml.YAMLError:
        return None
    return document.get("attributes") if isinstance(document, dict) else None


def apply(migrations: list[Migration]) -> None:
    for migration in migrations:
        migration.target.parent.mkdir(parents=True, exist_ok=True)
        with open(migration.target, "x", encoding="utf-8") as out:  # "x": never overwrite, even in a race
            out.write(migration.text)
        migration.spec_file.rename(migration.spec_file.with_name(migration.spec_file.name + ".migrated"))


def run(args) -> int:
    try:
        project = find_project()
    except ProjectNotFoundError as error:
        if not (args.source and args.defs):
            print(f"error: {error} (or give both --from and --to)", file=sys.stderr)
            return 1
        project = None
    source = args.source or project.datasets_dir
    defs_dir = args.defs or (project.defs_dir if project else None)
    if defs_dir is None:
        print("error: no defs folder: $DATAMATE_DATASETS_DIR is set, so give the dg project's defs folder with --to",
              file=sys.stderr)
        return 1
    # Components' folder sources are relative to the dg project root; outside a project, to where we run.
    root = project.root if project and project.root else Path.cwd()
    spec_files = sorted([*source.glob("*.yaml"), *source.glob("*.yml")])
    if not spec_files:
        print(f"nothing to migrate: no {source}/*.yaml")
        return 0
    try:
        migrations = plan(spec_files, defs_dir, root)
    except MigrationError as error:
        print(f"error: nothing migrated:\n{error}", file=sys.stderr)
        return 1
    for migration in migrations:
        if "{{" in migration.spec_file.read_text(encoding="utf-8"):
            print(f"warn   {migration.spec_file}: has '{{{{': in a defs.yaml, `{{{{ … }}}}` is a template filled in "
                  "when the definitions load; check that each one is meant as one")
        note = "" if migration.comments_kept else " (comments not kept)"
        if args.dry_run:
            print(f"would write {migration.target}{note}, and rename {migration.spec_file} to "
                  f"{migration.spec_file.name}.migrated:\n{migration.text}")
        else:
            print(f"{migration.spec_file} -> {migration.target}{note}")
    if not args.dry_run:
        apply(migrations)
        print(f"migrated {len(migrations)} dataset(s); the spec files are renamed *.migrated. "
              "Check with `datamate validate` or `dg check defs`.")
    return 0
