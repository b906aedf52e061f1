"""Compare a scan's identities with a previous `collected` version in this process; print counts and peak RSS.

    python -m tests.collection.changes_memory_child FOLDER [DUCKDB_MEMORY]

`write_inputs(FOLDER, n)` (run by the parent, in batches) writes what collection has when it compares: the spill
file of the current scan and the previous version as a Delta table.
"""

import hashlib
import json
import resource
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, WriterProperties, write_deltalake

from operators import changes

BATCH = 10_000
SPILL_SCHEMA = pa.schema([("doc_id", pa.string()), ("source_uri", pa.string()), ("mime_type", pa.string()),
                          ("source", pa.int32())])


def uri(i: int) -> str:
    return f"file:///corpus/section-{i % 97:02d}/document-{i:09d}.txt"


def doc_id(i: int, version: int = 0) -> str:
    return hashlib.sha256(f"{i}/{version}".encode()).hexdigest()


def expected(n: int) -> dict[str, int]:
    """Documents 0..n-1 are scanned and documents n/20..n+n/20-1 were there before; every 10th is changed and every
    100th scanned twice (its second read is a repeat)."""
    shift = n // 20
    known = n - shift
    changed = sum(1 for i in range(shift, n) if i % 10 == 0)
    return {"new": shift, "changed": changed, "unchanged": known - changed, "removed": shift,
            "repeated": len(range(0, n, 100))}


def write_inputs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(folder / "documents.parquet", SPILL_SCHEMA) as spill:
        for start in range(0, n, BATCH):
            rows = [*range(start, min(start + BATCH, n)), *range(start, min(start + BATCH, n), 100)]
            spill.write_batch(pa.RecordBatch.from_pydict({
                "doc_id": [doc_id(i, int(i % 10 == 0)) for i in rows], "source_uri": [uri(i) for i in rows],
                "mime_type": ["text/markdown" if i % 3 else "text/plain" for i in rows],
                "source": np.zeros(len(rows), np.int32)}, schema=SPILL_SCHEMA))
    shift = n // 20

    def previous():
        for start in range(shift, n + shift, BATCH):
            rows = range(start, min(start + BATCH, n + shift))
            yield pa.RecordBatch.from_pydict({"doc_id": [doc_id(i) for i in rows], "source_uri": [uri(i) for i in rows],
                                              "text": ["some text " * 10] * len(rows)})
    schema = pa.schema([("doc_id", pa.string()), ("source_uri", pa.string()), ("text", pa.string())])
    # row groups of 10k rows, as datamate_resources.tables writes them (a reader holds one at a time)
    write_deltalake(str(folder / "collected"), pa.RecordBatchReader.from_batches(schema, previous()),
                    writer_properties=WriterProperties(max_row_group_size=10_000))


def main(folder: Path, memory_limit: str | None) -> None:
    if memory_limit:  # e.g. 64MB: below what a larger comparison needs, to see DuckDB spill
        changes.DUCKDB_MEMORY = memory_limit
    # as TableRef.batches reads it (deltalake directly: importing datamate_resources would weigh 200 MB more)
    previous = DeltaTable(str(folder / "collected")).to_pyarrow_dataset().to_batches(columns=["source_uri", "doc_id"])
    found = changes.compare(folder / "documents.parquet", previous, folder / "compare", unusable=print)
    codes = sum(len(codes) for codes in found.codes())  # what collection then streams back, batch by batch
    removed = sum(len(uris) for uris in found.removed_uris())
    repeated = sum(batch.num_rows for batch in found.repeated())
    print(json.dumps({
        "new": found.new, "changed": found.changed, "unchanged": found.unchanged, "removed": found.removed,
        "repeated": repeated, "codes": codes, "removed_uris": removed,
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
