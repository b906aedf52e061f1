"""`DatasetComponent`: one dataset as a Dagster Component, from a `defs.yaml` or from Python.

Its attributes are the dataset spec (`datamate_assets.spec.DatasetSpec`, the one schema), and `build_defs` builds
everything the dataset has: the stages' assets and checks, the `<name>_pipeline` job, the schedule and sensors, and
each stage's automation condition and concurrency tag.

    # defs/mydocs/defs.yaml                            # or, in Python:
    type: datamate_assets.DatasetComponent             DatasetComponent({"name": "mydocs", "sources": [...]})
    attributes:                                        dataset_definitions({"name": "mydocs", ...})
      sources: [{type: folder, path: "{{ env.DOCS_DIR }}"}]

`{{ env.X }}` templates fill in endpoints, paths and names when the definitions load. Secrets never go through
them: a template naming a secret-like variable is an error; secrets stay environment variables read at run time
(`url_env` of SQL sources, the resources' `dg.EnvVar`s).
"""

import importlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster.components.resolved.scopes import LoadContextScope
from pydantic import ConfigDict, field_validator

from datamate_assets.spec import (
    DatasetSpec,
    SpecError,
    SpecFileError,
    check_dataset_name,
    recipe_errors,
    validate_spec,
)

# Each stage module exposes build_defs(spec) -> dg.Definitions for one dataset, and is imported only by datasets
# that have its spec section (a dataset that only cleans and indexes never imports the LLM stages).
STAGE_MODULES = {
    "sources": "datamate_assets.collection",
    "cleaning": "datamate_assets.cleaning",
    "index": "datamate_assets.indexing",
    "annotation": "datamate_assets.annotation",
    "synthesis": "datamate_assets.synthesis",
    "evaluation": "datamate_assets.evaluation",
    "mix": "datamate_assets.mix",
    "retention": "datamate_assets.maintenance",
}
TEMPLATE = re.compile(r"{{.*?}}", re.S)
ENV_REFERENCE = re.compile(r"""env(?:\.(\w+)|\(\s*['"](\w+)['"])""")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|API_KEY|ACCESS_KEY|CREDENTIAL|PRIVATE", re.I)


def is_template(value: object) -> bool:
    return isinstance(value, str) and TEMPLATE.search(value) is not None


def _without_null_branches(schema: dict[str, Any]) -> None:
    """An optional section is omitted, never null: without the `null` branch, `dg check yaml` names the exact field
    at fault (`index.chunk_size: -1 is less than the minimum`) instead of "not valid under any of the schemas"."""
    for prop in schema.get("properties", {}).values():
        branches = prop.get("anyOf", [])
        if len(branches) == 2 and {"type": "null"} in branches:
            prop.pop("anyOf")
            prop.update(next(branch for branch in branches if branch != {"type": "null"}))


class DatasetAttributes(DatasetSpec):
    """A `defs.yaml`'s attributes: the dataset spec, whose `name` defaults to the component's folder name.
    String fields may hold `{{ env.X }}` templates; the spec is validated again once they are filled in."""

    model_config = ConfigDict(json_schema_extra=_without_null_branches)

    name: str | None = None

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str | None) -> str | None:
        return name if name is None or is_template(name) else check_dataset_name(name)

    @field_validator("cleaning", "synthesis", mode="before")
    @classmethod
    def _recipe_builds(cls, section: Any, info) -> Any:
        # The operators are built here too, so `dg check defs` reports an unknown operator at its line.
        errors = recipe_errors(Path("defs.yaml"), {info.field_name: section})
        if errors:
            raise ValueError("; ".join(f"{e.field}: {e.reason}" for e in errors))
        return section


class DatasetScaffolder(dg.Scaffolder):
    """`dg scaffold defs datamate_assets.DatasetComponent NAME`: a commented defs.yaml and a small example folder,
    which validate and materialize as they are."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        folder = request.target_path
        docs = folder / "docs"
        docs.mkdir(parents=True, exist_ok=True)
        for name, text in EXAMPLE_DOCUMENTS.items():
            (docs / name).write_text(text, encoding="utf-8")
        root = request.project_root or Path.cwd()
        docs_path = docs.resolve().relative_to(root.resolve()) if docs.resolve().is_relative_to(root.resolve()) \
            else docs.resolve()
        (folder / "defs.yaml").write_text(
            SCAFFOLD_YAML.format(type=request.type_name, name=folder.name, docs=docs_path.as_posix()),
            encoding="utf-8",
        )


@dg.scaffold_with(DatasetScaffolder)
class DatasetComponent(dg.Component):
    """A dataset: its sources are collected, cleaned, annotated, chunked and indexed, and turned into training
    data, as one asset group with its job, schedule and sensors. Attributes: the dataset spec (see the README)."""

    def __init__(self, spec: DatasetSpec | Mapping[str, Any]):
        self.spec = spec if isinstance(spec, DatasetSpec) else validate_spec(dict(spec), Path("<python>"))

    @classmethod
    def get_model_cls(cls) -> type[DatasetAttributes]:
        return DatasetAttributes

    @classmethod
    def load(cls, attributes: DatasetAttributes | None, context: dg.ComponentLoadContext) -> "DatasetComponent":
        yaml_path = context.path / "defs.yaml"
        raw = attributes.model_dump(exclude_unset=True) if attributes else {}
        secrets = sorted(secret_references(raw))
        if secrets:
            raise SpecFileError([SpecError(
                yaml_path, "", f"{{{{ env.{name} }}}} would put a secret into the definitions; secrets stay "
                "environment variables read at run time (e.g. a SQL source's url_env)") for name in secrets])
        scope = context.with_rendering_scope({"context": LoadContextScope(context)})
        raw = scope.resolution_context.resolve_value(raw)
        raw.setdefault("name", context.path.name)
        for source in raw.get("sources") or []:
            # Relative folders are relative to the project root, as spec files' are to the repository root.
            if isinstance(source, dict) and source.get("type") == "folder" and isinstance(source.get("path"), str):
                source["path"] = str(Path(context.project_root, source["path"]).resolve())
        return cls(validate_spec(raw, yaml_path))

    def build_defs(self, context: dg.ComponentLoadContext | None = None) -> dg.Definitions:
        return dataset_definitions(self.spec)


def secret_references(value: Any) -> set[str]:
    """Names of secret-like environment variables that templates in `value` would read."""
    if isinstance(value, str):
        return {name for template in TEMPLATE.findall(value) for match in ENV_REFERENCE.findall(template)
                for name in match if name and SECRET_NAME.search(name)}
    if isinstance(value, Mapping):
        return set().union(*(secret_references(v) for v in value.values()))
    if isinstance(value, list | tuple):
        return set().union(*(secret_references(v) for v in value))
    return set()


def dataset_definitions(spec: DatasetSpec | Mapping[str, Any]) -> dg.Definitions:
    """Everything one dataset defines, with the platform's resources: what `DatasetComponent` builds."""
    from datamate_assets.automation import dataset_automation
    from datamate_resources import shared_resources

    spec = spec if isinstance(spec, DatasetSpec) else DatasetComponent(spec).spec
    stages = dg.Definitions.merge(*(
        importlib.import_module(module).build_defs(spec) for section, module in STAGE_MODULES.items()
        if getattr(spec, section)
    ))
    return dg.Definitions.merge(
        dataset_automation(spec, stages),
        dg.Definitions(jobs=[pipeline_job(spec)], resources=shared_resources()),
    )


def pipeline_job(spec: DatasetSpec):
    """Every stage of one dataset, in lineage order: what `datamate demo` and the UI's launchpad run.
    In one process: a step then costs its own work, not a fresh import of the code location."""
    return dg.define_asset_job(
        f"{spec.name}_pipeline",
        selection=dg.AssetSelection.groups(spec.name),
        description=f"All stages of dataset '{spec.name}'",
        executor_def=dg.in_process_executor,
    )


def broken_dataset_definitions(name: str, message: str) -> dg.Definitions:
    """Stands in for a dataset that does not load: selecting its group, or launching its job, fails with the
    dataset's error instead of matching nothing (which `dagster asset materialize` takes as "everything")."""
    name = re.sub(r"\W", "_", name.lower())

    @dg.asset(key=[name, "definition_error"], group_name=name, description=f"This dataset does not load:\n{message}")
    def definition_error() -> None:
        raise dg.Failure(description=f"dataset '{name}' does not load:\n{message}")

    return dg.Definitions(assets=[definition_error], jobs=[dg.define_asset_job(
        f"{name}_pipeline", selection=dg.AssetSelection.groups(name), executor_def=dg.in_process_executor,
        description=f"Dataset '{name}' does not load: {message}",
    )])


EXAMPLE_DOCUMENTS = {
    "apt-basics.md": "# Installing packages with APT\n\nAPT installs, upgrades and removes Debian packages. "
    "Run `apt update` to refresh the package lists from the mirrors named in /etc/apt/sources.list, then "
    "`apt install nginx` to install a package together with the packages it depends on. `apt upgrade` "
    "installs the newest version of every installed package; `apt full-upgrade` may also remove packages.\n",
    "network.md": "# Configuring the network\n\nOn a Debian server the interfaces are configured in "
    "/etc/network/interfaces. A stanza such as `auto eth0` and `iface eth0 inet dhcp` brings the interface up "
    "at boot and asks a DHCP server for an address. After editing the file, run `ifup eth0` or restart the "
    "networking service so the new configuration takes effect.\n",
    "users.html": "<html><head><title>Managing users</title></head><body><h1>Managing users</h1><p>The adduser "
    "command creates a user account with a home directory under /home and asks for a password. Add the user to "
    "the sudo group with <code>adduser alice sudo</code> to let them run administrative commands; the change "
    "applies at their next login.</p></body></html>\n",
}

SCAFFOLD_YAML = """\
# A DataMate dataset: every document under `sources` is collected, cleaned and indexed into a searchable
# knowledge base, as the asset group `{name}` ({name}/collected, {name}/cleaned, {name}/chunks, {name}/indexed)
# with the job `{name}_pipeline`. Check it with `dg check defs`, run it with
#   dg launch --assets 'group:{name}'      (or: dagster asset materialize -m <your definitions> --select 'group:{name}')
# Every field is described in the README of the `datamate` package; `{{{{ env.X }}}}` reads an environment variable
# when the definitions load (never for secrets: those stay environment variables read at run time).
type: {type}

attributes:
  name: {name}                    # the asset group and the first part of every asset key
  sources:
    # A folder, relative to the project root (or absolute); also: s3 (url: s3://bucket/prefix/), web (urls: [...]),
    # sql (url_env: VARIABLE_HOLDING_THE_URL, query: SELECT ...).
    - type: folder
      path: {docs}
      include: ["**/*.md", "**/*.html", "**/*.txt", "**/*.pdf", "**/*.docx"]
  cleaning:
    process:                      # a Data-Juicer `process:` list; `datamate ops list` shows every operator
      - clean_html_mapper: {{}}
      - whitespace_normalization_mapper: {{}}
      - text_length_filter: {{min_len: 100}}
      - document_deduplicator: {{lowercase: true}}
  index:                          # chunks embedded with the packaged MiniLM model into Milvus (Lite by default)
    chunk_size: 800
    chunk_overlap: 100
  # annotation: {{labels: [installation, networking]}}     # language, quality and topic labels
  # synthesis: {{kinds: [qa], max_records: 6}}               # QA / instruction pairs from the chunks (an LLM)
  # evaluation: {{max_judged: 6}}                            # an LLM judges the synthesized pairs
  # automation: {{schedule: "0 3 * * *", inbox_sensor: true}}  # re-collect nightly and when files change
"""
