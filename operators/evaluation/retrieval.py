"""Judging retrieval against known questions whose answers are known as text (an FAQ's answer sections).

A hit answers a question when it comes from the answer's page and shares enough of its text: the word 5-grams
they have in common, over the smaller of the two sets, reach `MIN_OVERLAP`. Measured on the smaller side, a
short answer wholly inside a large chunk counts, and so does a small chunk cut from the middle of a long answer;
a chunk that only mentions the topic does not. The judgement depends on neither the chunking nor the model, so
configurations compare on the same footing.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from operators.evaluation.metrics import tokens

SHINGLE_WORDS = 5
MIN_OVERLAP = 0.5


@dataclass(frozen=True)
class KnownQuestion:
    question: str
    answer: str
    source: str  # the end of the answer page's source_uri, e.g. "faq/library.html"


def read_questions(path: str | Path) -> list[KnownQuestion]:
    """Questions from a JSONL file, one `{question, answer, source}` object per line; errors name the line."""
    found = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                found.append(KnownQuestion(str(row["question"]), str(row["answer"]), str(row["source"])))
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path} line {number}: need a JSON object with question, answer and source "
                                 f"({type(error).__name__}: {error})") from None
    return found


def shingles(text: str, size: int = SHINGLE_WORDS) -> set[tuple[str, ...]]:
    words = tokens(text)
    if len(words) < size:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}


def overlap(passage: str, answer: str) -> float:
    """Shared word 5-grams over the smaller side's count (0 when either has none)."""
    mine, theirs = shingles(passage), shingles(answer)
    if not mine or not theirs:
        return 0.0
    return len(mine & theirs) / min(len(mine), len(theirs))


def passage(hit: dict) -> str:
    """The hit's text without the `Title > Section` line that `heading_context` puts first: that line is the
    question's context, not its answer, and would dilute the overlap of small chunks."""
    headings = hit.get("headings") or (hit.get("metadata") or {}).get("headings") or "[]"
    try:
        path = json.loads(headings) if isinstance(headings, str) else list(headings)
    except ValueError:
        path = []
    prefix = " > ".join(path) + "\n\n"
    return hit["text"].removeprefix(prefix) if path else hit["text"]


def answers(hit: dict, known: KnownQuestion, min_overlap: float = MIN_OVERLAP) -> bool:
    return (hit.get("source_uri") or "").endswith(known.source) and overlap(passage(hit), known.answer) >= min_overlap


def first_answer_rank(hits: Sequence[dict], known: KnownQuestion) -> int | None:
    """1-based rank of the first hit that answers, or None."""
    return next((rank for rank, hit in enumerate(hits, start=1) if answers(hit, known)), None)


def rank_summary(ranks: Iterable[int | None], k: int) -> dict[str, float]:
    """Hit rate at 1, 3 and k (the share of questions answered within that rank) and MRR."""
    ranks = list(ranks)
    if not ranks:
        return {"questions": 0, f"recall_at_{k}": 0.0, "mrr": 0.0}
    within = {n: sum(r is not None and r <= n for r in ranks) / len(ranks) for n in sorted({1, 3, k})}
    return {
        "questions": len(ranks),
        **{f"recall_at_{n}": share for n, share in within.items()},
        "mrr": sum(1 / r for r in ranks if r) / len(ranks),
    }
