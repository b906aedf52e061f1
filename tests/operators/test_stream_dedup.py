"""The out-of-core dedup (operators/stream.py: spilled keys, DuckDB candidate pairs) decides exactly what the
in-memory algorithm decides on the planted-duplicate corpus, so its precision and recall are the same."""

import pyarrow as pa
import pytest

from bench.corpus import generate
from operators import build_operator
from operators.recipe import Recipe, run_local


@pytest.fixture(scope="module")
def corpus() -> pa.Table:
    table = generate(3000, seed=11).table
    return table.append_column("n", pa.array(range(table.num_rows)))  # exact copies share their doc_id


@pytest.mark.parametrize("name, params", [
    ("document_minhash_deduplicator", {"jaccard_threshold": 0.7}),
    ("document_deduplicator", {"lowercase": True}),
    ("document_simhash_deduplicator", {}),
])
def test_streamed_dedup_drops_what_the_in_memory_algorithm_drops(corpus, name, params):
    op = build_operator(name, params)
    texts = corpus.column("text").to_pylist()
    expected = set(op.find_duplicates(op.fingerprint_batch(texts)))  # {duplicate row: kept row}
    assert expected, "the corpus has planted duplicates"

    result = run_local(Recipe.from_process([{name: params}]), corpus)
    dropped = set(result.drops.column("n").to_pylist())
    assert dropped == expected
    assert result.kept.num_rows + result.drops.num_rows == corpus.num_rows


def test_streamed_dedup_runs_in_worker_processes_with_the_same_result(corpus):
    process = [{"whitespace_normalization_mapper": {}}, {"document_minhash_deduplicator": {}}]
    one = run_local(Recipe.from_process(process), corpus)
    two = run_local(Recipe.from_process(process), corpus, num_proc=2)
    assert one.kept.equals(two.kept) and one.drops.equals(two.drops)
