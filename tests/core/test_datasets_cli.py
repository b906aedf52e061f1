"""`datamate datasets` and `datamate export` on a project's local storage: versions listed with their run ids and
rows, any version streamed out, and faults reported as one line naming the table, never a stack trace."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datamate_assets.cli import main
from datamate_resources import tables
from datamate_resources.storage import ObjectStore


@pytest.fixture
def storage(tmp_path, monkeypatch) -> ObjectStore:
    """A project (DATAMATE_HOME and DATAMATE_DATASETS_DIR) whose `demo` dataset has two versions of `cleaned`."""
    (tmp_path / "datasets").mkdir()
    monkeypatch.setenv("DATAMATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DATAMATE_DATASETS_DIR", str(tmp_path / "datasets"))
    monkeypatch.delenv("DATAMATE_STORAGE_URL", raising=False)
    store = ObjectStore(url=f"file://{tmp_path / 'home' / 'storage'}")
    tables.write(store, "demo", "cleaned", pa.table({"doc_id": ["d0", "d1"], "text": ["apt", "dpkg"]}),
                 run_id="aaaaaaaa-first")
    tables.write(store, "demo", "cleaned", pa.table({"doc_id": [f"d{i}" for i in range(5)],
                                                     "text": ["apt", "dpkg", "snap", "flatpak", "nix"]}),
                 run_id="bbbbbbbb-second")
    tables.write(store, "demo", "chunks", pa.table({"chunk_id": ["c0"], "text": ["apt"]}), run_id="cccccccc-chunks")
    return store


def test_datasets_lists_stages_and_versions(storage, capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "demo"
    assert "cleaned" in out and "chunks" in out
    [v1, v0] = [line for line in out.splitlines() if "run aaaaaaaa" in line or "run bbbbbbbb" in line]
    assert v1.split()[0] == "v1" and v1.endswith("5 rows") and "WRITE" in v1
    assert v0.split()[0] == "v0" and v0.endswith("2 rows")

    assert main(["datasets", "--dataset", "demo", "--json", "--versions", "1"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(s["stage"], [v["version"] for v in s["versions"]]) for s in listed] == [("chunks", [0]), ("cleaned", [1])]
    assert listed[1]["versions"][0]["run_id"] == "bbbbbbbb-second" and listed[1]["versions"][0]["rows"] == 5


def test_export_streams_any_version(storage, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", "--dataset", "demo", "--stage", "cleaned", "--version", "0", "--format", "jsonl",
                 str(out / "v0.jsonl")]) == 0
    lines = (out / "v0.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"doc_id": "d0", "text": "apt"}, {"doc_id": "d1", "text": "dpkg"}]

    assert main(["export", "--dataset", "demo", "--stage", "cleaned", "--format", "parquet", "--columns", "text",
                 str(out / "latest.parquet")]) == 0
    assert pq.read_table(out / "latest.parquet").column("text").to_pylist() == ["apt", "dpkg", "snap", "flatpak", "nix"]
    assert "exported 5 rows of demo/cleaned version 1" in capsys.readouterr().err

    assert main(["export", "--dataset", "demo", "--stage", "cleaned", "--format", "jsonl", "--shard-rows", "2",
                 str(out / "shards")]) == 0
    shards = sorted((out / "shards").iterdir())
    assert [p.name for p in shards] == ["part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl"]
    assert [len(p.read_text().splitlines()) for p in shards] == [2, 2, 1]
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no partial file left behind


def test_faults_are_one_line_naming_the_table(storage, tmp_path, capsys):
    def error_of(*argv: str) -> str:
        assert main(list(argv)) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    out = str(tmp_path / "x.jsonl")
    assert "demo/indexed has no table" in error_of("export", "--dataset", "demo", "--stage", "indexed",
                                                   "--format", "jsonl", out)
    assert "has no version 9: its latest is 1" in error_of("export", "--dataset", "demo", "--stage", "cleaned",
                                                           "--version", "9", "--format", "jsonl", out)
    assert "has no column(s) nope" in error_of("export", "--dataset", "demo", "--stage", "cleaned",
                                               "--columns", "nope", "--format", "jsonl", out)
    uri = tables.table_uri(storage, "demo", "chunks")
    (Path(uri) / "_delta_log" / "00000000000000000000.json").write_text("{broken")
    err = error_of("export", "--dataset", "demo", "--stage", "chunks", "--format", "parquet", out)
    assert err.startswith(f"error: Delta table {uri} cannot be opened") and "re-materialize demo/chunks" in err
    assert not Path(out).exists()
    assert f"error: Delta table {uri} cannot be opened" in error_of("datasets")
