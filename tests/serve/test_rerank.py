"""LLM re-ranking (operators/rerank.py) through the LLM resource against the scripted OpenAI-compatible endpoint
(it answers a re-ranking prompt with the passages in reverse order, or with a passage that does not exist when
the question says "unanswerable"), in `KnowledgeBase.search` and in the service; the bounded answer schema, and
one answer of the packaged local model."""

import json
from types import SimpleNamespace

import pytest
import xgrammar
from fastapi.testclient import TestClient
from pydantic import ValidationError

from datamate.api_keys import parse_api_keys
from datamate.rerank import reranker_from_env
from datamate.service import Backend, create_app
from datamate_resources.llm import LLMResource
from datamate_resources.milvus import KnowledgeBase
from operators.rerank import LLMReranker, apply_order, ranking_schema
from tests.llm.conftest import scripted  # noqa: F401 - the fixture
from tests.serve.conftest import KEYS_TEXT, READER_KEY, bearer

SSH = "Which port does the SSH server listen on?"


def scripted_reranker(base_url: str, **overrides) -> LLMReranker:
    resource = LLMResource(**{"provider": "openai", "base_url": base_url, "model": "scripted", "max_retries": 0,
                              "request_timeout": 10.0, **overrides})
    return LLMReranker(lambda prompts, schema: resource.client().generate_structured(prompts, schema), "scripted")


def hits(n: int) -> list[dict]:
    return [{"chunk_id": f"c{i}", "text": f"passage {i}", "rank": i} for i in range(1, n + 1)]


def test_apply_order():
    assert [h["chunk_id"] for h in apply_order(hits(4), [3, 1, 3])] == ["c3", "c1", "c2", "c4"]
    for bad in ([], [0], [5]):
        with pytest.raises(ValueError):
            apply_order(hits(4), bad)


def grammar_accepts(schema: dict, text: str) -> bool:
    """Whether the grammar xgrammar compiles from `schema` (as the local model's decoding does) accepts `text`."""
    compiled = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo([])).compile_json_schema(json.dumps(schema),
                                                                                       any_whitespace=False)
    matcher = xgrammar.GrammarMatcher(compiled, terminate_without_stop_token=True)
    return matcher.accept_string(text) and matcher.is_terminated()


def test_the_answer_schema_bounds_the_list_and_the_numbers():
    """Unbounded, the packaged model emitted numbers until its token limit; constrained decoding now has to close
    the list after at most n numbers of 1..n. One `generate` call per candidate count."""
    schemas = []

    def recording(prompts, schema):
        schemas.append((len(prompts), schema))
        return [SimpleNamespace(ok=True, value=schema(ranking=[2]), error=None)] * len(prompts)

    results = LLMReranker(recording).rerank(["a?", "b?", "c?"], [hits(4), hits(12), hits(4)], k=3)
    assert [(count, s.model_json_schema()["properties"]["ranking"]["maxItems"]) for count, s in schemas] == [
        (2, 4), (1, 12)]
    assert all(r.reordered and r.hits[0]["chunk_id"] == "c2" for r in results)
    schema = ranking_schema(4).model_json_schema()
    assert grammar_accepts(schema, '{"ranking": [4, 1, 3, 2]}') and grammar_accepts(schema, '{"ranking": [2, 2]}')
    for unbounded in ('{"ranking": [1, 2, 3, 4, 1]}', '{"ranking": [5]}', '{"ranking": [0]}', '{"ranking": []}'):
        assert not grammar_accepts(schema, unbounded)
        with pytest.raises(ValidationError):  # a server that ignores the schema gets its answer rejected
            ranking_schema(4).model_validate_json(unbounded)


def test_the_model_sees_at_most_max_candidates_and_the_rest_follow_in_search_order():
    """k = 25 asks for 25 candidates; a prompt of 20 keeps a small model's context (SmolLM2: 8k tokens)."""
    shown = []

    def recording(prompts, schema):
        shown.append((prompts[0].count("\n["), schema.model_json_schema()["properties"]["ranking"]["maxItems"]))
        return [SimpleNamespace(ok=True, value=schema(ranking=[20, 2]), error=None)]

    [result] = LLMReranker(recording, max_candidates=20).rerank(["a?"], [hits(25)], k=25)
    assert shown == [(20, 20)]
    assert [h["chunk_id"] for h in result.hits] == ["c20", "c2", "c1", *[f"c{i}" for i in range(3, 20)],
                                                    *[f"c{i}" for i in range(21, 26)]]


def test_the_packaged_local_model_answers_a_ranking():
    """The real packaged model in process: its answer parses (~30 s on an idle machine, mostly loading it)."""
    resource = LLMResource(provider="local", max_retries=0)
    client = resource.client()
    passages = ["Apache serves web pages on port 80.", "The SSH server listens on port 22 by default.",
                "Bananas are yellow."]
    found = [{"chunk_id": f"c{i}", "text": text, "rank": i} for i, text in enumerate(passages, start=1)]
    [result] = LLMReranker(lambda prompts, schema: client.generate_structured(prompts, schema)).rerank(
        [SSH], [found], k=3)
    assert result.reordered and result.note is None
    assert sorted(h["chunk_id"] for h in result.hits) == ["c1", "c2", "c3"]
    assert client.usage.calls == 1 and client.usage.output_tokens < 40, client.usage


def test_rerank_reorders_as_the_model_says(scripted):  # noqa: F811
    reranker = scripted_reranker(scripted.base_url)
    assert reranker.candidates(5) == 15 and reranker.candidates(10) == 20 and reranker.candidates(50) == 50
    [one, single] = reranker.rerank(["Which port?", "Alone?"], [hits(6), hits(1)], k=3)
    assert [h["chunk_id"] for h in one.hits] == ["c6", "c5", "c4"]
    assert [h["rank"] for h in one.hits] == [1, 2, 3] and [h["search_rank"] for h in one.hits] == [6, 5, 4]
    assert one.reordered and one.note is None
    assert [h["chunk_id"] for h in single.hits] == ["c1"] and not single.reordered and single.note is None
    assert scripted.calls() == 1  # one call per query with more than one candidate


def test_bad_answer_or_failed_model_keeps_the_search_order(scripted):  # noqa: F811
    [bad] = scripted_reranker(scripted.base_url).rerank(["An unanswerable question?"], [hits(4)], k=3)
    assert [h["chunk_id"] for h in bad.hits] == ["c1", "c2", "c3"] and not bad.reordered
    # [9] of 4 passages breaks the schema's bounds: the client rejects the answer
    assert "no answer: invalid output: ranking.0: Input should be less than or equal to 4" in bad.note
    # nothing listens there: the client's error becomes the note, the search order stays
    [down] = scripted_reranker("http://127.0.0.1:9/v1").rerank(["Which port?"], [hits(4)], k=2)
    assert [h["chunk_id"] for h in down.hits] == ["c1", "c2"] and "no answer" in down.note

    def broken(prompts, schema):
        raise RuntimeError("no model")

    [raised] = LLMReranker(broken).rerank(["Which port?"], [hits(3)], k=3)
    assert [h["chunk_id"] for h in raised.hits] == ["c1", "c2", "c3"] and "RuntimeError: no model" in raised.note


def test_knowledge_base_hits_are_reranked(lite, embeddings, scripted):  # noqa: F811
    reranker = scripted_reranker(scripted.base_url)
    with lite.get_client() as client:
        knowledge_base = KnowledgeBase(client, "docs", embeddings.get_embeddings(), embeddings.model_name)
        candidates = knowledge_base.search([SSH], k=reranker.candidates(3))[0]
    [result] = reranker.rerank([SSH], [candidates], 3)
    reranked = result.hits
    assert len(candidates) > 3
    assert [h["chunk_id"] for h in reranked] == [h["chunk_id"] for h in reversed(candidates)][:3]
    assert [h["search_rank"] for h in reranked] == [len(candidates), len(candidates) - 1, len(candidates) - 2]


def test_service_reranks_on_request(lite, embeddings, scripted):  # noqa: F811
    app = create_app(Backend(lite, embeddings), parse_api_keys(KEYS_TEXT, "test keys"), rate=1000, burst=1000,
                     reranker=scripted_reranker(scripted.base_url))
    with TestClient(app) as api:
        plain = api.post("/v1/search", json={"dataset": "docs", "query": SSH, "k": 9}, headers=bearer(READER_KEY))
        reranked = api.post("/v1/search", json={"dataset": "docs", "query": SSH, "k": 3, "rerank": True},
                            headers=bearer(READER_KEY))
        several = api.post("/v1/search", json={"dataset": "docs", "queries": [SSH, "unanswerable: which port?"],
                                               "k": 2, "rerank": True}, headers=bearer(READER_KEY))
    assert plain.status_code == reranked.status_code == several.status_code == 200, reranked.text
    candidates = [h["chunk_id"] for h in plain.json()["hits"]]
    body = reranked.json()
    assert [h["chunk_id"] for h in body["hits"]] == candidates[::-1][:3]
    assert body["hits"][0]["search_rank"] == len(candidates) and body["hits"][0]["rank"] == 1
    assert body["rerank"] == {"model": "scripted", "reordered": 1, "kept": []}
    assert plain.json()["rerank"] is None and plain.json()["hits"][0]["search_rank"] is None
    info = several.json()["rerank"]
    assert info["reordered"] == 1 and len(info["kept"]) == 1 and "unanswerable" in info["kept"][0]
    assert [h["rank"] for h in several.json()["results"][1]["hits"]] == [1, 2]


def test_service_rejects_rerank_without_a_model(api, monkeypatch):
    refused = api.post("/v1/search", json={"dataset": "docs", "query": SSH, "rerank": True},
                       headers=bearer(READER_KEY))
    assert refused.status_code == 400 and "DATAMATE_RERANK_LLM=1" in refused.json()["detail"]
    monkeypatch.delenv("DATAMATE_RERANK_LLM", raising=False)
    assert reranker_from_env() is None


def test_search_command_reranks_only_when_configured(lite, scripted, monkeypatch, capsys, tmp_path):  # noqa: F811
    from datamate_assets.cli import main

    monkeypatch.setenv("DATAMATE_HOME", str(tmp_path))
    monkeypatch.setenv("DATAMATE_MILVUS_URI", lite.path)
    monkeypatch.delenv("DATAMATE_RERANK_LLM", raising=False)
    assert main(["search", SSH, "--dataset", "docs", "--rerank"]) == 2
    assert "set DATAMATE_RERANK_LLM=1" in capsys.readouterr().err
    assert main(["search", SSH, "--dataset", "docs", "--json", "--k", "9"]) == 0
    candidates = [hit["chunk_id"] for hit in json.loads(capsys.readouterr().out)["hits"]]
    monkeypatch.setenv("DATAMATE_RERANK_LLM", "1")
    monkeypatch.setenv("DATAMATE_LLM_BASE_URL", scripted.base_url)
    monkeypatch.setenv("DATAMATE_LLM_MODEL", "scripted")
    assert main(["search", SSH, "--dataset", "docs", "--json", "--k", "3", "--rerank"]) == 0
    assert [hit["chunk_id"] for hit in json.loads(capsys.readouterr().out)["hits"]] == candidates[::-1][:3]
