"""Deduplicators on real text: exact, MinHash + LSH (against exact Jaccard and datasketch's bands), SimHash, lines."""

import random

import numpy as np
import pytest

from operators import OperatorConfigError, build_operator
from operators.dedup.buckets import bucket_edges, duplicate_map
from operators.dedup.minhash import MinHasher, optimal_param

WORDS = ("river mountain data cleaning pipeline model quality language token corpus document filter "
         "dedup signature python ray cluster storage parquet table column metadata asset sensor schedule "
         "operator recipe benchmark memory speed precision recall threshold band row hash").split()


def article(seed: int, n_words: int = 200) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + str(rng.randint(0, 50)) for _ in range(n_words))


def edit(text: str, share: float, seed: int) -> str:
    rng = random.Random(seed)
    tokens = text.split(" ")
    for i in rng.sample(range(len(tokens)), int(len(tokens) * share)):
        tokens[i] = "replaced" + str(rng.randint(0, 10**6))
    return " ".join(tokens)


def shingles(text: str, w: int = 5) -> set[str]:
    tokens = [t for t in text.lower().split(" ") if t]
    return {" ".join(tokens[i:i + w]) for i in range(len(tokens) - w + 1)}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def test_exact_dedup_normalizes_case_and_whitespace():
    op = build_operator("document_deduplicator", {"lowercase": True, "collapse_whitespace": True})
    texts = ["Hello   World\nagain", "hello world again", "something else"]
    assert op.find_duplicates(op.fingerprint_batch(texts)) == {1: 0}
    strict = build_operator("document_deduplicator", {})
    assert strict.find_duplicates(strict.fingerprint_batch(texts)) == {}


def test_minhash_estimates_jaccard():
    hasher = MinHasher(num_permutations=256)
    base = article(1)
    for share in (0.01, 0.05, 0.1, 0.3):
        variant = edit(base, share, seed=int(share * 100))
        sig = hasher.signatures([base, variant])
        estimate = (sig[0] == sig[1]).mean()
        assert abs(estimate - jaccard(base, variant)) < 0.1, (share, estimate, jaccard(base, variant))


def test_minhash_finds_near_duplicates_and_keeps_distinct_documents():
    bases = [article(i) for i in range(40)]
    near = [edit(b, 0.01, seed=100 + i) for i, b in enumerate(bases[:20])]  # Jaccard ~0.9
    far = [edit(b, 0.4, seed=200 + i) for i, b in enumerate(bases[20:30])]  # Jaccard < 0.3
    texts = bases + near + far
    op = build_operator("document_minhash_deduplicator", {"jaccard_threshold": 0.7})
    duplicates = op.find_duplicates(op.fingerprint_batch(texts))
    assert {i: duplicates.get(40 + i) for i in range(20)} == {i: i for i in range(20)}
    assert not any(60 <= d < 70 for d in duplicates)
    assert all(d >= 40 for d in duplicates)  # every first document is kept
    kept, dropped = op.deduplicate([{"text": t} for t in texts])
    assert len(kept) + len(dropped) == len(texts) and len(dropped) == 20


def test_minhash_bands_match_datasketch():
    from datasketch.lsh import _optimal_param

    assert optimal_param(0.7, 256) == _optimal_param(0.7, 256, 0.5, 0.5)
    op = build_operator("document_minhash_deduplicator", {"num_bands": 16, "num_rows_per_band": 8})
    assert (op.bands, op.rows) == (16, 8)


@pytest.mark.parametrize("params, parameter", [
    ({"num_bands": 40, "num_rows_per_band": 10}, None),
    ({"num_bands": 4}, None),
    ({"jaccard_threshold": 1.5}, "jaccard_threshold"),
    ({"tokenization": "sentencepiece"}, None),
    ({"windowsize": 5}, "windowsize"),
])
def test_minhash_bad_configuration_fails_fast(params, parameter):
    with pytest.raises(OperatorConfigError) as error:
        build_operator("document_minhash_deduplicator", params)
    assert error.value.operator == "document_minhash_deduplicator"
    assert error.value.parameter == parameter


def test_minhash_tokenizations_and_short_texts():
    for tokenization in ("space", "punctuation", "character"):
        op = build_operator("document_minhash_deduplicator", {"tokenization": tokenization})
        texts = ["Short, text!", "short, text!", "", "", "A different, much longer text about clusters."]
        duplicates = op.find_duplicates(op.fingerprint_batch(texts))
        assert duplicates == {1: 0, 3: 2}, tokenization


def test_simhash_hamming_distance():
    op = build_operator("document_simhash_deduplicator", {"hamming_distance": 4})
    base = article(7, 400)
    texts = [base, edit(base, 0.0025, seed=1), article(8, 400)]  # one word changed
    fps = op.fingerprint_batch(texts)
    assert int(np.bitwise_count(fps[0, 0] ^ fps[1, 0])) <= 4
    assert op.find_duplicates(fps) == {1: 0}


def test_line_dedup_removes_lines_seen_in_earlier_documents():
    op = build_operator("document_line_deduplicator", {"min_chars": 10})
    texts = ["Intro one\nSubscribe to our newsletter\nBody of the first", "Intro two\nSubscribe to our newsletter\n"
             "Body of the second", "Subscribe to our newsletter"]
    owners = op.first_owners(op.fingerprint_batch(texts), np.arange(3))
    assert [op.remove_seen(t, i, owners) for i, t in enumerate(texts)] == [
        texts[0], "Intro two\nBody of the second", ""]


def test_components_keep_smallest_row_and_respect_protected():
    first, other = bucket_edges(np.array([5, 5, 7, 7, 9], np.uint64), np.array([3, 8, 8, 12, 1]))
    assert sorted(zip(first.tolist(), other.tolist(), strict=True)) == [(3, 8), (8, 12)]
    assert duplicate_map(first, other) == {8: 3, 12: 3}
    assert duplicate_map(first, other, protected={8}) == {12: 3}
