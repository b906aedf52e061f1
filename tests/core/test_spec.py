import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from datamate_assets.spec import SpecFileError, load_spec, load_specs, validate_spec

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_sample_spec_is_valid():
    # The sample dataset is a DatasetComponent; its attributes are a spec like any spec file.
    path = REPO / "datamate_assets" / "defs" / "debian_docs" / "defs.yaml"
    spec = validate_spec(yaml.safe_load(path.read_text())["attributes"], path)
    assert spec.name == "debian_docs"
    assert spec.sources[0].type == "folder"
    assert spec.cleaning.process[0] == {"clean_html_mapper": {}}


def test_name_defaults_to_file_stem(tmp_path):
    spec = load_spec(write(tmp_path / "mydocs.yaml", "sources: [{type: folder, path: x}]\n"))
    assert spec.name == "mydocs"


def test_every_mistake_names_file_and_field(tmp_path):
    path = write(
        tmp_path / "bad.yaml",
        "name: Bad Name\nsources:\n  - {type: folder, path: x, inclde: ['*.md']}\n"
        "cleaning: {executor: spark}\nindex: {chunk_size: -1}\n",
    )
    with pytest.raises(SpecFileError) as raised:
        load_spec(path)
    fields = {e.field for e in raised.value.errors}
    assert {"name", "sources[0].folder.inclde", "cleaning.executor", "index.chunk_size"} <= fields
    assert all(e.file == path for e in raised.value.errors)
    assert "bad.yaml: cleaning.executor: Input should be 'local' or 'ray'" in str(raised.value)


def test_unknown_source_type_and_yaml_errors(tmp_path):
    with pytest.raises(SpecFileError, match=r"sources\[0\]: Input tag 'ftp'"):
        load_spec(write(tmp_path / "a.yaml", "sources: [{type: ftp, url: x}]\n"))
    with pytest.raises(SpecFileError, match="cannot be read as YAML"):
        load_spec(write(tmp_path / "b.yaml", "sources: [\n"))


def test_a_bad_spec_spoils_no_other(tmp_path):
    write(tmp_path / "good.yaml", "sources: [{type: folder, path: x}]\n")
    write(tmp_path / "bad.yaml", "sources: []\n")
    write(tmp_path / "zdup.yaml", "name: good\nsources: [{type: folder, path: y}]\n")
    specs, errors = load_specs(tmp_path)
    assert [s.name for s in specs] == ["good"]
    assert {(e.file.name, e.field) for e in errors} == {("bad.yaml", "sources"), ("zdup.yaml", "name")}


def test_definitions_validate_fails_on_a_bad_spec_and_names_it(tmp_path):
    write(tmp_path / "broken.yaml", "sources: [{type: s3, url: http://not-s3}]\n")
    (tmp_path / "dagster_home").mkdir()
    env = {
        "DATAMATE_DATASETS_DIR": str(tmp_path), "DATAMATE_HOME": str(tmp_path / "home"), "PATH": "",
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-m", "datamate_assets.definitions"],
        capture_output=True, text=True, cwd=REPO, env=env,
    )
    assert result.returncode != 0
    assert "broken.yaml: sources[0].s3.url: Value error, must start with s3://" in result.stdout + result.stderr


def test_recipe_steps_are_built_and_each_mistake_names_its_step(tmp_path):
    path = write(
        tmp_path / "recipe.yaml",
        "sources: [{type: folder, path: x}]\n"
        "cleaning:\n  process:\n    - clean_html_mapper: {}\n    - no_such_mapper: {}\n"
        "    - text_length_filter: {min_lenght: 3}\n    - text_length_filter: {min_len: 3, max_len: 500}\n"
        "synthesis:\n  process:\n    - clean_html_mapper: {}\n    - document_deduplicator: {}\n",
    )
    with pytest.raises(SpecFileError) as raised:
        load_spec(path)
    reasons = {e.field: e.reason for e in raised.value.errors}
    assert set(reasons) == {"cleaning.process[1]", "cleaning.process[2]", "synthesis.process[0]"}
    assert "unknown operator" in reasons["cleaning.process[1]"]
    assert "parameter 'min_lenght': unknown parameter" in reasons["cleaning.process[2]"]
    assert "is a mapper" in reasons["synthesis.process[0]"]
    assert f"{path}: cleaning.process[1]: operator 'no_such_mapper': unknown operator" in str(raised.value)
