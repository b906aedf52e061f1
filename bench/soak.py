"""Reliability soak (longer than CI's tests/reliability): the full-size hostile inputs through collection.

    .venv/bin/python bench/soak.py [--lines 1000000] [--workdir DIR]

Collects a million-line JSONL with one broken line in a thousand and a 200 MB document in child processes,
checks that the counts add up, and reports each child's peak RSS against the same ceilings the CI suite uses
(baseline + 100 MB for the oversized document; baseline + 4x the output table for the JSONL). Exit code 1 when a
check fails.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.reliability.hostile import write_large_document, write_million_line_jsonl  # noqa: E402

MB = 1024 * 1024


def run(workdir: Path, name: str, write) -> tuple[dict, Path]:
    source, datasets, storage = workdir / name / "source", workdir / name / "datasets", workdir / name / "storage"
    source.mkdir(parents=True)
    datasets.mkdir()
    extra = write(source)
    spec = datasets / f"{name}.yaml"
    spec.write_text(f"name: {name}\nsources:\n  - {{type: folder, path: {json.dumps(str(source))}}}\n")
    child = subprocess.run([sys.executable, "-m", "tests.reliability.collect", str(spec), str(storage)],
                           cwd=REPO, capture_output=True, text=True)
    if child.returncode != 0:
        raise SystemExit(child.stderr[-3000:])
    report = json.loads(child.stdout.strip().splitlines()[-1])
    report["expected"] = extra
    return report, storage / name / "collected.parquet"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp)
        baseline, _ = run(workdir, "baseline", lambda s: (s / "one.txt").write_text("One small document.") and None)
        base = baseline["peak_rss_mb"]
        failures = []

        huge, _ = run(workdir, "huge", lambda s: write_large_document(s / "huge.txt"))
        print(f"200 MB document: {huge}")
        if (huge["collected"], huge["rejected"], huge["reasons"]) != (0, 1, ["oversized"]):
            failures.append("200 MB document: expected one 'oversized' reject")
        if huge["peak_rss_mb"] > base + 100:
            failures.append(f"200 MB document: peak RSS {huge['peak_rss_mb']:.0f} MB > baseline {base:.0f} + 100")

        lines, collected_path = run(workdir, "lines",
                                    lambda s: write_million_line_jsonl(s / "records.jsonl", lines=args.lines))
        good, broken = lines["expected"]
        output_mb = pq.read_table(collected_path).nbytes / MB
        print(f"{args.lines} JSONL lines: {lines}, output table {output_mb:.0f} MB")
        if (lines["collected"], lines["rejected"], lines["inputs"]) != (good, broken, good + broken):
            failures.append(f"JSONL: counts do not add up (expected {good} collected, {broken} rejected)")
        if lines["peak_rss_mb"] > base + 4 * output_mb:
            failures.append(f"JSONL: peak RSS {lines['peak_rss_mb']:.0f} MB > baseline {base:.0f} + 4 x "
                            f"{output_mb:.0f} MB output")
    for failure in failures:
        print(f"FAIL {failure}")
    print("soak ok" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
