"""DatasetComponent: a defs.yaml (with env templates) builds a dataset; a broken one beside a good one spoils
nothing in a running code location but fails whatever targets it; the Python API builds the same thing."""

import textwrap
import uuid
from pathlib import Path

import dagster as dg
import pytest

from datamate_assets import DatasetComponent, dataset_definitions
from datamate_assets.component import secret_references
from datamate_assets.definitions import dataset_specs, defs_folder_datasets, error_text
from datamate_assets.spec import SpecFileError
from datamate_resources import open_storage
from datamate_resources.settings import Settings
from datamate_resources.tables import read_stage

REPO = Path(__file__).resolve().parents[2]
DOCS = {
    "apt.md": "# APT\n\n" + "APT installs and upgrades Debian packages from the configured mirrors. " * 6,
    "net.html": "<html><body><h1>Network</h1><p>" + "Interfaces are configured in /etc/network/interfaces. " * 6
    + "</p></body></html>",
    "short.txt": "too short",
}


def dg_project(root: Path, datasets: dict[str, str], monkeypatch) -> Path:
    """A minimal dg project (as `create-dagster project` lays it out) whose defs/ holds `datasets`."""
    module = f"proj_{uuid.uuid4().hex[:8]}"
    (root / module / "defs").mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "{module}"\nversion = "0"\n\n[tool.dg]\ndirectory_type = "project"\n\n'
        f'[tool.dg.project]\nroot_module = "{module}"\n'
    )
    (root / module / "__init__.py").write_text("")
    (root / module / "defs" / "__init__.py").write_text("")
    for name, text in datasets.items():
        (root / module / "defs" / name).mkdir()
        (root / module / "defs" / name / "defs.yaml").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(root))
    return root


@pytest.fixture
def docs(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    return folder


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DATAMATE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DATAMATE_STORAGE_URL", raising=False)
    monkeypatch.delenv("DATAMATE_MILVUS_URI", raising=False)
    return tmp_path / "home"


GOOD = """\
    type: datamate_assets.DatasetComponent
    attributes:
      description: "docs from {{ env.MYDOCS_DIR }}"
      sources:
        - {type: folder, path: "{{ env.MYDOCS_DIR }}", include: ["*.md", "*.html", "*.txt"]}
      cleaning:
        process:
          - clean_html_mapper: {}
          - text_length_filter: {min_len: 100}
"""
BROKEN = """\
    type: datamate_assets.DatasetComponent
    attributes:
      sources:
        - {type: folder, path: /nowhere}
      index:
        chunk_size: -5
"""


def test_a_defs_yaml_builds_the_dataset_with_env_templates_and_runs(tmp_path, docs, home, monkeypatch):
    monkeypatch.setenv("MYDOCS_DIR", str(docs))
    project = dg_project(tmp_path / "project", {"mydocs": GOOD}, monkeypatch)
    defs = dg.load_from_defs_folder(path_within_project=project)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"mydocs/collected", "mydocs/collection_rejects", "mydocs/cleaned", "mydocs/cleaning_drops"} <= keys
    assert graph.get(dg.AssetKey(["mydocs", "collected"])).group_name == "mydocs"
    job = defs.resolve_job_def("mydocs_pipeline")
    assert job.executor_def.name == "in_process"

    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    storage = open_storage(Settings.from_env())
    cleaned = read_stage(storage, "mydocs", "cleaned")
    expected = sorted((docs / name).as_uri() for name in ("apt.md", "net.html"))
    assert sorted(cleaned.column("source_uri").to_pylist()) == expected


def test_a_broken_dataset_spoils_no_other_and_fails_what_targets_it(tmp_path, docs, home, monkeypatch):
    monkeypatch.setenv("MYDOCS_DIR", str(docs))
    monkeypatch.delenv("DAGSTER_IS_DEFS_VALIDATION_CLI", raising=False)
    project = dg_project(tmp_path / "project", {"mydocs": GOOD, "broken": BROKEN}, monkeypatch)
    defs = dg.Definitions.merge(*defs_folder_datasets(project))
    graph = defs.resolve_asset_graph()
    assert dg.AssetKey(["mydocs", "cleaned"]) in graph.get_all_asset_keys()

    # Selecting the broken dataset selects its stand-in, which fails with the file, line, field and reason.
    selected = dg.AssetSelection.groups("broken").resolve(graph)
    assert selected == {dg.AssetKey(["broken", "definition_error"])}
    result = defs.resolve_job_def("broken_pipeline").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    message = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert "broken/defs.yaml:6" in message and "chunk_size" in message and "greater than 0" in message, message

    # `dg check defs` / `dagster definitions validate` fail on it instead.
    monkeypatch.setenv("DAGSTER_IS_DEFS_VALIDATION_CLI", "1")
    with pytest.raises(Exception, match="chunk_size"):
        defs_folder_datasets(project)


def test_python_api_builds_the_same_dataset(docs, home):
    spec = {"name": "pydocs", "sources": [{"type": "folder", "path": str(docs)}],
            "cleaning": {"process": [{"text_length_filter": {"min_len": 100}}]}}
    component = DatasetComponent(spec)
    assert component.spec.name == "pydocs"
    defs = dg.Definitions.merge(component.build_defs(), dg.Definitions())
    assert {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()} == {
        "pydocs/collected", "pydocs/collection_rejects", "pydocs/cleaned", "pydocs/cleaning_drops"}
    result = dataset_definitions(spec).resolve_job_def("pydocs_pipeline").execute_in_process(
        instance=dg.DagsterInstance.ephemeral())
    assert result.success
    assert read_stage(open_storage(Settings.from_env()), "pydocs", "cleaned").num_rows == 2

    with pytest.raises(SpecFileError, match=r"<python>: cleaning.process\[0\]: operator 'no_such_filter'"):
        DatasetComponent({**spec, "cleaning": {"process": [{"no_such_filter": {}}]}})


def test_secrets_never_go_through_templates(tmp_path, docs, home, monkeypatch):
    assert secret_references({"sources": [{"url": "s3://{{ env.BUCKET }}/x", "q": "{{ env.DB_PASSWORD }}"}]}) == {
        "DB_PASSWORD"}
    text = GOOD.replace("docs from {{ env.MYDOCS_DIR }}", "{{ env.AWS_SECRET_ACCESS_KEY }}")
    monkeypatch.setenv("MYDOCS_DIR", str(docs))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leak-me-not")
    project = dg_project(tmp_path / "project", {"mydocs": text}, monkeypatch)
    with pytest.raises(Exception) as raised:
        dg.load_from_defs_folder(path_within_project=project)
    assert "AWS_SECRET_ACCESS_KEY }} would put a secret into the definitions" in error_text(raised.value)


def test_the_sample_dataset_is_a_component_of_this_project(tmp_path):
    text = (REPO / "datamate_assets" / "defs" / "debian_docs" / "defs.yaml").read_text()
    assert "type: datamate_assets.DatasetComponent" in text
    specs, errors = dataset_specs(Settings.from_env({"DATAMATE_HOME": str(tmp_path),
                                                      "DATAMATE_DATASETS_DIR": ""}))
    assert errors == []
    sample = next(spec for spec in specs if spec.name == "debian_docs")
    assert sample.cleaning.process[0] == {"clean_html_mapper": {}}
    assert Path(sample.sources[0].path) == REPO / "data" / "samples"  # relative to the project root
