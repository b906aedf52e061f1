"""Exact line or sentence dedup across documents: a unit already seen in an earlier document is removed."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import numpy as np
import xxhash
from pydantic import Field

from operators.base import Deduplicator, OperatorParams
from operators.registry import register

_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


@register("document_line_deduplicator")
class DocumentLineDeduplicator(Deduplicator):
    """Remove lines (or sentences) that already appeared in an earlier document, e.g. shared boilerplate."""

    class Params(OperatorParams):
        unit: Literal["line", "sentence"] = Field("line", description="Compare whole lines or sentences")
        lowercase: bool = Field(True, description="Compare lowercased units")
        min_chars: int = Field(20, ge=1, description="Shorter units (after stripping) are never removed")

    def units(self, text: str) -> list[str]:
        return text.split("\n") if self.params.unit == "line" else _SENTENCE_END.split(text)

    def unit_hash(self, unit: str) -> int | None:
        """Hash of a unit that may be removed; None for units too short to matter."""
        key = " ".join(unit.split())
        if len(key) < self.params.min_chars:
            return None
        return xxhash.xxh3_64_intdigest((key.lower() if self.params.lowercase else key).encode())

    def fingerprint(self, text: str) -> np.ndarray:
        """Distinct hashes of the text's removable units."""
        hashes = {h for h in map(self.unit_hash, self.units(text)) if h is not None}
        return np.fromiter(hashes, dtype=np.uint64, count=len(hashes))

    def fingerprint_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.fingerprint(t) for t in texts]

    def find_duplicates(self, fingerprints) -> dict[int, int]:
        """Whole documents are never duplicates here; see `first_owners` and `remove_seen`."""
        return {}

    @staticmethod
    def first_owners(fingerprints: Sequence[np.ndarray], rows: np.ndarray, rows_per_unit: bool = False
                     ) -> dict[int, int]:
        """{unit hash: first row containing it} for units found in more than one row.

        `rows` has one entry per fingerprint, or (`rows_per_unit`) one per hash of a single flat fingerprint.
        Each fingerprint holds distinct hashes, so a repeated hash means several rows.
        """
        counts = np.array([len(f) for f in fingerprints], dtype=np.int64)
        if counts.sum() == 0:
            return {}
        hashes = np.concatenate(list(fingerprints))
        owners = rows if rows_per_unit else np.repeat(rows, counts)
        order = np.lexsort((owners, hashes))
        hashes, owners = hashes[order], owners[order]
        starts = np.ones(hashes.size, dtype=bool)
        starts[1:] = hashes[1:] != hashes[:-1]
        group_sizes = np.diff(np.flatnonzero(np.append(starts, True)))
        repeated = group_sizes > 1
        return dict(zip(hashes[starts][repeated].tolist(), owners[starts][repeated].tolist(), strict=True))

    def remove_seen(self, text: str, row: int, first_owner: dict[int, int]) -> str:
        """The text without the units whose first owner is an earlier row."""
        units = self.units(text)
        kept = [u for u in units if first_owner.get(self.unit_hash(u), row) >= row]
        if len(kept) == len(units):
            return text
        return ("\n" if self.params.unit == "line" else " ").join(kept)
