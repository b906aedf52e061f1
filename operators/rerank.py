"""LLM re-ranking of search hits (no dagster): one chat-model call per query orders its candidate passages.

Listwise: the prompt numbers the candidates (each cut to `passage_chars`) and asks for `{"ranking": [numbers]}`,
most relevant first (a JSON schema, so servers with constrained decoding and the packaged local model only emit
that shape). The schema bounds the answer to at most n numbers from 1 to n (n candidates), so constrained
decoding always closes the list: unbounded, the packaged model emitted numbers until its token limit. Passages
the answer leaves out follow in their search order. Re-ranking never fails a search: a model error, a budget
stop, or an answer naming no passage or a passage that does not exist keeps the search order, and
`Reranked.note` says why.

The model is called only through `generate(prompts, schema) -> answers` (each answer has `.ok`, `.value` and
`.error`), the LLM resource's batch call `LLMClient.generate_structured` or anything of the same shape.
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BaseModel, Field, create_model

log = logging.getLogger("datamate.rerank")

CANDIDATES_PER_HIT = 3  # candidates fetched per hit returned
MAX_CANDIDATES = 20  # per query, so one prompt stays small
PASSAGE_CHARS = 600  # of each candidate in the prompt

Generate = Callable[[Sequence[str], type[BaseModel]], Sequence[Any]]


@lru_cache(maxsize=64)
def ranking_schema(count: int) -> type[BaseModel]:
    """`RerankOrder` for `count` passages: `ranking`, 1 to `count` numbers, each from 1 to `count` (xgrammar
    compiles all four bounds into the grammar). Repeats stay possible: JSON schema's uniqueItems is not enforced."""
    number = Annotated[int, Field(ge=1, le=count)]
    return create_model("RerankOrder", ranking=(list[number], Field(
        min_length=1, max_length=count, description="Passage numbers, the most relevant to the question first")))


@dataclass
class Reranked:
    hits: list[dict]
    reordered: bool  # the hits come in the model's order (False: in the search order)
    note: str | None = None  # why the search order was kept


def rerank_prompt(query: str, hits: Sequence[dict], passage_chars: int = PASSAGE_CHARS) -> str:
    passages = "\n\n".join(f"[{number}] {' '.join(hit['text'].split())[:passage_chars]}"
                           for number, hit in enumerate(hits, start=1))
    return (f"Question: {query}\n\nPassages:\n{passages}\n\n"
            f"Which passages answer the question? Reply with JSON {{\"ranking\": [...]}}: the passage numbers "
            f"(1 to {len(hits)}), the passage that best answers the question first.")


def apply_order(hits: Sequence[dict], ranking: Sequence[int]) -> list[dict]:
    """The hits in `ranking`'s order (1-based numbers, repeats ignored), the ones it leaves out after them in
    their order. Raises ValueError for an empty ranking or a number that names no hit."""
    if not ranking:
        raise ValueError("the model ranked no passage")
    wrong = [number for number in ranking if not 1 <= number <= len(hits)]
    if wrong:
        raise ValueError(f"the model ranked passages {wrong[:5]}, there are {len(hits)}")
    order = list(dict.fromkeys(number - 1 for number in ranking))
    order += [i for i in range(len(hits)) if i not in set(order)]
    return [hits[i] for i in order]


class LLMReranker:
    """Re-orders each query's candidates with one chat-model call per query (one batch per candidate count)."""

    def __init__(self, generate: Generate, model_name: str = "", *, max_candidates: int = MAX_CANDIDATES,
                 passage_chars: int = PASSAGE_CHARS, logger: logging.Logger | None = None):
        self.generate = generate
        self.model_name = model_name
        self.max_candidates = max_candidates
        self.passage_chars = passage_chars
        self.log = logger or log

    def candidates(self, k: int) -> int:
        """How many hits to fetch per query to return k re-ranked: 3k, at most `max_candidates` (and at least k)."""
        return max(k, min(CANDIDATES_PER_HIT * k, self.max_candidates))

    def rerank(self, queries: Sequence[str], found: Sequence[list[dict]], k: int) -> list[Reranked]:
        """Per query, its top k hits in the model's order, `rank` renumbered and `search_rank` the rank before.
        The model sees the first `max_candidates` hits (a prompt must fit a small model's context); any further
        hits (k above it) follow them in their search order."""
        # One `generate` batch per candidate count (usually one batch): the schema bounds the answer by the count.
        shown = [min(len(hits), self.max_candidates) for hits in found]
        by_count: dict[int, list[int]] = {}
        for i, count in enumerate(shown):
            if count > 1:
                by_count.setdefault(count, []).append(i)
        answers: list[Any] = [None] * len(found)
        failures: dict[int, str] = {}
        for count, asked in by_count.items():
            try:
                replies = self.generate(
                    [rerank_prompt(queries[i], found[i][:count], self.passage_chars) for i in asked],
                    ranking_schema(count))
                for i, reply in zip(asked, replies, strict=True):
                    answers[i] = reply
            except Exception as error:  # noqa: BLE001 - a re-ranker must never fail the search
                failure = f"the re-ranking model failed: {type(error).__name__}: {str(error)[:200]}"
                failures.update(dict.fromkeys(asked, failure))
        results = []
        for i, (query, hits, answer) in enumerate(zip(queries, found, answers, strict=True)):
            note = None
            ordered = list(hits)
            if shown[i] > 1:
                if i in failures:
                    note = failures[i]
                elif not answer.ok:
                    note = f"the re-ranking model gave no answer: {answer.error}"
                else:
                    try:
                        ordered = apply_order(hits[: shown[i]], answer.value.ranking) + list(hits[shown[i] :])
                    except ValueError as error:
                        note = f"unusable re-ranking answer: {error}"
            if note:
                self.log.warning("re-ranking %r kept the search order: %s", query[:80], note)
            top = [{**hit, "rank": rank, "search_rank": hit["rank"]} for rank, hit in enumerate(ordered[:k], start=1)]
            results.append(Reranked(top, reordered=note is None and shown[i] > 1, note=note))
        return results
