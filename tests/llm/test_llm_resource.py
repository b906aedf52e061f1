"""The LLM resource against a real OpenAI-compatible server serving the packaged model, directly and through
a proxy that fails a share of requests; the cache in object storage; a run killed half-way resumes."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Literal

import dagster as dg
import pytest
from pydantic import BaseModel, Field

from datamate_resources.llm import LLMResource, _cache_parts
from datamate_resources.settings import Settings
from datamate_resources.storage import ObjectStore
from operators.synthesis import output_schema, resolve_template
from tests.llm.conftest import REPO, openai_resource


class Sentiment(BaseModel):
    sentiment: Literal["positive", "negative"]
    confidence: float = Field(ge=0, le=1)


SENTENCES = [
    "I love this phone, it works perfectly.", "The food was cold and the waiter was rude.",
    "What a wonderful sunny day at the beach!", "My flight was cancelled and I lost my luggage.",
    "The concert was amazing, best night ever.", "This software crashes every five minutes.",
    "Our team won the championship!", "The hotel room smelled terrible.",
    "I passed my exam with top marks.", "The package arrived broken.",
]


def requests_for(sentences: list[str]) -> list[list[tuple[str, str]]]:
    return [[("system", "Classify the sentiment of the sentence. Answer in JSON."), ("user", s)] for s in sentences]


@pytest.fixture
def store(tmp_path) -> ObjectStore:
    return ObjectStore(url=f"file://{tmp_path / 'storage'}")


def test_structured_output_counts_and_cache(llm_resource, store):
    first = llm_resource.client(store)
    results = first.generate_structured(requests_for(SENTENCES[:3]), Sentiment)

    assert all(r.ok and isinstance(r.value, Sentiment) for r in results)  # constrained decoding: valid JSON
    assert first.usage.calls == 3 and first.usage.cache_hits == 0 and first.usage.failures == 0
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    assert len(store.list("_cache", "llm")) == 3

    second = llm_resource.client(store)
    again = second.generate_structured(requests_for(SENTENCES[:3]), Sentiment)
    assert second.usage.calls == 0 and second.usage.cache_hits == 3
    assert [r.value for r in again] == [r.value for r in results]
    # Another prompt variant is another cache entry.
    third = llm_resource.client(store)
    third.generate_structured(requests_for(SENTENCES[:1]), Sentiment, cache_key_extra="v2")
    assert third.usage.calls == 1


def test_flaky_server_retries_without_loss_or_duplicates(flaky_llm_resource, flaky_llm_server, store):
    client = flaky_llm_resource.client(store)
    results = client.generate_structured(requests_for(SENTENCES), Sentiment)

    assert len(results) == len(SENTENCES) and all(r.ok for r in results), [r.error for r in results]
    assert len({r.cache_key for r in results}) == len(SENTENCES)
    assert len(store.list("_cache", "llm")) == len(SENTENCES)  # one answer stored per request, no duplicate
    fates = [entry["fate"] for entry in flaky_llm_server.requests()]
    injected = {fate for fate in fates if fate != "ok"}
    assert injected == {"429", "500", "503", "timeout", "invalid_json", "garbage_content"}, fates
    assert client.usage.failures == 0 and client.usage.retries > 0
    # Every user sentence reached the server and got an answer in the right slot.
    for sentence, result in zip(SENTENCES, results, strict=True):
        assert result.cache_key == client.cache_key(requests_for([sentence])[0], Sentiment)


def test_a_request_the_server_rejects_fails_alone(llm_resource, store):
    class Impossible(BaseModel):
        value: str = Field(pattern=r"^\p{L}+$")  # a regex class xgrammar can't enforce: the server answers 400

    client = openai_resource(llm_resource.base_url, max_retries=1).client(store)
    results = client.generate_structured(requests_for(SENTENCES[:1]), Impossible)
    assert not results[0].ok and "400" in results[0].error
    assert client.usage.failures == 1


def test_a_killed_run_resumes_from_the_cache(llm_server, tmp_path, store):
    """A worker process is killed after some answers are stored; the next run only asks for the rest."""
    script = tmp_path / "worker.py"
    script.write_text(
        "import sys\n"
        "from datamate_resources.storage import ObjectStore\n"
        "from tests.llm.conftest import openai_resource\n"
        "from tests.llm.test_llm_resource import SENTENCES, Sentiment, requests_for\n"
        f"client = openai_resource({llm_server!r}, max_concurrency=1).client(ObjectStore(url={store.url!r}))\n"
        "client.generate_structured(requests_for(SENTENCES), Sentiment)\n"
    )
    worker = subprocess.Popen([sys.executable, str(script)], cwd=REPO, start_new_session=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        while len(store.list("_cache", "llm")) < 3:
            assert worker.poll() is None, "the worker ended before it could be killed"
            time.sleep(0.1)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    stored = len(store.list("_cache", "llm"))
    assert 3 <= stored < len(SENTENCES)

    client = openai_resource(llm_server).client(store)
    results = client.generate_structured(requests_for(SENTENCES), Sentiment)
    assert all(r.ok for r in results)
    assert client.usage.cache_hits == stored and client.usage.calls == len(SENTENCES) - stored


def test_a_damaged_cache_entry_is_regenerated(llm_resource, store):
    client = llm_resource.client(store)
    (result,) = client.generate_structured(requests_for(SENTENCES[:1]), Sentiment)
    store.write_bytes(b"{truncated", *_cache_parts(result.cache_key))
    again = llm_resource.client(store)
    assert again.generate_structured(requests_for(SENTENCES[:1]), Sentiment)[0].ok
    assert again.usage.calls == 1
    assert json.loads(store.read_bytes(*_cache_parts(result.cache_key)))["value"]["sentiment"] in {"positive",
                                                                                                   "negative"}


def test_the_api_key_is_passed_by_reference_only(monkeypatch):
    monkeypatch.setenv("DATAMATE_LLM_API_KEY", "sk-test-secret")
    settings = Settings.from_env({"DATAMATE_LLM_BASE_URL": "http://127.0.0.1:9/v1", "DATAMATE_LLM_MODEL": "m"})
    resource = LLMResource.from_settings(settings)
    assert isinstance(resource.api_key, dg.EnvVar)
    assert "sk-test-secret" not in repr(resource)
    local = LLMResource.from_settings(Settings.from_env({}))
    assert local.provider == "local" and local.api_key is None


APT_CACHE = (
    "The apt-cache command can display much of the information stored in APT's internal database. This information "
    "is a sort of cache since it is gathered from the different sources listed in the sources.list file. This "
    "happens during the apt update operation.\n\nThe apt-cache command can do keyword-based package searches with "
    "apt-cache search keyword. It can also display the headers of the package's available versions with apt-cache "
    "show package. This command provides the package's description, its dependencies, the name of its maintainer, "
    "etc."
)


def test_structured_answers_stay_on_the_passage(llm_server, store):
    """Under a response_format the local model decodes with no repetition penalty. With transformers' penalty
    (1.15, over prompt and output) the passage's own words and the JSON quotes were penalized: the model ran
    strings on and answered off the passage, about a third of its words from it (nine in ten without)."""
    client = openai_resource(llm_server, max_tokens=200).client(store)
    prompt = resolve_template("qa").render(count=1, text=APT_CACHE)
    [result] = client.generate_structured([[("user", prompt)]], output_schema("qa", 1))
    assert result.ok, result.error
    written = re.findall(r"[a-z]+", " ".join(f"{p.question} {p.answer}" for p in result.value.items).lower())
    source = set(re.findall(r"[a-z]+", prompt.lower()))
    assert written and sum(word in source for word in written) / len(written) >= 0.6, result.value
