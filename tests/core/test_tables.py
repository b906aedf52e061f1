"""Delta tables (`datamate_resources.tables`) on a local directory and on an S3 endpoint (moto): time travel,
writers racing for one table (threads and processes), corrupt and missing tables, retention and the maintenance
job."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from datamate_assets import maintenance
from datamate_assets.component import dataset_definitions
from datamate_assets.spec import DatasetSpec
from datamate_resources import build_resources, tables
from datamate_resources.settings import Settings
from datamate_resources.storage import ObjectStore

REPO = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("table_writer.py")
TIMEOUT = 300  # a process importing the package takes ~40 s on the 2 busy cores


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> ObjectStore:
    if request.param == "local":
        return ObjectStore(url=f"file://{tmp_path / 'storage'}")
    endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_bucket")
    return ObjectStore(url=f"s3://{bucket}/root", endpoint_url=endpoint)


def docs(*texts: str) -> pa.Table:
    return pa.table({"doc_id": [f"d{i}" for i in range(len(texts))], "text": list(texts)})


def test_time_travel_reads_every_version(storage):
    first = tables.write(storage, "demo", "cleaned", docs("apt", "dpkg"), run_id="run-a")
    changed = tables.write(storage, "demo", "cleaned", docs("apt", "dpkg", "snap"), run_id="run-b")
    assert (first.version, changed.version) == (0, 1)
    assert tables.read_stage(storage, "demo", "cleaned", version=0).equals(docs("apt", "dpkg"))
    assert tables.read_stage(storage, "demo", "cleaned").equals(docs("apt", "dpkg", "snap"))
    assert first.read().equals(docs("apt", "dpkg"))  # a ref stays pinned to its version
    listed = tables.versions(tables.current(storage, "demo", "cleaned"))
    assert [(v["version"], v["run_id"], v["rows"], v["operation"]) for v in listed] == [
        (1, "run-b", 3, "WRITE"), (0, "run-a", 2, "WRITE")]
    assert tables.datasets(storage) == ["demo"] and tables.stages(storage, "demo") == ["cleaned"]


def test_open_table_uses_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAMATE_HOME", str(tmp_path))
    monkeypatch.delenv("DATAMATE_STORAGE_URL", raising=False)
    storage = ObjectStore(url=f"file://{tmp_path / 'storage'}")
    tables.write(storage, "debian_docs", "cleaned", docs("apt"))
    tables.write(storage, "debian_docs", "cleaned", docs("apt", "dpkg"))
    dataset = tables.open_table("debian_docs", "cleaned", version=0)
    assert dataset.to_table().column("text").to_pylist() == ["apt"]
    assert tables.open_table("debian_docs", "cleaned").count_rows() == 2
    with pytest.raises(LookupError, match="debian_docs/chunks has no table yet"):
        tables.open_table("debian_docs", "chunks")


def racing_batches(label: str, barrier: threading.Barrier):
    yield pa.record_batch({"writer": [label] * 100})
    barrier.wait(timeout=TIMEOUT)  # both writers hold their snapshot of the table before either commits
    yield pa.record_batch({"writer": [label] * 100})


@pytest.mark.parametrize("existing", [False, True], ids=["creating", "replacing"])
def test_two_threads_racing_for_a_table(storage, existing):
    if existing:
        tables.write(storage, "demo", "chunks", pa.table({"writer": ["seed"]}))
    barrier, outcome = threading.Barrier(2), {}
    schema = pa.schema([("writer", pa.string())])

    def write(label: str) -> None:
        try:
            outcome[label] = tables.write(storage, "demo", "chunks", racing_batches(label, barrier), schema=schema)
        except tables.TableError as error:
            outcome[label] = error

    threads = [threading.Thread(target=write, args=(label,)) for label in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    check_one_winner(storage, outcome, expected_version=1 if existing else 0)


def check_one_winner(storage: ObjectStore, outcome: dict, expected_version: int) -> None:
    winners = [label for label, result in outcome.items() if isinstance(result, tables.TableRef)]
    losers = [label for label, result in outcome.items() if not isinstance(result, tables.TableRef)]
    assert len(winners) == len(losers) == 1, outcome
    uri = tables.table_uri(storage, "demo", "chunks")
    message = str(outcome[losers[0]])
    assert uri in message and "Re-run" in message, message
    ref = tables.current(storage, "demo", "chunks")
    assert ref.version == expected_version == outcome[winners[0]].version
    # Exactly the winner's rows: the loser's are neither appended nor mixed in, the winner's all there.
    assert set(ref.read(["writer"]).column("writer").to_pylist()) == {winners[0]}
    assert ref.num_rows == 200


@pytest.mark.parametrize("existing", [False, True], ids=["creating", "replacing"])
def test_two_processes_racing_for_a_table(storage, tmp_path, existing):
    if existing:
        tables.write(storage, "demo", "chunks", pa.table({"writer": ["seed"], "n": [0]}))
    go = tmp_path / "go"
    processes = {}
    for label in ("a", "b"):
        args = [sys.executable, str(WRITER), storage.url, "demo", "chunks", label, "--batches", "2",
                "--ready", str(tmp_path / f"ready-{label}"), "--go", str(go)]
        if storage.endpoint_url:
            args += ["--endpoint", storage.endpoint_url]
        processes[label] = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True, env=python_path_env())
    try:
        deadline = time.monotonic() + TIMEOUT
        while not all((tmp_path / f"ready-{label}").exists() for label in processes):
            assert all(p.poll() is None for p in processes.values()), {k: p.communicate() for k, p in
                                                                        processes.items()}
            assert time.monotonic() < deadline, "the writers did not start"
            time.sleep(0.05)
        go.touch()  # both are mid-write, with the same snapshot: now let them commit
        results = {label: p.communicate(timeout=TIMEOUT) for label, p in processes.items()}
    finally:
        for process in processes.values():
            process.kill()
            process.wait()
    outcome = {}
    for label, (out, err) in results.items():
        assert out.strip(), err[-2000:]
        line = json.loads(out.strip().splitlines()[-1])
        outcome[label] = (tables.TableRef("", line["version"]) if "version" in line
                          else tables.TableError(line["error"]))
    check_one_winner(storage, outcome, expected_version=1 if existing else 0)


def python_path_env() -> dict:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_missing_and_corrupt_tables_name_the_table_and_what_to_do(tmp_path):
    storage = ObjectStore(url=f"file://{tmp_path}")
    assert tables.current(storage, "demo", "cleaned") is None
    assert tables.read_stage(storage, "demo", "cleaned") is None
    tables.write(storage, "demo", "cleaned", docs("apt"))
    tables.write(storage, "demo", "cleaned", docs("dpkg"))
    uri = tables.table_uri(storage, "demo", "cleaned")
    with pytest.raises(tables.TableError, match=r"has no version 7: its latest is 1"):
        tables.current(storage, "demo", "cleaned", version=7)

    # A data file deleted by hand: the log still opens, reading says which table and version and what to do.
    ref = tables.current(storage, "demo", "cleaned")
    [data_file] = ref.delta().file_uris()
    Path(data_file.removeprefix("file://")).unlink()
    for read in (ref.read, ref.head, lambda: list(ref.batches())):
        with pytest.raises(tables.TableError) as failure:
            read()
        assert str(failure.value).startswith(f"Delta table {uri} version 1 cannot be read")
        assert "re-materialize" in str(failure.value)
    assert tables.read_stage(storage, "demo", "cleaned", version=0).equals(docs("apt"))

    # A corrupt log: the table's URI, the cause on one line (no Rust backtrace) and the way out.
    (Path(uri) / "_delta_log" / "00000000000000000001.json").write_text("{not json")
    with pytest.raises(tables.TableError) as failure:
        tables.current(storage, "demo", "cleaned")
    message = str(failure.value)
    assert message.startswith(f"Delta table {uri} cannot be opened") and "\n" not in message, message
    assert "delete it and re-materialize demo/cleaned" in message


def test_retention_keeps_the_last_versions_and_the_protected_ones(storage):
    for n in range(4):
        tables.write(storage, "demo", "cleaned", docs(*[f"text {n}"] * (n + 1)), run_id=f"run-{n}")
    done = tables.housekeep(storage, "demo", "cleaned", keep_versions=2, keep_days=None, compact=False,
                            min_file_age_hours=0, protect=[0])
    assert done["kept_versions"] == [0, 2, 3]
    assert done["files_removed"] == 1 and done["bytes_removed"] > 0  # version 1's file
    for version in (0, 2, 3):
        assert tables.read_stage(storage, "demo", "cleaned", version=version).num_rows == version + 1
    with pytest.raises(tables.TableError, match="version 1 cannot be read"):
        tables.read_stage(storage, "demo", "cleaned", version=1)
    # The vacuum's own commits change no data and do not count as versions to keep.
    again = tables.housekeep(storage, "demo", "cleaned", keep_versions=2, keep_days=None, compact=False,
                             min_file_age_hours=0)
    assert again["files_removed"] == 1 and again["kept_versions"] == [2, 5]  # 5: version 3's rows, vacuumed
    assert tables.read_stage(storage, "demo", "cleaned").num_rows == 4
    assert tables.read_stage(storage, "demo", "cleaned", version=3).num_rows == 4


def test_recent_versions_and_young_files_are_kept(tmp_path):
    storage = ObjectStore(url=f"file://{tmp_path}")
    for n in range(3):
        tables.write(storage, "demo", "cleaned", docs(f"text {n}"))
    done = tables.housekeep(storage, "demo", "cleaned", keep_versions=None, keep_days=1, compact=False,
                            min_file_age_hours=0)
    assert done["files_removed"] == 0 and done["kept_versions"] == [0, 1, 2]
    done = tables.housekeep(storage, "demo", "cleaned", keep_versions=1, keep_days=None, compact=False,
                            min_file_age_hours=1)
    assert done["files_removed"] == 0  # the old versions' files are minutes old: a write may still own such files
    assert tables.read_stage(storage, "demo", "cleaned", version=0).num_rows == 1


def test_compaction_merges_small_files_and_keeps_the_rows(tmp_path):
    storage = ObjectStore(url=f"file://{tmp_path}")
    tables.write(storage, "demo", "collected", pa.table({"doc_id": ["d0"], "text": ["a"], "deleted": [False]}))
    for n in range(1, 4):
        tables.merge(storage, "demo", "collected", pa.table({"doc_id": [f"d{n}"], "text": ["b"], "deleted": [False]}),
                     keys=["doc_id"], deleted_column="deleted")
    before = tables.current(storage, "demo", "collected")
    assert before.num_files == 4
    done = tables.housekeep(storage, "demo", "collected", keep_versions=1, keep_days=None, compact=True,
                            min_file_age_hours=0)
    after = tables.current(storage, "demo", "collected")
    assert done["files_compacted"] == 4 and after.num_files == 1
    assert done["files_removed"] == 4  # the small files, no longer in any kept version
    assert sorted(after.read(["doc_id"]).column("doc_id").to_pylist()) == ["d0", "d1", "d2", "d3"]


def test_maintenance_job_keeps_what_dagster_recorded_and_reports_what_it_removed(tmp_path):
    settings = Settings.from_env({"DATAMATE_HOME": str(tmp_path)})
    resources = build_resources(settings)
    storage = resources["storage"]
    instance = dg.DagsterInstance.ephemeral()
    for n in range(2):  # versions 0 and 1 by Dagster: the materialization records version 1
        @dg.asset(key=["demo", "cleaned"])
        def cleaned() -> pa.Table:
            return docs(*[f"text {n}"] * (n + 1))  # noqa: B023

        assert dg.materialize([cleaned], resources=resources, instance=instance).success
    for n in (2, 3):  # versions 2 and 3 written outside Dagster
        tables.write(storage, "demo", "cleaned", docs(*[f"text {n}"] * (n + 1)))
    spec = DatasetSpec.model_validate({
        "name": "demo", "sources": [{"type": "folder", "path": "x"}],
        "retention": {"keep_versions": 1, "compact": False, "min_file_age_hours": 0}})
    # The dataset's definitions (every stage module) hold the job and its schedule.
    dataset = dataset_definitions(spec).get_repository_def()
    assert dataset.has_job("demo_maintenance")
    assert [s.cron_schedule for s in dataset.schedule_defs if s.name == "demo_maintenance_schedule"] == ["0 3 * * *"]
    defs = dg.Definitions.merge(maintenance.build_defs(spec), dg.Definitions(resources=resources))
    result = defs.get_job_def("demo_maintenance").execute_in_process(instance=instance)
    assert result.success
    [observation] = [e.asset_observation_data.asset_observation for e in result.all_events
                     if e.event_type == dg.DagsterEventType.ASSET_OBSERVATION]
    assert observation.asset_key == dg.AssetKey(["demo", "cleaned"])
    assert observation.metadata["files_removed"].value == 2  # versions 0 and 2
    assert observation.metadata["kept_versions"].value == [1, 3]
    [output] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
    totals = {name: value.value for name, value in output.event_specific_data.metadata.items()}
    assert totals == {"tables": 1, "files_compacted": 0, "files_removed": 2,
                      "bytes_removed": observation.metadata["bytes_removed"].value}
    # Downstream steps read the recorded version: it is still readable.
    assert tables.read_stage(storage, "demo", "cleaned", version=1).num_rows == 2
    assert tables.read_stage(storage, "demo", "cleaned").num_rows == 4
