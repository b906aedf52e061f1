"""End to end: the real dagster-daemon and dagster-webserver on PostgreSQL pick up files dropped into a local
inbox and an S3 inbox (moto's server), collect each batch once, and declarative automation carries them through
cleaning, annotation (embeddings labeler), chunks and the Milvus Lite index, and the dbt reports.

The slow LLM stages (synthesis, evaluation) are left out of this dataset; `datamate demo` covers them. One
dataset reads both inboxes (a folder and an S3 source), so its inbox sensor watches both, as in production;
one dataset rather than one per inbox keeps the test within a few minutes on two shared cores. Which assets
must update is read from the webserver's asset graph (everything downstream of `collected`), so stages added
later are covered without editing this test.
"""

import json
import time
from pathlib import Path

import boto3
import pytest
import requests
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.storage.tags import SENSOR_NAME_TAG

from datamate_assets.automation import INBOX_FILES_TAG
from datamate_resources import tables
from datamate_resources.storage import ObjectStore
from tests.conftest import BIN, REPO, S3_KEYS
from tests.servers import background_process, free_port, server_process


def read_stage(storage: Path, stage: str):
    """A stage's output (its latest Delta version) under the local storage root."""
    table = tables.read_stage(ObjectStore(url=storage.as_uri()), DATASET, stage)
    assert table is not None, f"{storage}/{DATASET}/{stage} was never written"
    return table

# e2e: the real daemon carrying files through every stage; `make test-e2e` (too heavy for CI's 2 cores).
pytestmark = pytest.mark.e2e

DATASET = "inbox_demo"
PHASE_TIMEOUT = 900  # per phase; bounded, generous because the 2 cores are shared
UNFINISHED = {DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
              DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING}
AUTOMATION_SENSORS = {"datamate_automation", "datamate_milvus_automation", "datamate_llm_automation"}
TEXT = "Notes on {} for the Debian administrator: install packages with apt, keep the system updated. "


def write_spec(directory: Path, local_inbox: Path, bucket: str) -> None:
    spec = {
        "name": DATASET,
        "sources": [{"type": "folder", "path": str(local_inbox)}, {"type": "s3", "url": f"s3://{bucket}/inbox/"}],
        "cleaning": {"process": [{"whitespace_normalization_mapper": {}}, {"document_deduplicator": {}}]},
        "annotation": {"language": True, "labels": ["installation", "networking"], "labeler": "embeddings",
                       "quality": False},
        "index": {"chunk_size": 400, "chunk_overlap": 0, "hybrid": False},
        "automation": {"inbox_sensor": True},
    }
    directory.mkdir()
    (directory / f"{DATASET}.yaml").write_text(yaml.safe_dump(spec))


def asset_graph(port: int) -> dict[AssetKey, list[AssetKey]]:
    """Every asset of the code location → its upstream assets, as the webserver serves them."""
    response = requests.post(f"http://127.0.0.1:{port}/graphql", timeout=120, json={
        "query": "{ assetNodes { assetKey { path } dependencyKeys { path } } }"})
    response.raise_for_status()
    return {AssetKey(n["assetKey"]["path"]): [AssetKey(d["path"]) for d in n["dependencyKeys"]]
            for n in response.json()["data"]["assetNodes"]}


def downstream_of(graph: dict[AssetKey, list[AssetKey]], roots: list[AssetKey]) -> set[AssetKey]:
    found = set(roots)
    changed = True
    while changed:
        changed = False
        for asset, deps in graph.items():
            if asset not in found and found.intersection(deps):
                found.add(asset)
                changed = True
    return found


def describe(instance: DagsterInstance) -> str:
    return "\n".join(f"{r.run_id[:8]} {r.status.value} {r.tags.get(SENSOR_NAME_TAG, '-')} "
                     f"{sorted(k.to_user_string() for k in r.asset_selection or [])} {r.tags.get(INBOX_FILES_TAG, '')}"
                     for r in reversed(instance.get_runs(limit=60)))


def latest(instance: DagsterInstance, asset: AssetKey) -> float | None:
    event = instance.get_latest_materialization_event(asset)
    return event.timestamp if event else None


def wait_until_settled(instance: DagsterInstance, graph: dict, assets: set[AssetKey], after: float,
                       inbox_runs: int, logs: list[Path]) -> None:
    """Until `inbox_runs` inbox runs succeeded, every asset in `assets` was materialized since `after` and after
    each of its upstream assets (nothing left for automation to do) and no run is queued or running."""
    deadline = time.monotonic() + PHASE_TIMEOUT
    waiting: list[str] = []
    while time.monotonic() < deadline:
        runs = instance.get_runs()
        failed = [r for r in runs if r.status == DagsterRunStatus.FAILURE]
        assert not failed, f"runs failed:\n{describe(instance)}\n{tail(logs)}"
        inbox = [r for r in runs if INBOX_FILES_TAG in r.tags and r.status == DagsterRunStatus.SUCCESS]
        times = {a: latest(instance, a) for a in graph}
        waiting = sorted(a.to_user_string() for a in assets if times[a] is None or times[a] <= after
                         or any(times.get(d) and times[d] > times[a] for d in graph[a]))
        if len(inbox) >= inbox_runs and not waiting and not any(r.status in UNFINISHED for r in runs):
            return
        time.sleep(3)
    pytest.fail(f"not settled within {PHASE_TIMEOUT}s: {len(inbox)}/{inbox_runs} inbox runs; assets not "
                f"up to date: {waiting}\n{describe(instance)}\n{tail(logs)}")


def tail(logs: list[Path]) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in logs if p.exists())


def inbox_batches(instance: DagsterInstance) -> list[list[str]]:
    records = instance.get_run_records(RunsFilter(tags={SENSOR_NAME_TAG: f"{DATASET}_inbox_sensor"}))
    return [json.loads(r.dagster_run.tags[INBOX_FILES_TAG]) for r in sorted(records, key=lambda r: r.create_timestamp)]


def collection_counts(instance: DagsterInstance) -> list[tuple[int, int, int]]:
    """(new, changed, unchanged) of every materialization of `collected`, oldest first."""
    records = instance.fetch_materializations(AssetKey([DATASET, "collected"]), limit=100, ascending=True).records
    return [tuple(r.asset_materialization.metadata[k].value for k in ("new", "changed", "unchanged"))
            for r in records]


@pytest.mark.timeout(2 * PHASE_TIMEOUT + 600)  # above the bounded waits, which fail with the runs' story
def test_inbox_files_flow_through_the_stages_once(tmp_path, monkeypatch, postgres_dagster_home, s3_endpoint,
                                                  s3_bucket):
    local_inbox = tmp_path / "local_inbox"
    local_inbox.mkdir()
    write_spec(tmp_path / "datasets", local_inbox, s3_bucket)
    storage = tmp_path / "storage"
    for name, value in {
        "DATAMATE_HOME": str(tmp_path / "home"), "DATAMATE_DATASETS_DIR": str(tmp_path / "datasets"),
        "DATAMATE_STORAGE_URL": f"file://{storage}", "DATAMATE_S3_ENDPOINT_URL": s3_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "workspace.yaml").write_text(json.dumps({"load_from": [{"python_module": {
        "module_name": "datamate_assets.definitions", "location_name": "datamate", "working_directory": str(REPO),
    }}]}))
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                      aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"])

    def drop_local(name: str, topic: str) -> None:  # written aside and moved in, as the docs ask
        (tmp_path / name).write_text(TEXT.format(topic) * 4)
        (tmp_path / name).rename(local_inbox / name)

    def drop_s3(name: str, topic: str) -> None:
        s3.put_object(Bucket=s3_bucket, Key=f"inbox/{name}", Body=(TEXT.format(topic) * 4).encode())

    # Files present before the daemon starts are collected by its first tick.
    drop_local("apt.txt", "apt")
    drop_local("ssh.txt", "ssh")
    drop_s3("dpkg.txt", "dpkg")
    drop_s3("grub.txt", "grub")

    port = free_port()
    instance = DagsterInstance.get()
    daemon_log, webserver_log = tmp_path / "daemon.log", tmp_path / "webserver.log"
    logs = [daemon_log, webserver_log]
    daemon = [str(BIN / "dagster-daemon"), "run", "-w", str(tmp_path / "workspace.yaml")]
    with server_process([str(BIN / "dagster-webserver"), "-w", str(tmp_path / "workspace.yaml"), "-h",
                         "127.0.0.1", "-p", str(port)], port, webserver_log, timeout=300, cwd=tmp_path):
        graph = asset_graph(port)
        collected = [AssetKey([DATASET, "collected"])]
        assets = downstream_of(graph, collected)
        # The stages this test is about, besides whatever else follows them (the dbt reports).
        for stage in ("collected", "cleaned", "annotated", "chunks", "indexed"):
            assert AssetKey([DATASET, stage]) in assets, sorted(a.to_user_string() for a in assets)
        started = time.time()
        with background_process(daemon, daemon_log, cwd=tmp_path):
            wait_until_settled(instance, graph, assets, started, inbox_runs=1, logs=logs)

        # A daemon restart loses nothing: files added or changed while it is down start exactly one run,
        # and the restarted daemon's first ticks do not repeat the first batch.
        drop_local("ssh.txt", "OpenSSH")
        drop_local("nfs.txt", "nfs")
        drop_s3("lvm.txt", "lvm")
        restarted = time.time()
        with background_process(daemon, daemon_log, cwd=tmp_path):
            wait_until_settled(instance, graph, assets, restarted, inbox_runs=2, logs=logs)

    runs = instance.get_runs()
    assert all(r.status == DagsterRunStatus.SUCCESS for r in runs), describe(instance)
    # Every run was started by an inbox sensor or by declarative automation, none by hand.
    assert {r.tags.get(SENSOR_NAME_TAG) for r in runs} <= {f"{DATASET}_inbox_sensor", *AUTOMATION_SENSORS}, \
        describe(instance)
    automated = [r for r in runs if r.tags.get(SENSOR_NAME_TAG) in AUTOMATION_SENSORS]
    assert {k for r in automated for k in r.asset_selection or []} >= assets - set(collected)

    # The inbox sensor started exactly one run per batch, for the files of both inboxes: no file twice, none
    # missed, across the restart.
    local, bucket = local_inbox.as_uri(), f"s3://{s3_bucket}/inbox"
    assert inbox_batches(instance) == [
        [f"{local}/apt.txt", f"{local}/ssh.txt", f"{bucket}/dpkg.txt", f"{bucket}/grub.txt"],
        [f"{local}/nfs.txt", f"{local}/ssh.txt", f"{bucket}/lvm.txt"],
    ], describe(instance)
    # Each collection counted its files as new or changed exactly once: (new, changed, unchanged).
    assert collection_counts(instance) == [(4, 0, 0), (2, 1, 3)]

    # The outputs hold every file once, in its latest version, through to the index.
    uris = [f"{local}/{n}.txt" for n in ("apt", "nfs", "ssh")] + [f"{bucket}/{n}.txt" for n in ("dpkg", "grub", "lvm")]
    for stage in ("collected", "cleaned"):
        table = read_stage(storage, stage)
        assert sorted(table["source_uri"].to_pylist()) == sorted(uris), stage
    cleaned = read_stage(storage, "cleaned")
    annotated = read_stage(storage, "annotated")
    assert sorted(annotated["doc_id"].to_pylist()) == sorted(cleaned["doc_id"].to_pylist())
    assert set(annotated["topic"].to_pylist()) <= {"installation", "networking"}
    chunks = read_stage(storage, "chunks")
    assert set(chunks["doc_id"].to_pylist()) == set(cleaned["doc_id"].to_pylist())
    # The restart's index run embedded only the chunks of the new and changed files and kept the others.
    second_batch = {f"{local}/nfs.txt", f"{local}/ssh.txt", f"{bucket}/lvm.txt"}
    fresh = sum(uri in second_batch for uri in chunks["source_uri"].to_pylist())
    metadata = instance.get_latest_materialization_event(AssetKey([DATASET, "indexed"])).asset_materialization.metadata
    assert (metadata["chunks"].value, metadata["vectors"].value) == (chunks.num_rows, chunks.num_rows)
    assert (metadata["embedded"].value, metadata["unchanged"].value) == (fresh, chunks.num_rows - fresh)
    texts = dict(zip(*(cleaned[c].to_pylist() for c in ("source_uri", "text")), strict=True))
    assert "OpenSSH" in texts[f"{local}/ssh.txt"]
