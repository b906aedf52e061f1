"""Parquet files read back a batch at a time, in memory bounded by a row group."""

from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def parquet_batches(source: Any, batch_size: int, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    """`source` (a path or an open file) as record batches. pyarrow's ParquetFile pre-buffers every row group it
    is asked to read by default: iterating a 300k-document spill file that way held the whole file in memory
    (~1 KB per document for MinHash fingerprints). Without pre-buffering it holds one row group at a time."""
    yield from pq.ParquetFile(source, pre_buffer=False).iter_batches(
        batch_size=batch_size, columns=list(columns) if columns is not None else None)
