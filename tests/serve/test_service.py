"""Every endpoint of the retrieval service, auth, rate limit and bad input, on the real app over Milvus Lite
knowledge bases built with the packaged model."""

import logging

import pytest
from fastapi.testclient import TestClient

from datamate.api_keys import parse_api_keys
from datamate.service import Backend, create_app
from tests.serve.conftest import HASHED_KEY, KEYS_TEXT, READER_KEY, SCOPED_KEY, SOURCE_VERSION, bearer

SSH = "Which port does the SSH server listen on?"


def search(api: TestClient, key: str = READER_KEY, **body):
    return api.post("/v1/search", json={"dataset": "docs", "query": SSH, **body}, headers=bearer(key))


def test_health_readiness_and_docs(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["backend"].startswith("Milvus Lite at ")
    assert api.get("/docs").status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/v1/search", "/v1/datasets", "/healthz", "/readyz"} <= set(paths)


def test_datasets_lists_what_the_key_may_read(api):
    listed = api.get("/v1/datasets", headers=bearer(READER_KEY))
    assert listed.status_code == 200
    by_name = {d["name"]: d for d in listed.json()}
    assert set(by_name) == {"docs", "other"}
    docs = by_name["docs"]
    assert docs["chunks"] > 8 and docs["embedding_model"] == "all-MiniLM-L6-v2-onnx-qint8" and docs["hybrid"]
    assert docs["source_version"] == SOURCE_VERSION and docs["dimension"] == 384
    scoped = api.get("/v1/datasets", headers=bearer(SCOPED_KEY)).json()
    assert [d["name"] for d in scoped] == ["docs"]


def test_search_returns_readable_hits(api):
    response = search(api, k=3)
    assert response.status_code == 200
    body = response.json()
    assert body["dataset"] == "docs" and body["dataset_version"] == SOURCE_VERSION and body["mode"] == "hybrid"
    hits = body["hits"]
    assert len(hits) == 3 and [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["doc_id"] == "ssh" and "port 22" in hits[0]["text"]
    assert set(hits[0]) == {"chunk_id", "doc_id", "text", "score", "rank", "rank_score", "search_rank",
                            "source_uri", "title", "metadata"}
    assert hits[0]["search_rank"] is None and body["rerank"] is None  # no re-ranking asked
    assert hits[0]["source_uri"] == "file:///ssh.txt" and set(hits[0]["metadata"]) == {"position", "headings"}
    # score: the dense cosine, comparable across queries; rank_score: the RRF score that ordered the hits.
    assert 0.3 < hits[0]["score"] <= 1.0 and hits[0]["rank_score"] < 0.05
    dense = search(api, k=3, mode="dense").json()
    assert dense["mode"] == "dense"
    same = next(h for h in dense["hits"] if h["chunk_id"] == hits[0]["chunk_id"])
    assert same["score"] == pytest.approx(hits[0]["score"], abs=1e-3)
    unrelated = search(api, k=1, query="What is the capital of Peru?").json()["hits"][0]
    assert unrelated["score"] < hits[0]["score"] - 0.2


def test_several_queries_and_sparse_mode(api):
    response = api.post("/v1/search", headers=bearer(READER_KEY), json={
        "dataset": "docs", "queries": [SSH, "How do I add a package with apt install?"], "k": 2, "mode": "sparse"})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["query"] for r in results] == [SSH, "How do I add a package with apt install?"]
    assert results[0]["hits"][0]["doc_id"] == "ssh" and results[1]["hits"][0]["doc_id"] == "apt"
    assert results[1]["hits"][0]["rank_score"] > 1.0  # a BM25 score


def test_per_doc_keeps_one_document_from_filling_the_top_k(api):
    plain = [h["doc_id"] for h in search(api, k=4).json()["hits"]]
    assert len(set(plain)) < len(plain)  # the SSH document has several matching chunks
    grouped = [h["doc_id"] for h in search(api, k=4, per_doc=1).json()["hits"]]
    assert grouped[0] == "ssh" and sorted(grouped) == ["apt", "boot", "net", "ssh"]


def test_filter_on_metadata(api):
    hits = search(api, k=5, filter={"doc_id": "apt"}).json()["hits"]
    assert hits and {h["doc_id"] for h in hits} == {"apt"}
    hits = search(api, k=10, filter={"doc_id": ["apt", "net"], "source_uri": "file:///net.txt"}).json()["hits"]
    assert hits and {h["doc_id"] for h in hits} == {"net"}


def test_auth_no_key_wrong_key_scoped_key_hashed_key(api):
    missing = api.post("/v1/search", json={"dataset": "docs", "query": SSH})
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert api.get("/v1/datasets").status_code == 401
    assert search(api, key="not-a-key-0123456789").status_code == 401
    assert api.post("/v1/search", json={"dataset": "docs", "query": SSH},
                    headers={"Authorization": f"Basic {READER_KEY}"}).status_code == 401
    assert search(api, key=SCOPED_KEY).status_code == 200
    forbidden = search(api, key=SCOPED_KEY, dataset="other")
    assert forbidden.status_code == 403 and "'scoped' may not read dataset 'other'" in forbidden.json()["detail"]
    assert search(api, key=HASHED_KEY, dataset="other", query="mail configuration").status_code == 200


def test_rate_limit_per_key_with_retry_after(lite, embeddings, caplog):
    app = create_app(Backend(lite, embeddings), parse_api_keys(KEYS_TEXT, "test keys"), rate=0.2, burst=2)
    with TestClient(app) as api, caplog.at_level(logging.INFO, logger="datamate.serve"):
        assert [api.get("/v1/datasets", headers=bearer(READER_KEY)).status_code for _ in range(2)] == [200, 200]
        limited = api.get("/v1/datasets", headers=bearer(READER_KEY))
        assert limited.status_code == 429 and "'reader'" in limited.json()["detail"]
        assert 1 <= int(limited.headers["Retry-After"]) <= 5
        assert api.get("/v1/datasets", headers=bearer(SCOPED_KEY)).status_code == 200  # its own bucket
        search(api, key="not-a-key-0123456789")
    assert "rate limit: key reader" in caplog.text
    for key in (READER_KEY, SCOPED_KEY, "not-a-key-0123456789"):
        assert key not in caplog.text


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"dataset": "nope"}, 404, "dataset 'nope' has no knowledge base; known: ['docs', 'other']"),
    ({"dataset": "bad name!"}, 400, "dataset: String should match pattern"),
    ({"query": ""}, 400, "query: the query is empty"),
    ({"query": "   "}, 400, "query: the query is empty"),
    ({"query": "x" * 2001}, 400, "2001 characters, more than the 2000 allowed"),
    ({"query": None, "queries": []}, 400, "queries: List should have at least 1 item"),
    ({"queries": [SSH]}, 400, "give exactly one of `query`"),
    ({"query": None}, 400, "give exactly one of `query`"),
    ({"k": 0}, 400, "k: Input should be greater than or equal to 1"),
    ({"k": 101}, 400, "k: Input should be less than or equal to 100"),
    ({"k": "five"}, 400, "k: Input should be a valid integer"),
    ({"mode": "fuzzy"}, 400, "mode: Input should be 'hybrid', 'dense' or 'sparse'"),
    ({"filter": {"author": "x"}}, 400, "filter field 'author' is not one of"),
    ({"filter": {"position": "one"}}, 400, "filter field 'position' takes a int"),
    ({"filter": {"doc_id": []}}, 400, "filter field 'doc_id' takes a str or a non-empty list"),
    ({"filter": ["doc_id"]}, 400, "filter: Input should be a valid dictionary"),
    ({"per_doc": 0}, 400, "per_doc: Input should be greater than or equal to 1"),
])
def test_bad_input_is_a_clear_4xx(api, body, status, message):
    response = search(api, **body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_unknown_dataset_lists_only_datasets_in_scope(api):
    response = search(api, key=HASHED_KEY, dataset="missing")
    assert response.status_code == 403  # outside the key's scope: its existence is not revealed either
    response = api.post("/v1/search", json={"dataset": "nope", "query": SSH}, headers=bearer(READER_KEY))
    assert response.json()["detail"].endswith("known: ['docs', 'other']")


def test_bad_json(api):
    response = api.post("/v1/search", content=b'{"dataset": "docs", "query": ', headers={
        **bearer(READER_KEY), "Content-Type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["detail"]
