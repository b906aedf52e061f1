"""Memory does not grow with the corpus: the same pipeline at 10k and 40k documents, peak RSS compared.

Each size runs in a fresh subprocess (collection -> cleaning with exact and MinHash dedup -> chunks, in one
process), so the peak is that run's alone. Holding a stage's table in memory cost ~40 bytes per byte of text
(the measure before the streaming rewrite): 4x the documents would more than double the peak. Measured: 655 MB
at 10k, 824 MB at 40k (1.26x); 692 and 960 MB (1.39x) while pyarrow's ParquetFile still pre-buffered whole spill
files as they were read back (see operators/parquet.py).
"""

import json
import subprocess
import sys

import pytest

from bench.scale import write_corpus
from tests.conftest import REPO

SIZES = (10_000, 40_000)
MARGIN = 1.4  # a stage holding its table would cost ~40 bytes per byte of text: 2.5x here


def peak_rss_mb(n_docs: int, tmp_path) -> tuple[float, dict]:
    corpus = tmp_path / f"corpus-{n_docs}"
    write_corpus(n_docs, corpus, seed=3)
    run = subprocess.run([sys.executable, "-m", "tests.scale.memory_child", str(corpus), str(tmp_path / f"w{n_docs}")],
                         cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    return report["peak_rss_kb"] / 1024, report["rows"]


@pytest.mark.timeout(1800)
def test_peak_memory_does_not_grow_with_the_corpus(tmp_path):
    small, small_rows = peak_rss_mb(SIZES[0], tmp_path)
    large, large_rows = peak_rss_mb(SIZES[1], tmp_path)
    # the larger run really did 4x the work
    assert large_rows["scale/collected"] == SIZES[1] and small_rows["scale/collected"] == SIZES[0]
    assert large_rows["scale/cleaned"] + large_rows["scale/cleaning_drops"] == SIZES[1]
    assert large_rows["scale/chunks"] > 3 * small_rows["scale/chunks"]
    assert large <= small * MARGIN, f"peak RSS {small:.0f} MB at {SIZES[0]} docs, {large:.0f} MB at {SIZES[1]}"
