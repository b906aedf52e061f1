"""The `datamate` CLI as a user types it: from any directory of a project, outside any project, on a broken spec,
and `datamate run` collecting a small dataset (the command processes themselves, no mocks)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from datamate_resources import open_storage
from datamate_resources.settings import Settings
from datamate_resources.tables import read_stage

DATAMATE = str(Path(sys.executable).parent / "datamate")


def datamate(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """The command in a clean environment: no DATAMATE_* or DAGSTER_HOME unless given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATAMATE_", "DAGSTER_HOME"))}
    return subprocess.run([DATAMATE, *args], cwd=cwd, env={**base, **env}, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture
def project(tmp_path) -> Path:
    """A dg project with one good dataset (two documents), one with a typo, and a subdirectory to work in."""
    root = tmp_path / "project"
    (root / "datasets").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "notes" / "drafts").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "mine"\n\n[tool.dg]\ndirectory_type = "project"\n')
    (root / "docs" / "apt.md").write_text("# APT\n\nInstall packages with `apt install`; upgrade with apt upgrade.")
    (root / "docs" / "ports.html").write_text(
        "<html><head><title>Ports</title></head><body><h1>Ports</h1><p>Set WIDGET_PORT to the port the widget "
        "listens on; the default is 8080 and any free port above 1024 works.</p></body></html>")
    (root / "datasets" / "small.yaml").write_text("name: small\nsources:\n  - {type: folder, path: docs}\n")
    (root / "datasets" / "typo.yaml").write_text(textwrap.dedent("""\
        name: typo
        sources:
          - {type: folder, pth: docs}
        """))
    return root


def test_outside_any_project_commands_say_what_they_looked_for_and_create_nothing(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (["validate"], ["search", "how do I install?", "--dataset", "small"], ["run", "small"]):
        result = datamate(*args, cwd=elsewhere)
        assert result.returncode == 1, result
        assert "no DataMate project found" in result.stderr
        assert "DATAMATE_HOME" in result.stderr and "DATAMATE_DATASETS_DIR" in result.stderr
        assert f"no pyproject.toml with a [tool.dg] table in {elsewhere}" in result.stderr
    assert list(elsewhere.iterdir()) == []  # no .datamate/ made on the way


def test_validate_from_a_subdirectory_reports_errors_and_run_time_warnings(project):
    (project / "datasets" / "later.yaml").write_text(textwrap.dedent("""\
        name: later
        sources:
          - {type: folder, path: not_yet_there}
          - {type: sql, url_env: LATER_DB_URL_FOR_THIS_TEST, query: "SELECT body AS text FROM t"}
        """))
    result = datamate("validate", cwd=project / "notes" / "drafts")
    assert result.returncode == 1, result  # typo.yaml
    out = result.stdout
    assert f"ok     {project / 'datasets' / 'small.yaml'}: dataset 'small'" in out
    assert f"error  {project / 'datasets' / 'typo.yaml'}: sources[0].folder.pth: Extra inputs are not permitted" in out
    assert f"warn   {project / 'datasets' / 'later.yaml'}: sources[0].path: folder {project / 'not_yet_there'} " \
           "does not exist" in out
    assert "sources[1].url_env: environment variable LATER_DB_URL_FOR_THIS_TEST is not set" in out


def test_search_without_a_knowledge_base_says_so_and_creates_nothing(project):
    result = datamate("search", "how do I install?", "--dataset", "small", cwd=project / "notes")
    assert result.returncode == 1
    assert f"no knowledge base at {project / '.datamate' / 'milvus.db'}" in result.stderr
    assert not (project / ".datamate").exists() and not (project / "notes" / ".datamate").exists()


def test_run_a_broken_spec_fails_with_the_spec_error_and_runs_nothing(project):
    result = datamate("run", "typo", cwd=project / "notes")
    assert result.returncode == 1
    assert f"{project / 'datasets' / 'typo.yaml'}: sources[0].folder.pth: Extra inputs are not permitted" \
           in result.stderr
    assert not (project / ".datamate").exists()


def test_run_an_unknown_stage_lists_the_dataset_stages(project):
    result = datamate("run", "small", "--stages", "colected", cwd=project)
    assert result.returncode == 1
    assert "dataset 'small' has no stage colected; its stages: collected, collection_rejects" in result.stderr


def test_run_collects_a_dataset_from_a_subdirectory_into_the_project_state(project):
    result = datamate("run", "small", "--stages", "collected", "collection_rejects", cwd=project / "notes" / "drafts")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "ok               small/collected" in result.stdout
    storage = open_storage(Settings.from_env({"DATAMATE_HOME": str(project / ".datamate")}))
    collected = read_stage(storage, "small", "collected")
    texts = sorted(collected.column("text").to_pylist())
    assert len(texts) == 2
    assert any("Set WIDGET_PORT to the port" in text for text in texts)  # plain text from the HTML, no `\_`
    assert not (project / "notes" / "drafts" / ".datamate").exists()


def test_ops_list_says_no_limit(project):
    result = datamate("ops", "list", "--kind", "filter", cwd=project)
    assert result.returncode == 0
    assert "(default no limit)" in result.stdout
    assert "9223372036854775807" not in result.stdout
