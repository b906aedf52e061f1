"""Vectorized MinHash signatures and LSH banding (plain numpy, no per-permutation Python loop).

Signatures use one-permutation hashing with optimal densification (Shrivastava, ICML 2017): every shingle
is hashed once (vectorized polynomial hash of its tokens), its hash picks one of `num_permutations` bins and
the bin keeps the minimum. Empty bins borrow from other bins along a fixed random probe order, so two
documents collide in a bin with probability equal to their Jaccard similarity, as with classic k-permutation
MinHash, at O(shingles) cost instead of O(shingles x permutations).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex
from pydantic import Field

from operators.base import OperatorParams
from operators.dedup.buckets import BucketDeduplicator
from operators.registry import register

TOKENIZATIONS = ("space", "punctuation", "character")
_PUNCTUATION = regex.compile(r"\p{P}")
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_POLY = np.uint64(0x9E3779B97F4A7C15)
_POLY_INVERSE = np.uint64(pow(0x9E3779B97F4A7C15, -1, 1 << 64))
_LOW32 = np.uint64(0xFFFFFFFF)
EMPTY = np.uint32(0xFFFFFFFF)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: spreads polynomial combinations over all 64 bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def _hash_byte_ranges(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Hash every byte range data[offsets[i]:offsets[i+1]] at once (no Python loop over tokens).

    Polynomial hash sum((b_k + 1) * M^(end-1-k)) mod 2^64 summed per range with reduceat, then mixed.
    """
    starts, ends = offsets[:-1], offsets[1:]
    lengths = ends - starts
    if data.size == 0:
        return mix64(lengths.astype(np.uint64))
    max_len = int(lengths.max())
    powers = np.cumprod(np.full(max_len, _POLY, dtype=np.uint64)) * _POLY_INVERSE  # M^0 .. M^(max_len-1)
    exponent = np.repeat(ends, lengths) - 1 - np.arange(data.size)
    terms = (data.astype(np.uint64) + np.uint64(1)) * powers[exponent]
    sums = np.add.reduceat(terms, np.minimum(starts, data.size - 1))
    body = np.where(lengths > 0, sums, np.uint64(0))
    return mix64(body ^ lengths.astype(np.uint64))


def optimal_param(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5):
    """(bands, rows) minimizing weighted false-positive/negative area; same rule as datasketch/Data-Juicer.

    The areas are integrals of polynomials of degree <= num_perm, which Gauss-Legendre quadrature with
    num_perm/2 + 1 nodes computes exactly, for every (bands, rows) at once (scipy's adaptive `quad` per pair,
    as datasketch does, took seconds and made `datamate validate` slow)."""
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 1)
    pairs = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], dtype=np.float64)
    bands, rows = pairs[:, :1], pairs[:, 1:]

    def area(low: float, high: float, collision: bool) -> np.ndarray:
        s = (high - low) / 2 * nodes + (high + low) / 2
        miss = (1 - s**rows) ** bands  # probability that a pair of similarity s shares no band
        return (1 - miss if collision else miss) @ weights * (high - low) / 2

    error = area(0.0, threshold, True) * fp_weight + area(threshold, 1.0, False) * fn_weight
    bands_rows = pairs[int(np.argmin(error))]
    return int(bands_rows[0]), int(bands_rows[1])


@dataclass(frozen=True)
class MinHasher:
    num_permutations: int = 256
    window_size: int = 5
    tokenization: str = "space"
    lowercase: bool = True
    ignore_pattern: str | None = None
    seed: int = 42

    def __post_init__(self):
        if self.tokenization == "sentencepiece":
            raise ValueError("tokenization 'sentencepiece' needs a downloaded model; use space, punctuation or "
                             "character")
        if self.tokenization not in TOKENIZATIONS:
            raise ValueError(f"tokenization must be one of {TOKENIZATIONS}, got {self.tokenization!r}")
        if self.num_permutations < 1 or self.window_size < 1:
            raise ValueError("num_permutations and window_size must be positive")

    @cached_property
    def _ignore(self):
        return regex.compile(self.ignore_pattern) if self.ignore_pattern else None

    @cached_property
    def _probe_order(self) -> np.ndarray:
        """Row i: a random order of all bins, the sequence an empty bin i borrows along."""
        rng = np.random.default_rng(self.seed)
        return np.argsort(rng.random((self.num_permutations, self.num_permutations)), axis=1)

    def normalize(self, text: str) -> str:
        if self.lowercase:
            text = text.lower()
        return self._ignore.sub("", text) if self._ignore is not None else text

    def token_hashes(self, texts) -> tuple[np.ndarray, np.ndarray]:
        """64-bit hashes of every token of every text (flat) and the number of tokens per text."""
        normalized = [self.normalize(t) for t in texts]
        if self.tokenization == "character":
            codes = [np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32) for t in normalized]
            lengths = np.fromiter((c.size for c in codes), dtype=np.int64, count=len(codes))
            flat = np.concatenate(codes).astype(np.uint64) if codes else np.zeros(0, np.uint64)
            return mix64(flat), lengths
        strings = pa.array(normalized, type=pa.large_string())
        if self.tokenization == "space":  # Data-Juicer splits on ' ' only and drops empty tokens
            tokens = pc.split_pattern(strings, " ")
        else:
            tokens = pc.split_pattern_regex(strings, r"\p{P}")
        flat_tokens = tokens.flatten()
        token_offsets = np.frombuffer(flat_tokens.buffers()[1], dtype=np.int64)[: len(flat_tokens) + 1]
        hashes = _hash_byte_ranges(
            np.frombuffer(flat_tokens.buffers()[2] or b"", dtype=np.uint8), token_offsets
        )
        per_text = np.diff(tokens.offsets.to_numpy())
        if self.tokenization == "space":
            keep = np.diff(token_offsets) > 0
            owner = np.repeat(np.arange(len(texts)), per_text)
            hashes, per_text = hashes[keep], np.bincount(owner[keep], minlength=len(texts))
        return hashes, per_text.astype(np.int64)

    def shingle_hashes(self, texts) -> tuple[np.ndarray, np.ndarray]:
        """64-bit hashes of all window_size-token shingles of all texts, and the owning text's index.

        Shingles are polynomial combinations of token hashes, computed for the whole batch at once.
        A text with fewer tokens than the window is one shingle of all its tokens.
        """
        flat, lengths = self.token_hashes(texts)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        w = self.window_size
        n_shingles = np.where(lengths > 0, np.maximum(lengths - w + 1, 1), 0)
        owner = np.repeat(np.arange(len(texts)), n_shingles)
        index_in_text = np.arange(owner.size) - np.repeat(np.cumsum(n_shingles) - n_shingles, n_shingles)
        first = starts[owner] + index_in_text
        last = ends[owner]  # tokens past a text's end do not count (short texts)
        acc = np.zeros(owner.size, dtype=np.uint64)
        for j in range(w):
            pos = first + j
            inside = pos < last
            acc = np.where(inside, acc * _POLY + flat[np.minimum(pos, max(flat.size - 1, 0))], acc)
        return mix64(acc ^ np.uint64(self.seed)), owner

    def signatures(self, texts) -> np.ndarray:
        """(len(texts), num_permutations) uint32 signatures; a text without tokens gets all EMPTY."""
        n, p = len(texts), self.num_permutations
        hashes, owner = self.shingle_hashes(texts)
        bins = ((hashes >> np.uint64(32)) * np.uint64(p)) >> np.uint64(32)
        cells = owner * p + bins.astype(np.int64)
        sig = np.full(n * p, EMPTY, dtype=np.uint32)
        np.minimum.at(sig, cells, (hashes & _LOW32).astype(np.uint32))
        filled = np.zeros(n * p, dtype=bool)
        filled[cells] = True
        has_tokens = np.bincount(owner, minlength=n) > 0
        return self._densify(sig.reshape(n, p), filled.reshape(n, p), has_tokens)

    def _densify(self, sig, filled, has_tokens):
        p = self.num_permutations
        sig, filled = sig.ravel(), filled.ravel()
        empty = np.flatnonzero(~filled & np.repeat(has_tokens, p))
        out = sig.copy()
        probe = self._probe_order
        for step in range(p):
            if empty.size == 0:
                break
            bins = empty % p
            source = empty - bins + probe[bins, step]
            found = filled[source]
            out[empty[found]] = sig[source[found]]
            empty = empty[~found]
        return out.reshape(-1, p)


def band_hashes(signatures: np.ndarray, num_bands: int, rows_per_band: int) -> np.ndarray:
    """(n, num_bands) uint64: one hash per band of rows_per_band signature values."""
    if num_bands * rows_per_band > signatures.shape[1]:
        raise ValueError(
            f"num_bands * num_rows_per_band = {num_bands * rows_per_band} exceeds "
            f"num_permutations = {signatures.shape[1]}"
        )
    bands = signatures[:, : num_bands * rows_per_band].reshape(len(signatures), num_bands, rows_per_band)
    acc = np.arange(num_bands, dtype=np.uint64)[None, :].repeat(len(signatures), axis=0)  # band id salts
    for j in range(rows_per_band):
        acc = acc * _POLY + bands[:, :, j].astype(np.uint64)
    return mix64(acc)


def estimated_jaccard(signatures: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (signatures[a] == signatures[b]).mean(axis=1)


@register("document_minhash_deduplicator")
class DocumentMinhashDeduplicator(BucketDeduplicator):
    """Near-duplicate documents by MinHash + LSH over word or character shingles (Jaccard threshold)."""

    class Params(OperatorParams):
        tokenization: str = Field("space", description="space | punctuation | character")
        window_size: int = Field(5, gt=0, description="Tokens per shingle")
        lowercase: bool = Field(True, description="Lowercase before shingling")
        ignore_pattern: str | None = Field(None, description="Regex of sub-strings removed before shingling")
        num_permutations: int = Field(256, gt=0, description="Signature length")
        jaccard_threshold: float = Field(0.7, ge=0, le=1, description="Documents this similar are duplicates")
        num_bands: int | None = Field(None, gt=0, description="LSH bands (default: optimal for the threshold)")
        num_rows_per_band: int | None = Field(None, gt=0, description="Signature rows per band")
        verify: bool = Field(
            True, description="Also require the signatures' estimated Jaccard >= threshold (fewer false positives)"
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        p = self.params
        self.hasher = MinHasher(p.num_permutations, p.window_size, p.tokenization, p.lowercase, p.ignore_pattern)
        if p.ignore_pattern:
            regex.compile(p.ignore_pattern)  # a bad pattern fails at configuration time
        if (p.num_bands is None) != (p.num_rows_per_band is None):
            raise ValueError("give both num_bands and num_rows_per_band, or neither")
        if p.num_bands is None:
            self.bands, self.rows = optimal_param(p.jaccard_threshold, p.num_permutations)
        else:
            self.bands, self.rows = p.num_bands, p.num_rows_per_band
        if self.bands * self.rows > p.num_permutations:
            raise ValueError(f"num_bands * num_rows_per_band must be <= num_permutations ({p.num_permutations})")

    def fingerprint_batch(self, texts):
        return self.hasher.signatures(texts)

    def bucket_keys(self, fingerprints):
        return band_hashes(fingerprints, self.bands, self.rows)  # texts without tokens all share EMPTY

    def verify(self, first, other):
        if not self.params.verify:
            return np.ones(len(first), dtype=bool)
        return (first == other).mean(axis=1) >= self.params.jaccard_threshold

    def reason(self, first, other):
        return f"near-duplicate (estimated Jaccard {(first == other).mean():.2f})"


@register("ray_bts_minhash_deduplicator")
class RayBTSMinhashDeduplicator(DocumentMinhashDeduplicator):
    """Data-Juicer's distributed MinHash dedup: the same MinHash + LSH decisions as document_minhash_deduplicator.
    With `executor: ray` every dedup step runs distributed, union-find in shard actors (operators/ray_exec.py);
    locally it is the streaming dedup. Data-Juicer's tuning knobs for its own actors are accepted and have no
    effect, except `union_find_parallel_num` (the number of shard actors)."""

    class Params(DocumentMinhashDeduplicator.Params):
        tokenizer_model: str | None = Field(None, description="Data-Juicer's sentencepiece model (not supported)")
        union_find_parallel_num: int | str = Field("auto", description="Shard actors on Ray ('auto': cluster CPUs)")
        union_threshold: int | None = Field(256, description="Data-Juicer tuning; no effect here")
        max_pending_edge_buffer_task: int | None = Field(20, description="Data-Juicer tuning; no effect here")
        num_edge_buffer_task_returns: int | None = Field(10, description="Data-Juicer tuning; no effect here")
        max_pending_filter_tasks: int | None = Field(20, description="Data-Juicer tuning; no effect here")
        num_filter_task_returns: int | None = Field(10, description="Data-Juicer tuning; no effect here")
        merge_batch_size: int | None = Field(1000, description="Data-Juicer tuning; no effect here")
        minhash_batch_size: int | str | None = Field("auto", description="Data-Juicer tuning; no effect here")
        memory_per_sample: float | None = Field(0.1, description="Data-Juicer tuning; no effect here")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.params.tokenizer_model:
            raise ValueError("tokenizer_model (sentencepiece tokenization) is not supported; use tokenization: "
                             "space, punctuation or character")
        if isinstance(self.params.union_find_parallel_num, str) and self.params.union_find_parallel_num != "auto":
            raise ValueError("union_find_parallel_num must be a number or 'auto'")

    @property
    def shards(self) -> int | None:
        """Shard actors on Ray; None: as many as the cluster's CPUs."""
        value = self.params.union_find_parallel_num
        return None if value == "auto" else max(1, int(value))
