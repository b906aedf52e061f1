"""The shared algorithm of document deduplicators: buckets -> candidate pairs -> verified -> components."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import numpy as np

from operators.base import Deduplicator


class BucketDeduplicator(Deduplicator):
    """A document is a duplicate when a verified chain of bucket-sharing pairs links it to an earlier document."""

    @abstractmethod
    def fingerprint_batch(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), width) array; one row per text."""

    @abstractmethod
    def bucket_keys(self, fingerprints: np.ndarray) -> np.ndarray:
        """(n, k) uint64: documents sharing a key in the same column are candidate duplicates."""

    def verify(self, first: np.ndarray, other: np.ndarray) -> np.ndarray:
        """Boolean per candidate pair (rows of fingerprints); default: every candidate is a duplicate."""
        return np.ones(len(first), dtype=bool)

    def reason(self, first: np.ndarray, other: np.ndarray) -> str:
        """Why `other` duplicates `first`, e.g. the estimated similarity."""
        return "duplicate"

    def fingerprint(self, text: str) -> np.ndarray:
        return self.fingerprint_batch([text])[0]

    def find_duplicates(self, fingerprints: Sequence[np.ndarray]) -> dict[int, int]:
        fps = np.asarray(fingerprints)
        if len(fps) == 0:
            return {}
        rows = np.arange(len(fps))
        first, other = self.candidate_pairs(fps, rows)
        keep = self.verify(fps[first], fps[other])
        return duplicate_map(first[keep], other[keep])

    def candidate_pairs(self, fps: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate (first row, other row) pairs among `rows` (ids) whose fingerprints are `fps`."""
        keys = self.bucket_keys(fps)
        n_cols = keys.shape[1]
        salted = keys ^ (np.arange(n_cols, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))[None, :]
        return bucket_edges(salted.ravel(), np.repeat(rows, n_cols))


def bucket_edges(keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct pairs (smallest row of the bucket, other row) for every bucket of equal keys."""
    order = np.lexsort((rows, keys))
    keys, rows = keys[order], rows[order]
    new_bucket = np.ones(keys.size, dtype=bool)
    new_bucket[1:] = keys[1:] != keys[:-1]
    bucket_first = rows[new_bucket][np.cumsum(new_bucket) - 1]
    member = ~new_bucket & (rows != bucket_first)
    pairs = np.unique(np.stack([bucket_first[member], rows[member]], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def duplicate_map(first: np.ndarray, other: np.ndarray, protected: set[int] | None = None) -> dict[int, int]:
    """{duplicate row: kept row}: the smallest row of each connected component is kept.

    Rows are arbitrary non-negative ids. `protected` rows (already published) are never reported.
    """
    if first.size == 0:
        return {}
    from scipy.sparse import coo_matrix, csgraph  # why here: scipy takes seconds to import (`datamate ops list`)

    ids, dense = np.unique(np.concatenate([first, other]), return_inverse=True)
    n = ids.size
    graph = coo_matrix((np.ones(first.size, dtype=np.int8), (dense[: first.size], dense[first.size:])),
                       shape=(n, n))
    _, labels = csgraph.connected_components(graph, directed=False)
    smallest = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(smallest, labels, np.arange(n))  # ids are sorted: smallest dense index = smallest row
    kept = ids[smallest[labels]]
    protected = protected or set()
    return {int(r): int(k) for r, k in zip(ids, kept, strict=True) if r != k and int(r) not in protected}
