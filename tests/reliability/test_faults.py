"""Faults during a run, with the real services the tests start: the S3 endpoint is killed mid-run and restarted;
the whole graph is materialized twice on unchanged input. After recovery the outputs hold the same records as a
clean run: no duplicate, none lost (content digests, `faults.py`). The run worker killed mid-stage and retried
is `test_run_retry.py`; Milvus killed during indexing and LLM endpoint failures are covered by
`tests/indexing/test_server_fault.py` and `tests/llm/test_llm_resource.py` (the table in docs/reliability.md).
"""

import sys
import time

import boto3
import dagster as dg
import pytest

from datamate_assets.spec import DatasetSpec
from datamate_resources import build_resources, open_storage, tables
from datamate_resources.settings import Settings
from tests.conftest import REPO, S3_KEYS
from tests.llm.conftest import FlakyServer, openai_resource
from tests.reliability.faults import (
    SWITCHES,
    TOPICS,
    RestartableS3,
    SwitchedEmbeddings,
    file_digests,
    materialized,
    output_digests,
    run_failures,
    stage_assets,
)
from tests.servers import free_port, server_process


# --- 1. the S3 endpoint stops and restarts during a run ------------------------------------------------
@pytest.fixture
def restartable_s3(tmp_path, monkeypatch):
    """A fresh moto server of this test's own (it gets killed), with a bucket holding the source files."""
    for name, value in S3_KEYS.items():
        monkeypatch.setenv(name, value)
    server = RestartableS3(tmp_path / "moto")
    try:
        server.start()
        yield server
    finally:
        server.stop()

PROVENANCE = frozenset({"chunks_version"})  # the version of the chunks a synthesized record came from


def s3_spec(bucket: str) -> DatasetSpec:
    return DatasetSpec.model_validate({
        "name": "s3_fault",
        "sources": [{"type": "s3", "url": f"s3://{bucket}/inbox/"}],
        "cleaning": {"process": [{"whitespace_normalization_mapper": {}}, {"text_length_filter": {"min_len": 100}},
                                 {"document_deduplicator": {}}]},
        "annotation": {"labels": ["packaging", "networking", "security"], "labeler": "embeddings"},
    })


S3_STAGES = ["collected", "collection_rejects", "cleaned", "cleaning_drops", "annotated"]


def test_s3_endpoint_killed_mid_run_then_restarted(tmp_path, restartable_s3):
    s3, bucket = restartable_s3, "fault-bucket"
    client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1",
                          aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"])
    client.create_bucket(Bucket=bucket)
    for name, text in TOPICS.items():
        client.put_object(Bucket=bucket, Key=f"inbox/{name}.txt", Body=text.encode())
    client.put_object(Bucket=bucket, Key="inbox/apt-copy.txt", Body=TOPICS["apt"].encode())  # a duplicate: dropped
    client.put_object(Bucket=bucket, Key="inbox/short.txt", Body=b"Too short to keep.")  # dropped by length
    client.put_object(Bucket=bucket, Key="inbox/empty.txt", Body=b"")  # a collection reject
    spec = s3_spec(bucket)

    def settings(root: str) -> Settings:
        return Settings.from_env({"DATAMATE_HOME": str(tmp_path / root), "DATAMATE_STORAGE_URL":
                                  f"s3://{bucket}/{root}", "DATAMATE_S3_ENDPOINT_URL": s3.url})

    def materialize(root: str) -> dg.ExecuteInProcessResult:
        resources = {**build_resources(settings(root)), "embeddings": SwitchedEmbeddings(switch=root)}
        return dg.materialize(stage_assets(spec), resources=resources, raise_on_error=False)

    clean = materialize("clean")
    assert clean.success, run_failures(clean)
    expected = output_digests(open_storage(settings("clean")), spec.name, S3_STAGES)
    assert [expected[s][0] for s in S3_STAGES] == [6, 1, 4, 2, 4]

    # The server dies (SIGKILL, whole process group) when `annotated` starts embedding, before it can store its
    # output; collection and cleaning were stored before.
    SWITCHES["faulted"] = s3.kill
    started = time.monotonic()
    faulted = materialize("faulted")
    failed_after = time.monotonic() - started
    assert not faulted.success
    failures = run_failures(faulted)
    assert list(failures) == ["s3_fault__annotated"], failures
    # The error names the endpoint and the table being written.
    assert s3.url.split("://")[1] in failures["s3_fault__annotated"], failures
    assert f"{bucket}/faulted/s3_fault/annotated" in failures["s3_fault__annotated"], failures

    s3.restart()  # same port; the recording gives back every object the dead server had acknowledged
    storage = open_storage(settings("faulted"))
    # The write that failed left no version behind: a reader sees no `annotated` table at all.
    assert tables.current(storage, spec.name, "cleaned") is not None
    assert tables.current(storage, spec.name, "annotated") is None

    again = materialize("faulted")
    assert again.success, run_failures(again)
    meta = materialized(again)
    # Collection compared with what the dead server had stored: nothing new, nothing changed, nothing removed;
    # cleaning reused every document.
    assert [meta["collected"][n] for n in ("new", "changed", "unchanged", "removed")] == [0, 0, 6, 0]
    assert (meta["cleaned"]["reused"], meta["cleaned"]["processed"]) == (6, 0)
    # Same records as the clean run in every output: no duplicate, none lost.
    assert output_digests(storage, spec.name, S3_STAGES) == expected
    print(f"S3 killed in `annotated`; the run failed {failed_after:.1f}s later; restarts: {s3.restarts}")


# --- 2. the whole graph twice on unchanged input --------------------------------------------------------
@pytest.fixture
def journaled_llm(llm_server, tmp_path) -> FlakyServer:
    """The packaged model's server seen through the test proxy with no failure injected: the proxy's journal
    lists every request that reached the endpoint."""
    proxy_port = free_port()
    server = FlakyServer(f"http://127.0.0.1:{proxy_port}/v1", tmp_path / "journal.jsonl", failure_rate=0.0,
                         slow_seconds=0.0)
    proxy = [sys.executable, "-m", "tests.llm.flaky_proxy", "--upstream", llm_server.removesuffix("/v1"),
             "--port", str(proxy_port), "--failure-rate", "0", "--journal", str(server.journal)]
    with server_process(proxy, proxy_port, tmp_path / "proxy.log", timeout=120, cwd=REPO):
        yield server


def graph_spec(folder) -> DatasetSpec:
    return DatasetSpec.model_validate({
        "name": "twice",
        "sources": [{"type": "folder", "path": str(folder)}],
        "cleaning": {"process": [{"whitespace_normalization_mapper": {}}, {"document_deduplicator": {}}]},
        "annotation": {"labels": ["packaging", "networking", "security"], "labeler": "embeddings",
                       "label_studio": {"export": True, "inbox": "label_studio/inbox/twice"}},
        "synthesis": {"kinds": ["qa"], "per_chunk": 1, "max_records": 2},
        "evaluation": {"judge_dimensions": [{"name": "faithful", "description": "The answer is supported by the "
                                                                                "document"}], "max_judged": 2},
        "index": {"chunk_size": 400, "chunk_overlap": 0, "checks": {"k": 3}},
    })


def test_whole_graph_twice_changes_nothing_and_calls_no_model(tmp_path, journaled_llm):
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in TOPICS.items():
        (folder / f"{name}.txt").write_text(f"{text} {text}")  # over 200 characters: synthesis asks about it
    (folder / "empty.txt").write_text("")  # a collection reject
    spec = graph_spec(folder)
    settings = Settings.from_env({"DATAMATE_HOME": str(tmp_path / "home")})
    storage = open_storage(settings)
    resources = {**build_resources(settings), "llm": openai_resource(journaled_llm.base_url, max_tokens=400)}
    assets = stage_assets(spec)
    stages = sorted({asset_key.path[-1] for a in assets for asset_key in a.keys})
    assert stages == ["annotated", "chunks", "cleaned", "cleaning_drops", "collected", "collection_rejects",
                      "evaluation", "human_labels", "indexed", "label_studio_tasks", "retrieval_eval", "synthesized"]
    instance = dg.DagsterInstance.ephemeral()

    first = dg.materialize(assets, resources=resources, instance=instance, raise_on_error=False)
    assert first.success, run_failures(first)
    table_stages = [s for s in stages if s not in ("indexed", "label_studio_tasks")]  # the others are tables
    before, meta = file_digests(storage), materialized(first)
    records_before = output_digests(storage, spec.name, table_stages, drop=PROVENANCE)
    assert any(path.startswith("label_studio/twice/tasks-") for path in before), sorted(before)
    calls = len(journaled_llm.requests())
    assert meta["synthesized"]["llm_calls"] >= 2 and meta["evaluation"]["judge_llm_calls"] >= 1
    assert calls >= meta["synthesized"]["llm_calls"] + meta["evaluation"]["judge_llm_calls"]
    # A request that failed would rightly be asked again next time; none did (constrained decoding).
    assert (meta["synthesized"]["request_failures"], meta["evaluation"]["judge_failures"]) == (0, 0)
    assert meta["indexed"]["embedded"] == meta["indexed"]["vectors"] > 0

    second = dg.materialize(assets, resources=resources, instance=instance, raise_on_error=False)
    assert second.success, run_failures(second)
    again = materialized(second)
    assert sorted(again) == stages
    # No model call: every answer came from the cache, and the endpoint saw no request at all.
    assert (again["synthesized"]["llm_calls"], again["synthesized"]["llm_cache_hits"]) == (
        0, meta["synthesized"]["llm_requests"])
    assert (again["evaluation"]["judge_llm_calls"], again["evaluation"]["judge_llm_cache_hits"]) == (
        0, meta["evaluation"]["judge_llm_requests"])
    assert len(journaled_llm.requests()) == calls
    # The index embedded nothing and deleted nothing; collection found nothing new; cleaning reused everything.
    assert again["indexed"]["summary"] == "unchanged: nothing embedded, nothing deleted"
    assert (again["indexed"]["embedded"], again["indexed"]["vectors"]) == (0, meta["indexed"]["vectors"])
    assert (again["collected"]["new"], again["collected"]["changed"]) == (0, 0)
    assert again["cleaned"]["processed"] == 0
    # Not one record changed in any stage table (some have a new version, with the same rows; synthesized records
    # name that version as their provenance), and not one byte in the other stored files: Label Studio tasks and
    # config, the LLM cache.
    assert output_digests(storage, spec.name, table_stages, drop=PROVENANCE) == records_before
    after = file_digests(storage)
    assert sorted(after) == sorted(before)
    assert {path for path in before if after[path] != before[path]} == set()
