"""Local LLM benchmark: `python -m bench.llm_local [--requests 8]`.

In one run, with the packaged SmolLM2-135M-Instruct on this machine's CPU (transformers + xgrammar):
1. load time of the weights;
2. free decoding (baseline) versus schema-constrained decoding: output tokens/s of each and their ratio
   (the cost of constrained JSON), and the share of constrained answers that validate (should be 1.0);
3. `LLMClient.generate_structured` end to end, then the same batch again: calls and cache hits, and the
   speed-up of a second materialization.
Prints one JSON object; the load average is included because shared CPUs distort every number.
"""

import argparse
import json
import os
import tempfile
import time
from typing import Literal

from pydantic import BaseModel, Field

from datamate_resources.llm import LLMResource, _response_format
from datamate_resources.storage import ObjectStore

SENTENCES = [
    "The striker scored twice and the club won the league.", "Researchers sequenced the genome of a rare frog.",
    "Parliament passed the budget after a long debate.", "The new phone has a faster chip and a bigger screen.",
    "The central bank raised interest rates again.", "The museum opened an exhibition of Roman coins.",
    "A storm closed the airport for two days.", "The band released its first album in ten years.",
]


class Topic(BaseModel):
    topic: Literal["sports", "science", "politics", "technology", "economy", "culture", "weather"]
    confidence: float = Field(ge=0, le=1)


def messages(sentence: str) -> list[tuple[str, str]]:
    return [("system", "Label the topic of the sentence. Answer in JSON."), ("user", sentence)]


def tokens_per_second(chat, sentences: list[str], **options) -> tuple[float, list[str]]:
    tokens, seconds, texts = 0, 0.0, []
    for sentence in sentences:
        started = time.perf_counter()
        reply = chat.invoke(messages(sentence), **options)
        seconds += time.perf_counter() - started
        tokens += reply.usage_metadata["output_tokens"]
        texts.append(reply.content)
    return tokens / seconds, texts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=8)
    args = parser.parse_args()
    sentences = (SENTENCES * (args.requests // len(SENTENCES) + 1))[: args.requests]
    resource = LLMResource(max_tokens=64)
    chat = resource.chat_model()
    started = time.perf_counter()
    chat.invoke("Hi", max_tokens=1)
    load_seconds = time.perf_counter() - started

    free_tps, _ = tokens_per_second(chat, sentences, max_tokens=64)
    constrained_tps, texts = tokens_per_second(chat, sentences, response_format=_response_format(Topic))
    valid = sum(1 for text in texts if _validates(text))

    with tempfile.TemporaryDirectory() as folder:
        store = ObjectStore(url=f"file://{folder}")
        first = resource.client(store)
        started = time.perf_counter()
        first.generate_structured([messages(s) for s in sentences], Topic)
        first_seconds = time.perf_counter() - started
        second = resource.client(store)
        started = time.perf_counter()
        second.generate_structured([messages(s) for s in sentences], Topic)
        second_seconds = time.perf_counter() - started

    print(json.dumps({
        "model": resource.model_name, "load_average": os.getloadavg()[0], "load_seconds": round(load_seconds, 1),
        "free_tokens_per_second": round(free_tps, 1), "constrained_tokens_per_second": round(constrained_tps, 1),
        "constrained_vs_free_ratio": round(constrained_tps / free_tps, 2),
        "constrained_valid_share": valid / len(texts),
        "first_run": {"seconds": round(first_seconds, 1), "calls": first.usage.calls,
                      "cache_hits": first.usage.cache_hits},
        "second_run": {"seconds": round(second_seconds, 3), "calls": second.usage.calls,
                       "cache_hits": second.usage.cache_hits},
        "second_run_speedup": round(first_seconds / max(second_seconds, 1e-6)),
    }, indent=1))


def _validates(text: str) -> bool:
    try:
        Topic.model_validate_json(text)
        return True
    except ValueError:
        return False


if __name__ == "__main__":
    main()
