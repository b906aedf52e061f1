"""Which chunk gets which kind of request: few calls, spread over documents and kinds."""

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SynthesisRequest:
    kind: str
    chunk_id: str
    doc_id: str
    text: str


def plan_requests(
    chunks: Iterable[dict],
    kinds: Sequence[str],
    per_chunk: int,
    max_records: int,
    skip_reason: Callable[[dict], str | None] = lambda chunk: None,
) -> tuple[list[SynthesisRequest], Counter]:
    """Enough requests for `max_records` records at `per_chunk` each, and why chunks were skipped.

    Chunks are taken by position first, so the first chunk of every document comes before any second
    chunk: a small cap still covers many documents. Round r gives the j-th chunk the kind
    kinds[(j + r) % len(kinds)], so neighbouring chunks differ in kind and a chunk is asked for a second
    kind only when there are fewer usable chunks than requests.
    """
    needed = math.ceil(max_records / per_chunk)
    ordered = sorted(chunks, key=lambda chunk: (chunk["position"], chunk["doc_id"], chunk["chunk_id"]))
    usable, skipped = [], Counter()
    for chunk in ordered:
        if len(usable) == needed:
            break
        reason = skip_reason(chunk)
        if reason:
            skipped[reason] += 1
        else:
            usable.append(chunk)
    requests = [
        SynthesisRequest(kinds[(j + r) % len(kinds)], chunk["chunk_id"], chunk["doc_id"], chunk["text"])
        for r in range(len(kinds))
        for j, chunk in enumerate(usable)
    ]
    return requests[:needed], skipped
