"""The run worker is SIGKILLed in the middle of a stage and the instance's run retries bring the run to completion,
with `deploy/local/dagster.yaml` (QueuedRunCoordinator, `run_retries: max_retries 2`, run monitoring) and
the real `dagster-daemon`. The run is launched as the UI launches it (queued, dequeued by the daemon, started by
the code server in a run worker process); the code server sees its run worker die and marks the run failed; the
daemon's run retries launch a retry from failure; the outputs then equal a clean run's record for record, and
Milvus holds every chunk once.

`indexed` is stopped at a known point by a gated embeddings server (`gated_embeddings.py`): the run is killed
while its second batch of chunks waits for an embedding, after the first batch was sent to Milvus. The code
location is `fault_location.py` (the real stage assets and resources, without the dbt reports and automation
sensors, steps in the run worker's process).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psutil
import pytest
import yaml

from datamate_assets.spec import load_spec
from datamate_resources import build_resources, open_storage
from datamate_resources.settings import Settings
from tests.conftest import BIN, REPO
from tests.reliability.faults import TOPICS, milvus_rows, output_digests, run_failures, stage_assets
from tests.reliability.gated_embeddings import read_journal
from tests.servers import background_process, free_port, server_process, stop_process_group

TIMEOUT = 300  # per wait; bounded, generous because the 2 cores are shared
KILLED = "killed"  # the dataset of the run-kill test
KILLED_STAGES = ["collected", "collection_rejects", "cleaned", "cleaning_drops", "chunks"]
# KnowledgeBase.sync embeds 256 chunks per batch, sent as requests of 64 texts (EmbeddingsResource.batch_size),
# after one request probing the dimension: 1 + 4 requests embed the first batch, whose upsert is then under way
# while the request after them is held.
REQUESTS_BEFORE_GATE = 5


@dataclass
class GatedEmbeddings:
    base_url: str
    gate: Path
    journal: Path

    def arm(self, requests_to_pass: int) -> None:
        self.gate.write_text(str(requests_to_pass))

    def release(self) -> None:
        self.gate.unlink(missing_ok=True)

    def held(self) -> bool:
        return any(entry["fate"] == "held" for entry in read_journal(self.journal))


@pytest.fixture
def gated_embeddings(tmp_path) -> GatedEmbeddings:
    port = free_port()
    server = GatedEmbeddings(f"http://127.0.0.1:{port}/v1", tmp_path / "gate", tmp_path / "embeddings.jsonl")
    args = [sys.executable, "-m", "tests.reliability.gated_embeddings", "--port", str(port), "--gate",
            str(server.gate), "--journal", str(server.journal)]
    try:
        with server_process(args, port, tmp_path / "embeddings.log", timeout=120, cwd=REPO):
            yield server
    finally:
        server.release()  # a request still held would keep a server thread waiting


@dataclass
class KilledRunCase:
    """The dataset, the environment of the run to kill (set in os.environ) and what a clean run produced."""

    home: Path  # DATAMATE_HOME of the run to kill: storage and Milvus Lite
    settings: Settings
    expected: dict  # stage -> (rows, digest) of the clean run
    expected_vectors: list  # (chunk_id, doc_id, text) in the clean run's collection
    chunks: int

    def outputs(self) -> dict:
        return output_digests(open_storage(self.settings), KILLED, KILLED_STAGES)

    def vectors(self) -> list:
        return milvus_rows(self.home / "milvus.db", KILLED)


@pytest.fixture
def killed_run_case(tmp_path, monkeypatch, gated_embeddings) -> KilledRunCase:
    folder, datasets = tmp_path / "docs", tmp_path / "datasets"
    folder.mkdir()
    datasets.mkdir()
    topics = list(TOPICS.values())
    for n in range(36):  # ~9 chunks each: more than one embedding batch of 256
        (folder / f"doc{n:02d}.txt").write_text(f"Document {n}. " + " ".join(topics[(n + i) % 4] for i in range(4)))
    (folder / "empty.txt").write_text("")  # a collection reject
    (datasets / f"{KILLED}.yaml").write_text(yaml.safe_dump({
        "name": KILLED,
        "sources": [{"type": "folder", "path": str(folder)}],
        "cleaning": {"process": [{"whitespace_normalization_mapper": {}}, {"document_deduplicator": {}}]},
        "index": {"chunk_size": 100, "chunk_overlap": 0},
    }))
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    # the shipped instance config, run retries on
    shutil.copy(REPO / "deploy" / "local" / "dagster.yaml", dagster_home / "dagster.yaml")
    environment = {
        "DAGSTER_HOME": str(dagster_home), "DATAMATE_DATASETS_DIR": str(datasets),
        "DATAMATE_EMBEDDINGS_BASE_URL": gated_embeddings.base_url, "DATAMATE_EMBEDDINGS_MODEL": "minilm",
        "PYTHONPATH": str(REPO),
    }
    for name, value in {**environment, "DATAMATE_HOME": str(tmp_path / "home")}.items():
        monkeypatch.setenv(name, value)

    # The clean run, in this process, gate open, in a DATAMATE_HOME of its own.
    clean_home = tmp_path / "clean"
    clean_settings = Settings.from_env({**environment, "DATAMATE_HOME": str(clean_home)})
    spec = load_spec(datasets / f"{KILLED}.yaml")
    clean = dg.materialize(stage_assets(spec), resources=build_resources(clean_settings),
                           instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert clean.success, run_failures(clean)
    expected = output_digests(open_storage(clean_settings), KILLED, KILLED_STAGES)
    vectors = milvus_rows(clean_home / "milvus.db", KILLED)
    chunks = expected["chunks"][0]
    assert len(vectors) == chunks > 256  # the indexing of the run to kill needs two batches
    gated_embeddings.journal.unlink(missing_ok=True)
    gated_embeddings.arm(REQUESTS_BEFORE_GATE)
    return KilledRunCase(tmp_path / "home", Settings.from_env(), expected, vectors, chunks)


def tail(path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def run_steps(instance: dg.DagsterInstance, run_id: str, event_type: dg.DagsterEventType) -> set[str]:
    return {e.step_key for e in instance.all_logs(run_id, of_type=event_type)}


def describe(instance: dg.DagsterInstance) -> str:
    return "\n".join(f"{r.run_id[:8]} {r.status.value} parent={r.parent_run_id and r.parent_run_id[:8]} "
                     f"tags={ {k: v for k, v in r.tags.items() if 'retry' in k} }" for r in instance.get_runs())


@pytest.mark.timeout(4 * TIMEOUT)
def test_run_worker_killed_mid_stage_is_retried_by_the_daemon(tmp_path, killed_run_case, gated_embeddings):
    case = killed_run_case
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(json.dumps({"load_from": [{"python_module": {
        "module_name": "tests.reliability.fault_location", "location_name": "faults",
        "working_directory": str(REPO)}}]}))
    with dg.DagsterInstance.get() as instance:  # create the SQLite storages now: the daemon and the launch
        instance.get_runs()  # creating them at once race ("table alembic_version already exists")
        instance.all_instigator_state()
    daemon_log = tmp_path / "daemon.log"
    run_id = str(uuid.uuid4())
    daemon_args = [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)]
    with background_process(daemon_args, daemon_log, cwd=tmp_path) as daemon:
        # Queued like a launch from the UI; the daemon dequeues it and the code server starts the run worker.
        launch = subprocess.Popen(
            [str(BIN / "dagster"), "job", "launch", "-w", str(workspace), "-j", f"{KILLED}_pipeline",
             "--run-id", run_id], cwd=tmp_path, env=os.environ.copy(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output = launch.communicate(timeout=TIMEOUT)[0]
        finally:
            stop_process_group(launch)  # with the code server it started to load the workspace
        assert launch.returncode == 0, output[-3000:]

        with dg.DagsterInstance.get() as instance:
            deadline = time.monotonic() + TIMEOUT
            while not gated_embeddings.held():
                assert daemon.poll() is None, f"the daemon exited\n{tail(daemon_log)}"
                run = instance.get_run_by_id(run_id)
                assert run.status not in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS), \
                    f"{run.status} before `indexed` was reached\n{describe(instance)}\n{tail(daemon_log)}"
                assert time.monotonic() < deadline, f"`indexed` not reached\n{describe(instance)}\n{tail(daemon_log)}"
                time.sleep(0.5)
            # The run worker, found by the pid the run logged; a descendant of our daemon, killed alone.
            started = [e.message for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
                       if e.message.startswith("Started process for run")]
            worker = int(re.search(r"pid: (\d+)", started[0]).group(1))
            assert daemon.pid in [p.pid for p in psutil.Process(worker).parents()]
            os.kill(worker, signal.SIGKILL)
            gated_embeddings.release()

            deadline = time.monotonic() + TIMEOUT
            while True:
                assert daemon.poll() is None, f"the daemon exited\n{tail(daemon_log)}"
                runs = instance.get_runs()
                retries = [r for r in runs if r.parent_run_id == run_id]
                if retries and retries[0].status == dg.DagsterRunStatus.SUCCESS:
                    break
                failed = [r for r in retries if r.status == dg.DagsterRunStatus.FAILURE]
                assert not failed, f"the retry failed\n{describe(instance)}\n{tail(daemon_log)}"
                assert time.monotonic() < deadline, f"no successful retry\n{describe(instance)}\n{tail(daemon_log)}"
                time.sleep(1)
            killed = instance.get_run_by_id(run_id)
            [retry] = retries
            assert killed.status == dg.DagsterRunStatus.FAILURE and len(runs) == 2, describe(instance)
            # Killed in `indexed`, after the stages before it had stored their outputs.
            done = {f"{KILLED}_collection", f"{KILLED}_cleaning", f"{KILLED}__chunks"}
            assert run_steps(instance, run_id, dg.DagsterEventType.STEP_SUCCESS) == done
            assert run_steps(instance, run_id, dg.DagsterEventType.STEP_START) == done | {f"{KILLED}__indexed"}
            # The code server said what happened to the run worker.
            engine = [e.message for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)]
            assert any(f"Run execution process for {run_id} was terminated by signal 9 (SIGKILL)" in message
                       for message in engine), engine
            assert "Retrying the run" in engine, engine
            assert retry.tags.get("dagster/retry_number") == "1"
            # From failure: collection, cleaning and chunks are not run again, only the killed stage.
            assert run_steps(instance, retry.run_id, dg.DagsterEventType.STEP_START) == {f"{KILLED}__indexed"}
            event = instance.get_latest_materialization_event(dg.AssetKey([KILLED, "indexed"]))
            meta = {name: value.value for name, value in event.asset_materialization.metadata.items()}
            assert event.run_id == retry.run_id

    # The retry embedded what Milvus did not hold yet (the first batch survived the kill in the runs measured).
    assert meta["embedded"] + meta["unchanged"] == meta["vectors"] == case.chunks
    print(f"retry embedded {meta['embedded']} chunks and kept {meta['unchanged']} of {case.chunks}")
    # Same records as the clean run in every output; every chunk once in Milvus, none lost.
    assert case.outputs() == case.expected
    vectors = case.vectors()
    assert len({chunk_id for chunk_id, _, _ in vectors}) == len(vectors) == case.chunks
    assert vectors == case.expected_vectors


# --- a Delta write killed mid-stream ------------------------------------------------------------------
TABLE_WRITER = REPO / "tests" / "core" / "table_writer.py"


@pytest.fixture(params=["local", "s3"])
def table_storage(request, tmp_path):
    from datamate_resources.storage import ObjectStore

    if request.param == "local":
        return ObjectStore(url=f"file://{tmp_path / 'storage'}")
    endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_bucket")
    return ObjectStore(url=f"s3://{bucket}/root", endpoint_url=endpoint)


@pytest.mark.timeout(2 * TIMEOUT)
def test_writer_killed_mid_stream_leaves_the_last_committed_version(tmp_path, table_storage):
    """SIGKILL while `tables.write` consumes a slow generator: readers see the previous version, whole; the
    write run again commits exactly one version; housekeeping then deletes what the killed writer left."""
    import pyarrow as pa

    from datamate_resources import tables

    storage = table_storage
    seed = pa.table({"writer": ["seed"] * 3, "n": [0, 1, 2]})
    tables.write(storage, "demo", "cleaned", seed)
    ready = tmp_path / "ready"
    args = [sys.executable, str(TABLE_WRITER), storage.url, "demo", "cleaned", "killed", "--batches", "100000",
            "--ready", str(ready), "--delay", "0.001"]
    if storage.endpoint_url:
        args += ["--endpoint", storage.endpoint_url]
    log = tmp_path / "writer.log"
    with background_process(args, log, cwd=REPO, env={"PYTHONPATH": str(REPO)}) as writer:
        deadline = time.monotonic() + TIMEOUT
        while not ready.exists():
            assert writer.poll() is None, tail(log)
            assert time.monotonic() < deadline, f"the writer did not start\n{tail(log)}"
            time.sleep(0.1)
        time.sleep(3)  # thousands of rows are streaming into the table's files
        assert writer.poll() is None, f"the writer finished before it was killed\n{tail(log)}"
        os.killpg(writer.pid, signal.SIGKILL)
        writer.wait(timeout=60)
    assert writer.returncode == -signal.SIGKILL

    ref = tables.current(storage, "demo", "cleaned")
    assert ref.version == 0 and ref.read().equals(seed)  # no partial data is visible
    again = tables.write(storage, "demo", "cleaned", pa.table({"writer": ["retry"], "n": [0]}), run_id="retry")
    assert again.version == 1 and [v["version"] for v in tables.versions(again)] == [1, 0]
    assert tables.read_stage(storage, "demo", "cleaned", version=0).equals(seed)

    done = tables.housekeep(storage, "demo", "cleaned", keep_versions=2, keep_days=None, compact=False,
                            min_file_age_hours=0)
    data_files = {path.rsplit("/", 1)[-1] for path in storage.list("demo", "cleaned", pattern="*.parquet")}
    referenced = {uri.rsplit("/", 1)[-1] for version in (0, 1)
                  for uri in tables.current(storage, "demo", "cleaned", version).delta().file_uris()}
    assert data_files == referenced, done  # the killed writer's files (if it had flushed any) are gone
    print(f"housekeeping removed {done['files_removed']} file(s), {done['bytes_removed']} bytes, of the killed write")
