"""Helpers for the fault tests (`test_faults.py`, `test_run_retry.py`): a moto S3 server that can be killed and
restarted with its objects, content digests of stage outputs and of a Milvus collection, the stage assets of
one dataset, a switch that fires inside a stage.

- `RestartableS3`: moto keeps its state in memory, so a plain restart would forget every bucket. It runs with
  moto's recorder on (`MOTO_ENABLE_RECORDING`, `MOTO_RECORDER_FILEPATH`): every request is appended to a file
  before it is handled, and after a restart `POST /moto-api/recorder/replay-recording` plays them again, which
  gives the restarted server the objects a real S3 or MinIO would still have. The server is SIGKILLed (its
  whole process group) and restarted on the same port.
- `table_digest` / `output_digests`: the rows of a stage output (the latest version of its Delta table),
  canonical and sorted, hashed, so two runs can be compared record by record (a duplicate or a lost record
  changes the digest); `VOLATILE` columns hold the time of a run and differ between two runs by design.
  `file_digests`: every stored byte outside the Delta tables (exports, Label Studio tasks, the LLM cache), for a
  run compared with its own repetition; a table gets a new version per materialization, so tables are compared
  by content. `milvus_rows`: what a Milvus Lite collection holds, duplicates included.
"""

import contextlib
import hashlib
import importlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pyarrow as pa
import requests

from datamate_assets.spec import DatasetSpec
from datamate_resources import tables
from datamate_resources.embeddings import EmbeddingsResource
from datamate_resources.storage import ObjectStore
from tests.servers import free_port, stop_process_group, wait_for_port

BIN = Path(sys.executable).parent
# The stage modules of the code location (datamate_assets.definitions), without the dbt reports.
STAGE_MODULES = ["datamate_assets.collection", "datamate_assets.cleaning", "datamate_assets.indexing",
                 "datamate_assets.annotation", "datamate_assets.synthesis", "datamate_assets.evaluation"]
TOPICS = {
    "apt": "APT installs, upgrades and removes packages on Debian. Run apt update to refresh the package lists "
    "from the mirrors in /etc/apt/sources.list, then apt upgrade to install newer versions.",
    "ssh": "The OpenSSH server listens on port 22. Set PasswordAuthentication no in /etc/ssh/sshd_config so "
    "that users log in with keys, then restart the ssh service to apply it.",
    "net": "Network interfaces are configured in /etc/network/interfaces. A static address needs the address, "
    "netmask and gateway lines; ifup and ifdown bring an interface up and down.",
    "boot": "GRUB loads the Linux kernel at boot. Kernel parameters go in GRUB_CMDLINE_LINUX in "
    "/etc/default/grub; run update-grub afterwards so the change reaches the boot menu.",
}
# When a run read or set an input aside: the only columns two correct runs over the same input may disagree on.
VOLATILE = frozenset({"collected_at", "rejected_at"})


class RestartableS3:
    """moto's S3 server on a free loopback port that survives SIGKILL + restart with its objects."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.recording = directory / "recording.jsonl"
        self.log = directory / "moto.log"
        self.process: subprocess.Popen | None = None
        self.restarts = 0

    def start(self) -> None:
        env = {**os.environ, "MOTO_ENABLE_RECORDING": "1", "MOTO_RECORDER_FILEPATH": str(self.recording)}
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env,
            )
        wait_for_port(self.port, 60, self.process, self.log)
        if self.recording.exists() and self.recording.stat().st_size:
            # Replaying is not recorded again; requests after it are appended, so restarts can repeat.
            requests.post(f"{self.url}/moto-api/recorder/replay-recording", timeout=120).raise_for_status()

    def kill(self) -> None:
        """The fault: SIGKILL to the server's whole process group, no goodbye to open connections."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        stop_process_group(self.process)  # returns once no process of the group is left
        self.process = None

    def restart(self) -> None:
        self.start()
        self.restarts += 1

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)
            self.process = None


def stage_assets(spec: DatasetSpec) -> list:
    """Every asset of one dataset (its group), as `datamate_assets.definitions` builds them."""
    assets = []
    for name in STAGE_MODULES:
        assets += list(importlib.import_module(name).build_defs(spec).assets or [])
    return assets


def canonical_rows(table: pa.Table, drop: frozenset[str] = VOLATILE) -> list[str]:
    keep = [name for name in table.column_names if name not in drop]
    return [json.dumps(row, sort_keys=True, ensure_ascii=False, default=str) for row in table.select(keep).to_pylist()]


def table_digest(table: pa.Table, drop: frozenset[str] = VOLATILE) -> str:
    """sha256 over the sorted canonical rows: equal for the same multiset of records, whatever their order."""
    return hashlib.sha256("\n".join(sorted(canonical_rows(table, drop))).encode()).hexdigest()


def output_digests(storage: ObjectStore, dataset: str, stages: list[str],
                   drop: frozenset[str] = VOLATILE) -> dict[str, tuple[int, str]]:
    """stage → (rows, digest) of each stored output, the latest version of the Delta table `<dataset>/<stage>`."""
    digests = {}
    for stage in stages:
        table = tables.read_stage(storage, dataset, stage)
        assert table is not None, f"{tables.table_uri(storage, dataset, stage)} was never written"
        digests[stage] = (table.num_rows, table_digest(table, drop))
    return digests


def file_digests(storage: ObjectStore) -> dict[str, str]:
    """Every object under the storage root outside the Delta tables (exports, Label Studio tasks, the LLM cache)
    → sha256 of its bytes."""
    root, paths = storage.path(), storage.list()
    table_roots = {path.split("/_delta_log/")[0] + "/" for path in paths if "/_delta_log/" in path}
    return {path[len(root) + 1:]: hashlib.sha256(storage.fs.cat_file(path)).hexdigest()
            for path in paths if not any(path.startswith(table) for table in table_roots)}


def milvus_rows(path: Path, dataset: str) -> list[tuple[str, str, str]]:
    """(chunk_id, doc_id, text) of every vector in a dataset's Milvus Lite collection, duplicates included."""
    from datamate_resources.milvus import MilvusResource, collection_name

    rows = []
    with MilvusResource(provider="local", path=str(path)).get_client() as client:
        client.load_collection(collection_name(dataset))  # a reopened collection is released
        iterator = client.query_iterator(collection_name(dataset), batch_size=1000, filter="",
                                         output_fields=["chunk_id", "doc_id", "text"])
        while batch := iterator.next():
            rows += [(row["chunk_id"], row["doc_id"], row["text"]) for row in batch]
        iterator.close()
    return sorted(rows)


# --- a switch that fires inside a stage -------------------------------------------------------------------
SWITCHES: dict[str, Callable[[], None]] = {}  # name → what to do; looked up by name inside the run


class _FireOnFirstCall:
    def __init__(self, inner, switch: str):
        self.inner, self.switch = inner, switch

    def _fire(self) -> None:
        action = SWITCHES.pop(self.switch, None)  # once
        if action is not None:
            action()

    def embed_documents(self, texts):
        self._fire()
        return self.inner.embed_documents(texts)

    def embed_query(self, text):
        self._fire()
        return self.inner.embed_query(text)


class SwitchedEmbeddings(EmbeddingsResource):
    """The real embeddings resource; the first embedding call of the run fires `SWITCHES[switch]` first."""

    switch: str = ""

    def get_embeddings(self):
        return _FireOnFirstCall(super().get_embeddings(), self.switch)


def materialized(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    """stage → the metadata values of its materialization in this run."""
    return {event.asset_key.path[-1]: {name: value.value for name, value in event.materialization.metadata.items()}
            for event in result.get_asset_materialization_events()}


def run_failures(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """step key → the whole error chain of each failed step (message and causes)."""
    failures = {}
    for event in result.all_events:
        if event.is_step_failure:
            error, parts = event.step_failure_data.error, []
            while error is not None:
                parts.append(error.message.strip())
                error = error.cause
            failures[event.step_key] = "\n".join(parts)
    return failures
