"""Dataset-level deduplicators: exact (normalized hash), MinHash + LSH, SimHash, repeated lines across documents.

Document deduplicators are `BucketDeduplicator`s: fingerprint every document (vectorized, per batch), put it
in buckets by keys derived from the fingerprint, verify candidate pairs, join verified pairs into components and
keep each component's first document. The local and the Ray executor share every step but the grouping, so
they give identical results.
"""
