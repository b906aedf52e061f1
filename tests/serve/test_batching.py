"""Micro-batching: concurrent searches are answered by one embedding call and one Milvus search, each request
gets exactly the hits it gets alone (or the batch's error), and a lone request runs at once."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from langchain_core.embeddings import Embeddings

from datamate.api_keys import parse_api_keys
from datamate.batching import Batcher
from datamate.service import Backend, create_app
from datamate_resources.embeddings import EmbeddingsResource
from datamate_resources.milvus import MilvusUnavailableError
from tests.serve.conftest import KEYS_TEXT, READER_KEY, bearer

QUERIES = [
    "Which port does the SSH server listen on?",
    "How do I add a package with apt?",
    "Where do kernel parameters go?",
    "How do I set a static IP address?",
    "How do I turn off password logins for ssh?",
    "Which file lists the Debian mirrors?",
    "What loads the Linux kernel at boot?",
    "Which tool configures network interfaces?",
]


def until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# --- the batcher alone ------------------------------------------------------------------------------------
class HeldCall:
    """`call` for a Batcher: records each batch; the first one waits for `release` (so others queue)."""

    def __init__(self, fail: Exception | None = None):
        self.batches, self.threads, self.fail = [], [], fail
        self.entered, self.released = threading.Event(), threading.Event()

    def __call__(self, items: list) -> list:
        self.batches.append(items)
        self.threads.append(threading.get_ident())
        self.entered.set()
        self.released.wait()
        if self.fail is not None and len(self.batches) > 1:
            raise self.fail
        return [item * 10 for item in items]


def test_a_lone_call_runs_at_once_in_its_own_thread():
    call = HeldCall()
    call.released.set()
    started = time.perf_counter()
    assert Batcher().run("k", [1, 2], call) == [10, 20]
    assert time.perf_counter() - started < 0.5  # no timer to wait for
    assert call.batches == [[1, 2]] and call.threads == [threading.get_ident()]


def test_calls_during_a_running_one_are_batched_and_each_gets_its_own_results():
    batcher, call = Batcher(max_items=5), HeldCall()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.run, "k", [0], call)
        call.entered.wait(30)
        # 1+2+2 items fit one batch of 5; the next caller's 2 items do not, so they start the batch after it
        queued = [pool.submit(batcher.run, "k", items, call) for items in ([1], [2, 3], [4, 5])]
        until(lambda: batcher.queued() == 5)
        late = pool.submit(batcher.run, "k", [6, 7], call)
        other_key = pool.submit(batcher.run, "other", [8], call)  # another key does not wait for "k"
        until(lambda: batcher.queued() == 7 and len(call.batches) == 2)
        call.released.set()
        assert first.result() == [0]
        assert [f.result() for f in queued] == [[10], [20, 30], [40, 50]]
        assert late.result() == [60, 70] and other_key.result() == [80]
    assert sorted(call.batches) == [[0], [1, 2, 3, 4, 5], [6, 7], [8]]
    assert batcher.queued() == 0 and not batcher._keys  # nothing left behind


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_still_runs():
    batcher, call = Batcher(), HeldCall(fail=ValueError("bad batch"))
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(batcher.run, "k", [0], call)
        call.entered.wait(30)
        failing = [pool.submit(batcher.run, "k", [n], call) for n in range(1, 5)]
        until(lambda: batcher.queued() == 4)
        call.released.set()
        assert first.result() == [0]
        for future in failing:
            with pytest.raises(ValueError, match="bad batch"):
                future.result()
    call.fail = None
    assert batcher.run("k", [9], call) == [90]


# --- the service ------------------------------------------------------------------------------------------
class CountedEmbeddings(Embeddings):
    """The packaged model, recording the texts of every call; `hold()` makes the next call wait for `release()`,
    `fail` is raised by the call after the held one."""

    def __init__(self, model: Embeddings):
        self.model, self.calls, self.fail = model, [], None
        self.entered, self.released = threading.Event(), threading.Event()
        self.released.set()

    def hold(self) -> None:
        self.entered.clear()
        self.released.clear()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        self.entered.set()
        self.released.wait(60)
        if self.fail is not None and len(self.calls) > 1:
            error, self.fail = self.fail, None
            raise error
        return self.model.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


@pytest.fixture
def counted(lite, embeddings):
    """(app client, backend, counted model) over the Milvus Lite knowledge bases."""
    model = CountedEmbeddings(embeddings.get_embeddings())
    resource = EmbeddingsResource(provider="local")
    resource._embeddings = model
    backend = Backend(lite, resource)
    app = create_app(backend, parse_api_keys(KEYS_TEXT, "test keys"), rate=1000, burst=1000)
    with TestClient(app) as api:
        model.calls.clear()  # the warm-up
        yield api, backend, model


def post(api: TestClient, query: str, **body):
    return api.post("/v1/search", json={"dataset": "docs", "query": query, "k": 3, **body},
                    headers=bearer(READER_KEY))


def held_then_batched(api, backend, model, queries: list[str], **body) -> list:
    """The first query's search held in the model while the others queue behind it, then all answered."""
    model.hold()
    with ThreadPoolExecutor(len(queries)) as pool:
        first = pool.submit(post, api, queries[0], **body)
        assert model.entered.wait(60)
        rest = [pool.submit(post, api, query, **body) for query in queries[1:]]
        until(lambda: backend.batcher.queued() == len(queries) - 1)
        model.released.set()
        return [first.result(), *(future.result() for future in rest)]


@pytest.mark.parametrize("body", [
    {"mode": "hybrid"},
    {"mode": "dense"},
    {"mode": "hybrid", "per_doc": 1, "filter": {"doc_id": ["apt", "net", "ssh"]}},
], ids=["hybrid", "dense", "per_doc+filter"])
def test_concurrent_searches_share_one_embedding_call_and_get_their_own_hits(counted, body):
    api, backend, model = counted
    alone = {}
    for query in QUERIES:
        response = post(api, query, **body)
        assert response.status_code == 200, response.text
        alone[query] = response.json()
    assert model.calls == [[query] for query in QUERIES]  # one by one: nothing to batch, nothing waited for

    model.calls.clear()
    responses = held_then_batched(api, backend, model, QUERIES, **body)
    # two embedding calls (so two Milvus searches) for eight requests: the held one, then all the others at once
    assert [len(call) for call in model.calls] == [1, len(QUERIES) - 1]
    assert sorted(model.calls[1]) == sorted(QUERIES[1:])
    for query, response in zip(QUERIES, responses, strict=True):
        assert response.status_code == 200, response.text
        batched, single = response.json(), alone[query]
        assert batched["dataset_version"] == single["dataset_version"] and batched["mode"] == single["mode"]
        assert [h["chunk_id"] for h in batched["hits"]] == [h["chunk_id"] for h in single["hits"]], query
        assert [h["score"] for h in batched["hits"]] == pytest.approx([h["score"] for h in single["hits"]], abs=1e-4)
    assert len({alone[q]["hits"][0]["chunk_id"] for q in QUERIES}) > 3  # really different answers


def test_several_queries_of_one_request_are_batched_with_others(counted):
    api, backend, model = counted
    model.hold()
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(post, api, QUERIES[0])
        assert model.entered.wait(60)
        several = pool.submit(lambda: api.post("/v1/search", headers=bearer(READER_KEY), json={
            "dataset": "docs", "queries": QUERIES[1:4], "k": 3}))
        one = pool.submit(post, api, QUERIES[4])
        until(lambda: backend.batcher.queued() == 4)
        model.released.set()
        assert first.result().status_code == 200
        results = several.result().json()["results"]
        hits = one.result().json()["hits"]
    assert [len(call) for call in model.calls] == [1, 4]
    assert [r["query"] for r in results] == QUERIES[1:4]
    assert [r["hits"][0]["doc_id"] for r in results] == ["apt", "boot", "net"] and hits[0]["doc_id"] == "ssh"


def test_different_parameters_are_not_batched_together(counted):
    api, backend, model = counted
    model.hold()
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(post, api, QUERIES[0])
        assert model.entered.wait(60)
        filtered = pool.submit(post, api, QUERIES[1], filter={"doc_id": "net"})
        # it runs as its own batch, once Milvus Lite (one search at a time) is free: not queued behind the first
        until(lambda: len(backend.batcher._keys) == 2)
        assert backend.batcher.queued() == 0
        model.released.set()
        assert first.result().status_code == 200
        assert {h["doc_id"] for h in filtered.result().json()["hits"]} == {"net"}
    assert [len(call) for call in model.calls] == [1, 1]


@pytest.mark.parametrize(("error", "status", "detail"), [
    (ValueError("the model refused"), 400, "the model refused"),
    (MilvusUnavailableError("Milvus server at milvus:19530: searching failed"), 503, "searching failed"),
])
def test_an_error_reaches_every_request_of_the_batch(counted, error, status, detail):
    api, backend, model = counted
    model.fail = error  # raised by the batched call, after the held one
    responses = held_then_batched(api, backend, model, QUERIES[:5])
    assert responses[0].status_code == 200
    assert [r.status_code for r in responses[1:]] == [status] * 4
    assert all(detail in r.json()["detail"] for r in responses[1:])
    assert post(api, QUERIES[0]).status_code == 200  # and the service goes on
