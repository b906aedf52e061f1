"""Near duplicates by 64-bit SimHash of shingles and Hamming distance."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from operators.base import OperatorParams
from operators.dedup.buckets import BucketDeduplicator
from operators.dedup.minhash import MinHasher
from operators.registry import register


@register("document_simhash_deduplicator")
class DocumentSimhashDeduplicator(BucketDeduplicator):
    """Near-duplicate documents whose 64-bit SimHash differ in at most `hamming_distance` bits."""

    class Params(OperatorParams):
        tokenization: str = Field("space", description="space | punctuation | character")
        window_size: int = Field(6, gt=0, description="Tokens per shingle")
        lowercase: bool = Field(True, description="Lowercase before shingling")
        ignore_pattern: str | None = Field(None, description="Regex of sub-strings removed before shingling")
        num_blocks: int = Field(6, gt=0, le=64, description="Blocks the 64 bits are split into for bucketing")
        hamming_distance: int = Field(4, ge=0, description="Largest number of differing bits of duplicates")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        p = self.params
        if p.hamming_distance >= p.num_blocks:
            raise ValueError("hamming_distance must be smaller than num_blocks (pigeonhole bucketing)")
        self.shingler = MinHasher(1, p.window_size, p.tokenization, p.lowercase, p.ignore_pattern)
        edges = np.linspace(0, 64, p.num_blocks + 1).astype(int)
        self.block_masks = [np.uint64(((1 << (hi - lo)) - 1) << lo) for lo, hi in zip(edges, edges[1:], strict=False)]

    def fingerprint_batch(self, texts):
        """Each shingle votes +1/-1 per bit of its hash; the sign of the sum is the SimHash bit."""
        hashes, owner = self.shingler.shingle_hashes(texts)
        bits = np.unpackbits(hashes.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
        votes = np.zeros((len(texts), 64), dtype=np.int64)
        np.add.at(votes, owner, bits.astype(np.int64) * 2 - 1)
        packed = np.packbits(votes > 0, axis=1, bitorder="little")
        return packed.view(np.uint64).reshape(len(texts), 1)

    def bucket_keys(self, fingerprints):
        # if at most d bits differ among num_blocks > d blocks, some block is identical (pigeonhole)
        return np.stack([fingerprints[:, 0] & mask for mask in self.block_masks], axis=1)

    def verify(self, first, other):
        return np.bitwise_count(first[:, 0] ^ other[:, 0]) <= self.params.hamming_distance

    def reason(self, first, other):
        return f"near-duplicate (SimHash distance {int(np.bitwise_count(first[0] ^ other[0]))} bits)"
