"""Exact duplicates by a hash of the normalized text."""

from __future__ import annotations

import re
import string

import numpy as np
import xxhash
from pydantic import Field

from operators.base import OperatorParams
from operators.dedup.buckets import BucketDeduplicator
from operators.registry import register

_NON_CHARACTER = re.compile(rf"\s+|\d+|[{re.escape(string.punctuation)}]")
_SPACES = re.compile(r"\s+")


@register("document_deduplicator")
class DocumentDeduplicator(BucketDeduplicator):
    """Exact duplicate documents, compared after optional lowercasing and whitespace/non-character removal."""

    class Params(OperatorParams):
        lowercase: bool = Field(False, description="Compare lowercased texts")
        ignore_non_character: bool = Field(
            False, description="Ignore whitespace, digits and punctuation when comparing"
        )
        collapse_whitespace: bool = Field(False, description="Treat any run of whitespace as one space")

    def normalize(self, text: str) -> str:
        if self.params.lowercase:
            text = text.lower()
        if self.params.ignore_non_character:
            text = _NON_CHARACTER.sub("", text)
        elif self.params.collapse_whitespace:
            text = _SPACES.sub(" ", text).strip()
        return text

    def fingerprint_batch(self, texts):
        """128-bit xxh3 per text as two uint64 columns: the first buckets, both must match."""
        digests = b"".join(xxhash.xxh3_128_digest(self.normalize(t).encode()) for t in texts)
        return np.frombuffer(digests, dtype=np.uint64).reshape(len(texts), 2).copy()

    def bucket_keys(self, fingerprints):
        return fingerprints[:, :1]

    def verify(self, first, other):
        return (first == other).all(axis=1)

    def reason(self, first, other):
        return "exact duplicate"
