"""End to end: the real dagster-daemon and dagster-webserver on PostgreSQL pick up files dropped into a local
inbox and an S3 inbox (moto's server), collect them once, and carry them through every stage that exists.

Stages are discovered from the webserver, so stages landing later are covered without editing this test.
"""

import json
import subprocess
import time
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
import requests
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRunStatus

from datamate_assets.automation import INBOX_FILES_TAG
from tests.conftest import BIN, REPO, S3_KEYS
from tests.servers import free_port, server_process, stop_process_group

DATASET = "inbox_demo"
TIMEOUT = 1200  # generous: the machine is shared and later stages run local models
UNFINISHED = {DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
              DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING}
TEXT = "Notes on {} for the Debian administrator: install packages with apt, keep the system updated. "


def write_spec(directory: Path, local_inbox: Path, bucket: str) -> None:
    spec = {
        "name": DATASET,
        "sources": [{"type": "folder", "path": str(local_inbox)}, {"type": "s3", "url": f"s3://{bucket}/inbox/"}],
        "cleaning": {"process": [{"whitespace_normalization_mapper": {}}, {"document_deduplicator": {}}]},
        "annotation": {"language": True, "labels": [], "quality": False},
        "synthesis": {"kinds": ["qa"], "per_chunk": 1, "max_records": 2},
        "evaluation": {"max_judged": 2},
        "index": {"chunk_size": 400, "chunk_overlap": 0, "hybrid": False},
        "automation": {"inbox_sensor": True},
    }
    directory.mkdir()
    (directory / f"{DATASET}.yaml").write_text(yaml.safe_dump(spec))


def graphql(port: int, query: str) -> dict:
    response = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=60)
    response.raise_for_status()
    return response.json()["data"]


def location_asset_keys(port: int) -> list[AssetKey]:
    data = graphql(port, "{ assetNodes { assetKey { path } } }")
    return [AssetKey(node["assetKey"]["path"]) for node in data["assetNodes"]]


def describe(instance: DagsterInstance) -> str:
    return "\n".join(f"{r.run_id[:8]} {r.status.value} {r.job_name} {sorted(r.asset_selection or [])} "
                     f"{r.tags.get(INBOX_FILES_TAG, '')}" for r in instance.get_runs(limit=50))


def wait_until_settled(instance: DagsterInstance, keys: list[AssetKey], after: float, inbox_runs: int) -> None:
    """Until `inbox_runs` inbox runs succeeded, every asset was materialized since `after`, nothing runs."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        runs = instance.get_runs()
        failed = [r for r in runs if r.status == DagsterRunStatus.FAILURE]
        assert not failed, f"runs failed:\n{describe(instance)}"
        inbox = [r for r in runs if INBOX_FILES_TAG in r.tags and r.status == DagsterRunStatus.SUCCESS]
        fresh = all(
            (event := instance.get_latest_materialization_event(k)) is not None and event.timestamp > after
            for k in keys
        )
        if len(inbox) >= inbox_runs and fresh and not any(r.status in UNFINISHED for r in runs):
            return
        time.sleep(3)
    stale = [k.to_user_string() for k in keys if (e := instance.get_latest_materialization_event(k)) is None
             or e.timestamp <= after]
    pytest.fail(f"not settled within {TIMEOUT}s; not materialized: {stale}\n{describe(instance)}")


def start_daemon(env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    # The daemon listens on no port, so it is started here rather than with server_process.
    with open(log, "ab") as out:
        return subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(cwd / "workspace.yaml")],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=cwd)


def test_inbox_files_flow_through_every_stage_once(tmp_path, monkeypatch, postgres_dagster_home, s3_endpoint,
                                                   s3_bucket):
    import os

    local_inbox = tmp_path / "local_inbox"
    local_inbox.mkdir()
    write_spec(tmp_path / "datasets", local_inbox, s3_bucket)
    for name, value in {
        "DATAMATE_HOME": str(tmp_path / "home"), "DATAMATE_DATASETS_DIR": str(tmp_path / "datasets"),
        "DATAMATE_STORAGE_URL": f"file://{tmp_path / 'storage'}", "DATAMATE_S3_ENDPOINT_URL": s3_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "workspace.yaml").write_text(json.dumps({"load_from": [{"python_module": {
        "module_name": "datamate_assets.definitions", "location_name": "datamate", "working_directory": str(REPO),
    }}]}))
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                      aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"])

    # Files present before the daemon starts are collected by its first tick.
    (local_inbox / "apt.txt").write_text(TEXT.format("apt") * 4)
    (local_inbox / "ssh.txt").write_text(TEXT.format("ssh") * 4)
    s3.put_object(Bucket=s3_bucket, Key="inbox/dpkg.txt", Body=(TEXT.format("dpkg") * 4).encode())
    s3.put_object(Bucket=s3_bucket, Key="inbox/grub.txt", Body=(TEXT.format("grub") * 4).encode())

    env = dict(os.environ)
    port = free_port()
    instance = DagsterInstance.get()
    daemon = None
    try:
        with server_process([str(BIN / "dagster-webserver"), "-w", str(tmp_path / "workspace.yaml"), "-h",
                             "127.0.0.1", "-p", str(port)], port, tmp_path / "webserver.log", timeout=180,
                            cwd=tmp_path):
            keys = [k for k in location_asset_keys(port) if k.path[0] in (DATASET, "reporting")]
            assert AssetKey([DATASET, "collected"]) in keys
            started = time.time()
            daemon = start_daemon(env, tmp_path, tmp_path / "daemon.log")
            wait_until_settled(instance, keys, started, inbox_runs=1)

            # A daemon restart loses nothing: files added or changed while it is down start exactly one run.
            stop_process_group(daemon)
            (local_inbox / "ssh.txt").write_text(TEXT.format("OpenSSH") * 4)
            (local_inbox / "nfs.txt").write_text(TEXT.format("nfs") * 4)
            s3.put_object(Bucket=s3_bucket, Key="inbox/lvm.txt", Body=(TEXT.format("lvm") * 4).encode())
            restarted = time.time()
            daemon = start_daemon(env, tmp_path, tmp_path / "daemon.log")
            wait_until_settled(instance, keys, restarted, inbox_runs=2)
            stop_process_group(daemon)
            daemon = None
    finally:
        if daemon is not None:
            stop_process_group(daemon)

    inbox_runs = sorted((r for r in instance.get_runs() if INBOX_FILES_TAG in r.tags
                         and "dagster/parent_run_id" not in r.tags), key=lambda r: r.create_timestamp)
    batches = [json.loads(r.tags[INBOX_FILES_TAG]) for r in inbox_runs]
    local, bucket = local_inbox.as_uri(), f"s3://{s3_bucket}/inbox"
    assert batches == [
        [f"{local}/apt.txt", f"{local}/ssh.txt", f"{bucket}/dpkg.txt", f"{bucket}/grub.txt"],
        [f"{local}/nfs.txt", f"{local}/ssh.txt", f"{bucket}/lvm.txt"],
    ]
    # Each collection counted its files as new or changed exactly once.
    latest = instance.get_latest_materialization_event(AssetKey([DATASET, "collected"]))
    metadata = latest.asset_materialization.metadata
    assert (metadata["new"].value, metadata["changed"].value, metadata["unchanged"].value) == (2, 1, 3)
    table = pq.read_table(tmp_path / "storage" / DATASET / "collected.parquet")
    assert sorted(table["source_uri"].to_pylist()) == sorted(
        [f"{local}/{n}.txt" for n in ("apt", "nfs", "ssh")] + [f"{bucket}/{n}.txt" for n in ("dpkg", "grub", "lvm")]
    )
    texts = dict(zip(table["source_uri"].to_pylist(), table["text"].to_pylist(), strict=True))
    assert "OpenSSH" in texts[f"{local}/ssh.txt"]
    for stage_key in keys:  # every stage that exists ran after the second collection
        assert instance.get_latest_materialization_event(stage_key).timestamp > restarted
