"""What changed in a collection since its last version, computed out of core.

The current scan's documents are spilled to a Parquet file as they are read; DuckDB (a database file in a work
folder, a memory limit, spilling to disk past it) compares their identity columns (source_uri, doc_id) with the
previous version's, with joins and anti-joins. What comes back to Python is counts, and files read back in batches:
a change code per spilled row, the repeated source_uris, the removed ones. Memory does not grow with the corpus.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from operators.parquet import parquet_batches

DUCKDB_MEMORY = "256MB"  # DuckDB spills to disk past this
BATCH_ROWS = 10_000
# A spilled row is new, changed (same source_uri, other doc_id), unchanged, or a repeat of an earlier row's
# source_uri in this scan (a reject: one document per source_uri).
NEW, CHANGED, UNCHANGED, REPEATED = 0, 1, 2, 3
IDENTITY = pa.schema([("source_uri", pa.string()), ("doc_id", pa.string())])


@dataclass
class Changes:
    new: int
    changed: int
    unchanged: int
    removed: int
    repeated_per_source: Counter[int]  # source index -> rows whose source_uri an earlier row of the scan has
    mime_types: list[tuple[str | None, int]]  # documents per mime type, most first (ties: first seen first)
    folder: Path

    @property
    def documents(self) -> int:
        return self.new + self.changed + self.unchanged

    def codes(self) -> Iterator[np.ndarray]:
        """The change code of every spilled row, in the spill's order."""
        for batch in _batches(self.folder / "codes.parquet"):
            yield batch.column("code").to_numpy(zero_copy_only=False).astype(np.int8)

    def repeated(self) -> Iterator[pa.RecordBatch]:
        """source_uri and source of each repeated row, in the spill's order."""
        return _batches(self.folder / "repeated.parquet")

    def removed_uris(self) -> Iterator[pa.Array]:
        """The source_uris of the previous version that this scan no longer has."""
        for batch in _batches(self.folder / "removed.parquet"):
            yield batch.column("source_uri")


def compare(documents: Path, previous: Iterable[pa.RecordBatch] | None, folder: Path,
            unusable: Callable[[Exception], None]) -> Changes:
    """Compare the spilled `documents` (columns source_uri, doc_id, mime_type, source) with the `previous` version's
    batches (columns source_uri, doc_id; None on a first run). A previous version that cannot be read or has a
    source_uri twice is reported to `unusable` and counts as absent: every document is then new."""
    folder.mkdir(parents=True, exist_ok=True)
    with connect(folder) as db:
        db.execute(f"""CREATE TABLE current AS SELECT file_row_number AS row, source_uri, doc_id, mime_type, source
            FROM read_parquet('{_sql_path(documents)}', file_row_number = true)""")
        _load_previous(db, previous, folder, unusable)
        db.execute("""CREATE TABLE status AS SELECT c.row, c.source_uri, c.source, c.mime_type,
              CASE WHEN c.row <> f.first THEN 3 WHEN p.doc_id IS NULL THEN 0 WHEN p.doc_id = c.doc_id THEN 2
                   ELSE 1 END::TINYINT AS code
            FROM current c
            LEFT JOIN (SELECT source_uri, min(row) AS first FROM current GROUP BY source_uri) f USING (source_uri)
            LEFT JOIN previous p ON p.source_uri = c.source_uri""")
        # ORDER BY is kept by COPY (insertion order is preserved): the files line up with the spill's rows.
        db.execute(f"COPY (SELECT code FROM status ORDER BY row) TO '{_sql_path(folder / 'codes.parquet')}'")
        db.execute(f"""COPY (SELECT source_uri, source FROM status WHERE code = {REPEATED} ORDER BY row)
            TO '{_sql_path(folder / 'repeated.parquet')}'""")
        removed = db.execute(f"""COPY (SELECT p.source_uri FROM previous p ANTI JOIN current c USING (source_uri))
            TO '{_sql_path(folder / 'removed.parquet')}'""").fetchone()[0]
        counts = dict(db.execute("SELECT code, count(*) FROM status GROUP BY code").fetchall())
        repeated = Counter(dict(db.execute(
            f"SELECT source, count(*) FROM status WHERE code = {REPEATED} GROUP BY source").fetchall()))
        mime_types = db.execute(f"""SELECT mime_type, count(*) AS n FROM status WHERE code <> {REPEATED}
            GROUP BY mime_type ORDER BY n DESC, min(row)""").fetchall()
    return Changes(new=counts.get(NEW, 0), changed=counts.get(CHANGED, 0), unchanged=counts.get(UNCHANGED, 0),
                   removed=int(removed), repeated_per_source=repeated, mime_types=[tuple(m) for m in mime_types],
                   folder=folder)


def keep_first_times(rows: Path, previous: Iterable[pa.RecordBatch] | None, keys: list[str], time_column: str,
                     out: Path, folder: Path) -> Path:
    """`rows` (a Parquet file) written to `out` in the same order, where a row whose `keys` the `previous` batches
    have too takes the earliest `time_column` they give those keys."""
    folder.mkdir(parents=True, exist_ok=True)
    with connect(folder) as db:
        source = f"read_parquet('{_sql_path(rows)}', file_row_number = true)"
        if previous is None:
            query = f"SELECT * EXCLUDE (file_row_number) FROM {source} ORDER BY file_row_number"
        else:
            schema = pq.read_schema(rows)
            path = _spill(previous, folder / "previous.parquet",
                          pa.schema([schema.field(name) for name in [*keys, time_column]]))
            names = ", ".join(keys)
            on = " AND ".join(f"r.{k} = p.{k}" for k in keys)
            query = f"""SELECT r.* EXCLUDE (file_row_number, {time_column}),
                    coalesce(p.first, r.{time_column}) AS {time_column}
                FROM {source} r LEFT JOIN (SELECT {names}, min({time_column}) AS first
                                           FROM read_parquet('{_sql_path(path)}') GROUP BY {names}) p ON {on}
                ORDER BY r.file_row_number"""
        db.execute(f"COPY ({query}) TO '{_sql_path(out)}'")
    return out


def connect(folder: Path, database: str | None = "changes.duckdb") -> duckdb.DuckDBPyConnection:
    """A DuckDB database in `folder` (in memory with `database=None`): past the memory limit its operators spill
    to `folder`, so what a query holds does not grow with the data. Cleaning's dedup decisions use it too."""
    return duckdb.connect(str(folder / database) if database else ":memory:", config={
        "memory_limit": DUCKDB_MEMORY, "threads": 2, "temp_directory": str(folder / "duckdb-spill"),
        # where order matters, the queries say ORDER BY; elsewhere keeping it would cost memory
        "preserve_insertion_order": False})


def _load_previous(db: duckdb.DuckDBPyConnection, previous: Iterable[pa.RecordBatch] | None, folder: Path,
                   unusable: Callable[[Exception], None]) -> None:
    """The previous version's identity columns as the table `previous` (empty when there is none or it is unusable)."""
    if previous is not None:
        try:
            path = _spill(previous, folder / "previous.parquet", IDENTITY)
            db.execute(f"CREATE TABLE previous AS SELECT source_uri::VARCHAR AS source_uri, doc_id::VARCHAR AS doc_id "
                       f"FROM read_parquet('{_sql_path(path)}')")
            repeated = db.execute("SELECT source_uri FROM previous GROUP BY source_uri HAVING count(*) > 1 "
                                  "LIMIT 1").fetchone()
            if repeated:
                raise ValueError(f"source_uri is not unique ({repeated[0]!r} is there twice)")
            return
        except (duckdb.Error, pa.ArrowException, OSError, ValueError, RuntimeError) as error:
            unusable(error)
            db.execute("DROP TABLE IF EXISTS previous")
    db.execute("CREATE TABLE previous (source_uri VARCHAR, doc_id VARCHAR)")


def _spill(batches: Iterable[pa.RecordBatch], path: Path, schema: pa.Schema) -> Path:
    """`batches` (their `schema` columns) written to a local Parquet file as they come: DuckDB reads local files
    only, and the table is read the way every stage reads one (its reference's batches)."""
    with pq.ParquetWriter(path, schema) as writer:
        for batch in batches:
            writer.write_batch(pa.RecordBatch.from_arrays([batch.column(n).cast(f.type) for n, f in zip(
                schema.names, schema, strict=True)], schema=schema))
    return path


def _batches(path: Path) -> Iterator[pa.RecordBatch]:
    yield from parquet_batches(path, BATCH_ROWS)


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
