"""Memory does not grow with the corpus: the same pipeline at 10k and 40k documents, peak RSS compared.

Each size runs in a fresh subprocess (collection -> cleaning with exact and MinHash dedup -> chunks, in one
process), so the peak is that run's alone. Holding a stage's table in memory costs ~5 kB per document here
(text several times over, MinHash temporaries): 30k more documents would add ~150 MB, far over the margin.
"""

import json
import subprocess
import sys

from bench.scale import write_corpus
from tests.conftest import REPO

SIZES = (10_000, 40_000)
MARGIN = 1.15  # the larger run's peak may exceed the smaller's by at most 15%


def peak_rss_mb(n_docs: int, tmp_path) -> tuple[float, dict]:
    corpus = tmp_path / f"corpus-{n_docs}"
    write_corpus(n_docs, corpus, seed=3)
    run = subprocess.run([sys.executable, "-m", "tests.scale.memory_child", str(corpus), str(tmp_path / f"w{n_docs}")],
                         cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    return report["peak_rss_kb"] / 1024, report["rows"]


def test_peak_memory_does_not_grow_with_the_corpus(tmp_path):
    small, small_rows = peak_rss_mb(SIZES[0], tmp_path)
    large, large_rows = peak_rss_mb(SIZES[1], tmp_path)
    # the larger run really did 4x the work
    assert large_rows["scale/collected"] == SIZES[1] and small_rows["scale/collected"] == SIZES[0]
    assert large_rows["scale/cleaned"] + large_rows["scale/cleaning_drops"] == SIZES[1]
    assert large_rows["scale/chunks"] > 3 * small_rows["scale/chunks"]
    assert large <= small * MARGIN, f"peak RSS {small:.0f} MB at {SIZES[0]} docs, {large:.0f} MB at {SIZES[1]}"
