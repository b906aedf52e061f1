"""Collection's incremental comparison (operators/changes.py): right counts and files, and memory that does not
grow with the number of documents (DuckDB over spill files, not identity columns held in the process)."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from operators.changes import CHANGED, NEW, REPEATED, UNCHANGED, compare, keep_first_times
from tests.collection.changes_memory_child import expected, uri, write_inputs
from tests.conftest import REPO

SIZES = (20_000, 80_000)
# Measured (2 cores): 310 -> 342 MB (1.10x); the comparison as it was, identity columns held in the process,
# 298 -> 377 MB (1.26x). Most of the peak is the interpreter with pyarrow, deltalake and DuckDB loaded.
MARGIN = 1.2


def test_compare_finds_new_changed_unchanged_removed_and_repeated(tmp_path):
    write_inputs(tmp_path, 2_000)
    previous = DeltaTable(str(tmp_path / "collected")).to_pyarrow_dataset().to_batches(columns=["source_uri", "doc_id"])
    found = compare(tmp_path / "documents.parquet", previous, tmp_path / "compare", unusable=pytest.fail)
    want = expected(2_000)
    assert (found.new, found.changed, found.unchanged, found.removed) == (
        want["new"], want["changed"], want["unchanged"], want["removed"])
    codes = [int(code) for batch in found.codes() for code in batch]
    spilled = pq.read_table(tmp_path / "documents.parquet", columns=["source_uri"]).column(0).to_pylist()
    assert len(codes) == len(spilled)
    seen = set()
    for code, source_uri in zip(codes, spilled, strict=True):  # each row's code, in the spill's order
        index = int(source_uri.rsplit("-", 1)[1].split(".")[0])
        if source_uri in seen:
            assert code == REPEATED
        elif index < 100:  # documents 0..99 were not there before (n/20 = 100)
            assert code == NEW
        else:
            assert code == (CHANGED if index % 10 == 0 else UNCHANGED), source_uri
        seen.add(source_uri)
    assert [b.column("source_uri").to_pylist() for b in found.repeated()] == [[uri(i) for i in range(0, 2_000, 100)]]
    assert sorted(u for uris in found.removed_uris() for u in uris.to_pylist()) == sorted(
        uri(i) for i in range(2_000, 2_100))
    assert found.mime_types == [("text/markdown", 1_333), ("text/plain", 667)]


def test_a_previous_version_with_a_repeated_source_uri_counts_as_absent(tmp_path):
    write_inputs(tmp_path, 200)
    twice = pa.record_batch({"source_uri": [uri(1), uri(1)], "doc_id": ["a", "b"]})
    problems = []
    found = compare(tmp_path / "documents.parquet", [twice], tmp_path / "compare", unusable=problems.append)
    assert [str(p) for p in problems] == [f"source_uri is not unique ('{uri(1)}' is there twice)"]
    assert (found.new, found.changed, found.unchanged, found.removed) == (200, 0, 0, 0)


def test_rejects_keep_their_first_time_and_their_order(tmp_path):
    rows = pa.table({"source_uri": ["a", "b", "c"], "reason": ["empty", "empty", "binary"], "detail": ["x"] * 3,
                     "rejected_at": pa.array([5, 6, 7], pa.timestamp("us", tz="UTC"))})
    pq.write_table(rows, tmp_path / "rejects.parquet")
    previous = pa.table({"source_uri": ["b", "b", "c"], "reason": ["empty", "empty", "empty"], "detail": ["x"] * 3,
                         "rejected_at": pa.array([3, 1, 2], pa.timestamp("us", tz="UTC"))})
    out = keep_first_times(tmp_path / "rejects.parquet", previous.to_batches(), ["source_uri", "reason", "detail"],
                           "rejected_at", tmp_path / "out.parquet", tmp_path / "work")
    result = pq.read_table(out)
    assert result.column("source_uri").to_pylist() == ["a", "b", "c"]
    assert result.column("rejected_at").cast(pa.int64()).to_pylist() == [5, 1, 7]  # c's reason differs: a new reject


def peak_rss_mb(n: int, tmp_path) -> float:
    folder = tmp_path / f"n{n}"
    write_inputs(folder, n)
    run = subprocess.run([sys.executable, "-m", "tests.collection.changes_memory_child", str(folder)],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    want = expected(n)
    assert {k: report[k] for k in want} == want
    assert report["codes"] == n + want["repeated"] and report["removed_uris"] == want["removed"]
    return report["peak_rss_kb"] / 1024


@pytest.mark.timeout(1800)
def test_comparison_memory_does_not_grow_with_the_documents(tmp_path):
    small, large = peak_rss_mb(SIZES[0], tmp_path), peak_rss_mb(SIZES[1], tmp_path)
    print(f"comparison peak RSS: {small:.0f} MB at {SIZES[0]}, {large:.0f} MB at {SIZES[1]} ({large / small:.2f}x)")
    assert large <= small * MARGIN, f"peak RSS {small:.0f} MB at {SIZES[0]} documents, {large:.0f} MB at {SIZES[1]}"
