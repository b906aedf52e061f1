"""A process writing one Delta table version through `tables.write`, from a slow generator of batches, for the
concurrent-writer and kill-mid-write tests.

    python tests/core/table_writer.py STORAGE_URL DATASET STAGE LABEL --batches N [--endpoint URL]
        [--ready FILE] [--go FILE] [--delay SECONDS]

Each batch holds 100 rows whose `writer` column is LABEL. After yielding its first batch the generator creates
--ready (so the test knows the write is under way: the table's snapshot is taken), then waits for --go to exist
before the next one. Prints one JSON line: {"version": N} when committed, {"error": "..."} on a TableError.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import pyarrow as pa

from datamate_resources import tables
from datamate_resources.storage import ObjectStore

SCHEMA = pa.schema([("writer", pa.string()), ("n", pa.int64())])
ROWS = 100


def batches(label: str, count: int, ready: Path | None, go: Path | None, delay: float):
    for index in range(count):
        yield pa.record_batch({"writer": [label] * ROWS, "n": list(range(index * ROWS, (index + 1) * ROWS))},
                              schema=SCHEMA)
        if index == 0 and ready:
            ready.touch()
        while go and not go.exists():
            time.sleep(0.02)
        time.sleep(delay)


def main() -> int:
    parser = argparse.ArgumentParser()
    for name in ("url", "dataset", "stage", "label"):
        parser.add_argument(name)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--endpoint")
    parser.add_argument("--ready", type=Path)
    parser.add_argument("--go", type=Path)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    store = ObjectStore(url=args.url, endpoint_url=args.endpoint)
    data = batches(args.label, args.batches, args.ready, args.go, args.delay)
    try:
        ref = tables.write(store, args.dataset, args.stage, data, schema=SCHEMA, run_id=f"run-{args.label}")
    except tables.TableError as error:
        print(json.dumps({"error": str(error)}))
        return 1
    print(json.dumps({"version": ref.version}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
