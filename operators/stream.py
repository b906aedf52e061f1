"""Streaming recipe runs: record batches in, kept and dropped rows out to Parquet files, memory bounded by the batch.

Mappers and filters run batch by batch (in `num_proc` processes: this one and `num_proc - 1` workers, a few batches
ahead at most). A dedup step needs every document before it decides, so it is out of core, in three passes as
datatrove does it:
1. stream the documents to a local spill file while fingerprints, bucket keys (LSH bands) and the rows' ids are
   written to Parquet beside it;
2. DuckDB (which spills to disk past its memory limit) groups the keys into candidate pairs and joins the
   fingerprints of both sides; the pairs are verified batch by batch and connected components resolved on the
   verified pairs only, so memory follows the candidates, not the corpus;
3. the spill file is streamed again with the decision applied, into the next steps.
For incremental runs, the fingerprints of the documents a run keeps are saved per dedup step (`index.parquet`:
step, identity, name, fingerprint, bucket keys or line units). The next run loads that signature index instead of
reading or fingerprinting the published texts again: published documents take part in every dedup step with
negative row ids, so they are the kept side of any duplicate and never dropped.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from operators.base import Deduplicator, Selector, SplitMapper
from operators.changes import connect
from operators.dedup.buckets import BucketDeduplicator, duplicate_map
from operators.dedup.lines import DocumentLineDeduplicator
from operators.parquet import parquet_batches
from operators.recipe import (
    ALIVE,
    BATCH_ROWS,
    DROP_REASON,
    DROP_STEP,
    ROW,
    SPLIT_BITS,
    STATS,
    DedupDecision,
    Recipe,
    RecipeError,
    StepStats,
    apply_dedup_decision,
    apply_steps,
    decide_line_dedup,
    decide_selection,
    document_names,
    fingerprints_of,
    segments,
    split_rows,
    stats_type,
)

PROGRESS_SECONDS = 15.0
SALT = np.uint64(0x9E3779B97F4A7C15)


@dataclass
class StreamResult:
    stats: list[StepStats]
    kept: int
    dropped: int
    recipe_hash: str


class Sink(Protocol):
    """Where a run's kept rows or drops go, batch by batch (a `ParquetSink`, the CLI's export files)."""

    rows: int

    def write(self, batch: pa.Table | pa.RecordBatch) -> None: ...


def output_schemas(schema: pa.Schema, recipe: Recipe) -> tuple[pa.Schema, pa.Schema]:
    """The kept and dropped rows' schemas of a run over input `schema`: the text as large_string, the recipe's
    `stats` column instead of an input one (see `with_bookkeeping`); drops add the operator and the reason."""
    kept = schema.set(schema.get_field_index(recipe.text_key), pa.field(recipe.text_key, pa.large_string())) \
        if recipe.text_key in schema.names else schema
    if STATS in kept.names:
        kept = kept.remove(kept.get_field_index(STATS))
    stats = stats_type(recipe.operators)
    kept = kept.append(pa.field(STATS, stats)) if stats is not None else kept
    return kept, kept.append(pa.field("operator", pa.string())).append(pa.field("reason", pa.string()))


class ParquetSink:
    """Appends batches to a Parquet file, opened with the first batch's schema (later batches are cast to it)."""

    def __init__(self, path: Path):
        self.path = path
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, batch: pa.Table | pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table.cast(self.writer.schema))
        self.rows += table.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def batches(self, batch_size: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        if self.writer is not None:
            yield from parquet_batches(self.path, batch_size)


class SharedPool(Executor):
    """`num_proc` processes: this one and `num_proc - 1` worker processes, this one taking every `num_proc`-th job
    as it is submitted while the workers run theirs. A worker holds its own imports and batches (~300 MB); this
    process has them already, and would otherwise wait for the workers' results."""

    def __init__(self, num_proc: int):
        self.num_proc = num_proc
        self.workers = ProcessPoolExecutor(num_proc - 1)
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs) -> Future:
        self.submitted += 1
        if self.submitted % self.num_proc:
            return self.workers.submit(fn, *args, **kwargs)
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:  # why: raised in order, at `result()`, like a worker's
            future.set_exception(error)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.workers.shutdown(wait, cancel_futures=cancel_futures)


def ordered_map(pool: Executor | None, function: Callable, items: Iterable, ahead: int) -> Iterator:
    """map() that keeps at most `ahead` items in flight (Executor.map would submit the whole input at once)."""
    if pool is None:
        yield from map(function, items)
        return
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(function, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def with_bookkeeping(batch: pa.RecordBatch | pa.Table, first_row: int, text_key: str,
                     stats: pa.StructType | None = None) -> pa.Table:
    """Row ids, the drop columns, and texts as large_string (a null text becomes '': filters drop it with a reason);
    with `stats` (the recipe's `stats_type`), an empty `stats` column that filters fill (an input one is replaced)."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    if STATS in table.column_names:
        table = table.drop_columns([STATS])
    if table.get_total_buffer_size() > 2 * table.nbytes:
        # a slice of a bigger table: pickled for a worker process, it would carry its parent's whole buffers
        table = table.take(np.arange(table.num_rows))
    n = table.num_rows
    text = pc.fill_null(table.column(text_key).cast(pa.large_string()), "")
    table = table.set_column(table.schema.get_field_index(text_key), text_key, text)
    table = table.append_column(ROW, pa.array(np.arange(first_row, first_row + n, dtype=np.int64)))
    table = table.append_column(DROP_STEP, pa.array(np.full(n, ALIVE, dtype=np.int32)))
    table = table.append_column(DROP_REASON, pa.nulls(n, pa.string()))
    return table.append_column(STATS, pa.nulls(n, stats)) if stats is not None else table


INDEX_SCHEMA = pa.schema([("step", pa.int32()), ("identity", pa.string()), ("name", pa.string()),
                          ("fp", pa.binary()), ("keys", pa.list_(pa.int64()))])
# Bucket keys and line units are 64-bit hashes stored as int64 (Delta tables have no unsigned integers).


def run_stream(recipe: Recipe, batches: Iterable[pa.RecordBatch | pa.Table], workdir: Path, kept: Sink,
               drops: Sink, index: Callable[[int], Iterable[pa.RecordBatch]] | None = None,
               identity: Callable[[pa.Table], pa.Array] | None = None, num_proc: int = 1,
               log: Callable[[str], None] | None = None) -> StreamResult:
    """Run the recipe over `batches`; kept rows (input columns, input order) go to `kept`, dropped rows (input
    columns + operator, reason) to `drops`.

    `index(step)`: the published documents' signature index rows (INDEX_SCHEMA) for a dedup step, which new
    documents are deduplicated against. `identity(table)`: a document's identity, saved in the index this run
    writes to `workdir / "index.parquet"` (published documents carried over + the documents kept now)."""
    log = log or (lambda message: None)
    text_key = recipe.text_key
    stats = [StepStats(i, name, op.kind) for i, (name, op) in enumerate(zip(recipe.names, recipe.operators,
                                                                            strict=True))]
    pool = SharedPool(num_proc) if num_proc > 1 else None
    ahead = 2 * num_proc

    stats_struct = stats_type(recipe.operators)

    def numbered() -> Iterator[pa.Table]:
        offset = 0
        for batch in batches:
            if text_key not in batch.schema.names:
                raise RecipeError(f"input has no text column {text_key!r} (columns: {', '.join(batch.schema.names)})")
            yield with_bookkeeping(batch, offset, text_key, stats_struct)
            offset += batch.num_rows

    def drop(table: pa.Table) -> None:
        dropped = table.filter(pc.not_equal(table.column(DROP_STEP), ALIVE))
        if dropped.num_rows:
            names = np.array(recipe.names, dtype=object)
            operator = pa.array(names[dropped.column(DROP_STEP).to_numpy()].tolist(), pa.string())
            reason = dropped.column(DROP_REASON)
            drops.write(dropped.drop_columns([ROW, DROP_STEP, DROP_REASON])
                        .append_column("operator", operator).append_column("reason", reason))

    def alive(table: pa.Table) -> pa.Table:
        return table.filter(pc.equal(table.column(DROP_STEP), ALIVE))

    stream: Iterator[pa.Table] = _progress(numbered(), "documents read", log)
    try:
        for part in segments(recipe.operators):
            step, op = part[0]
            if isinstance(op, Deduplicator):
                stream = _dedup_step(stream, step, op, recipe, workdir, index, identity, pool, ahead, stats, drop,
                                     alive, log)
            elif isinstance(op, Selector):
                stream = _selector_step(stream, step, op, text_key, workdir, stats, drop, alive)
            elif isinstance(op, SplitMapper):
                stream = _split_step(stream, step, op, text_key, pool, ahead, stats, drop, alive)
            else:
                stream = _mapper_filter_steps(stream, part, text_key, pool, ahead, stats, drop, alive)
        kept_rows = ParquetSink(workdir / "kept_rows.parquet")
        for table in stream:
            kept.write(table.drop_columns([ROW, DROP_STEP, DROP_REASON]))
            kept_rows.write(table.select([ROW]))
        kept_rows.close()
        _write_index(workdir, kept_rows, [i for i, op in enumerate(recipe.operators) if isinstance(op, Deduplicator)],
                     [i for i, op in enumerate(recipe.operators) if isinstance(op, SplitMapper)])
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    for s, name in zip(stats, recipe.names, strict=True):
        s.operator = name
        log(f"step {s.step} {name}: {s.docs_in} in, {s.dropped} dropped, {s.changed} changed, {s.seconds:.1f}s")
    return StreamResult(stats, kept.rows, drops.rows, recipe.hash)


def _apply_segment(args):
    batch, steps, text_key = args
    return apply_steps(batch, steps, text_key)


def _mapper_filter_steps(stream, part, text_key, pool, ahead, stats, drop, alive) -> Iterator[pa.Table]:
    jobs = ((batch, part, text_key) for batch in stream)
    for batch, report in ordered_map(pool, _apply_segment, jobs, ahead):
        for step_stats in report:
            stats[step_stats.step].add(step_stats)
        drop(batch)
        live = alive(batch)
        if live.num_rows:
            yield live


def _split(args):
    batch, index, op, text_key = args
    return split_rows(batch, index, op, text_key)


def _split_step(stream, index, op, text_key, pool, ahead, stats, drop, alive) -> Iterator[pa.Table]:
    """One document in, its pieces out; output batches are cut back to BATCH_ROWS (a batch may split into many)."""
    jobs = ((batch, index, op, text_key) for batch in stream)
    for batch, step_stats in ordered_map(pool, _split, jobs, ahead):
        stats[index].add(step_stats)
        drop(batch)
        live = alive(batch)
        for start in range(0, live.num_rows, BATCH_ROWS):
            yield live.slice(start, BATCH_ROWS)


def _fingerprint_rows(args) -> tuple[pa.Table, pa.Table, dict[int, str]]:
    """Per batch: (bucket keys or line units: key, row), (row, identity, name, fp), {row: error} of failed records."""
    op, table, text_key, identities = args
    rows = table.column(ROW).to_numpy()
    fps, errors = fingerprints_of(op, table.column(text_key).to_pylist())
    ok = np.array([e is None for e in errors], dtype=bool)
    failed = {int(r): e for r, e in zip(rows, errors, strict=True) if e is not None}
    good = [f for f, k in zip(fps, ok, strict=True) if k]
    fp_table = pa.table({ROW: rows[ok], "identity": identities.filter(pa.array(ok)),
                         "name": pa.array(document_names(table), pa.string()).filter(pa.array(ok)),
                         "fp": pa.nulls(int(ok.sum()), pa.binary()) if isinstance(op, DocumentLineDeduplicator)
                         else pa.array([np.asarray(f).tobytes() for f in good], pa.binary())})
    if isinstance(op, DocumentLineDeduplicator):
        counts = np.array([len(f) for f in good], dtype=np.int64)
        units = np.concatenate(good) if good else np.zeros(0, np.uint64)
        return pa.table({"key": units.astype(np.uint64).view(np.int64), ROW: np.repeat(rows[ok], counts)}), \
            fp_table, failed
    return _bucket_key_rows(op, np.asarray(good).reshape(len(good), -1) if good else np.zeros((0, 1)), rows[ok]), \
        fp_table, failed


def _bucket_key_rows(op: BucketDeduplicator, fps: np.ndarray, rows: np.ndarray) -> pa.Table:
    keys = op.bucket_keys(fps) if len(fps) else np.zeros((0, 1), np.uint64)
    salted = keys ^ (np.arange(keys.shape[1], dtype=np.uint64) * SALT)[None, :]
    return pa.table({"key": salted.ravel().view(np.int64), ROW: np.repeat(rows, keys.shape[1])})


def _fingerprint_jobs(op, tables: Iterable[pa.Table], text_key: str, spill: ParquetSink, identity):
    for table in tables:
        spill.write(table)
        identities = identity(table).cast(pa.string()) if identity else pa.nulls(table.num_rows, pa.string())
        # the columns the worker reads (Arrow buffers pickle cheaply; the texts become str objects there)
        names = [name for name in ("source_uri", "doc_id") if name in table.column_names]
        yield op, table.select(list(dict.fromkeys([text_key, ROW, *names]))), text_key, identities


def _published(index, step: int) -> Iterator[tuple[pa.Table, pa.Table]]:
    """The published documents' index rows for `step` as (keys, fingerprints) with negative row ids (they sort
    first, so they are the kept side of duplicates)."""
    offset = -(1 << 62)
    for batch in (index(step) if index else []):
        n = batch.num_rows
        rows = np.arange(offset, offset + n, dtype=np.int64)
        offset += n
        keys = batch.column("keys")
        counts = pc.list_value_length(keys).fill_null(0).to_numpy(zero_copy_only=False)
        key_table = pa.table({"key": pc.list_flatten(keys), ROW: np.repeat(rows, counts)})
        yield key_table, pa.table({ROW: rows, "identity": batch.column("identity"), "name": batch.column("name"),
                                   "fp": batch.column("fp")})


def _dedup_step(stream, index, op, recipe, workdir, signatures, identity, pool, ahead, stats, drop, alive,
                log) -> Iterator[pa.Table]:
    if not isinstance(op, BucketDeduplicator | DocumentLineDeduplicator):
        raise RecipeError(f"{op.name} has no streaming implementation")
    text_key = recipe.text_key
    step_dir = workdir / f"step{index}"
    step_dir.mkdir(parents=True, exist_ok=True)
    spill, keys, fps = (ParquetSink(step_dir / name) for name in ("docs.parquet", "keys.parquet", "fps.parquet"))
    failed: dict[int, str] = {}
    started = time.perf_counter()
    for key_table, fp_table in _published(signatures, index):
        keys.write(key_table)
        fps.write(fp_table)
    published = fps.rows
    jobs = _fingerprint_jobs(op, stream, text_key, spill, identity)
    for key_table, fp_table, errors in ordered_map(pool, _fingerprint_rows, jobs, ahead):
        keys.write(key_table)
        fps.write(fp_table)
        failed.update(errors)
    for sink in (spill, keys, fps):
        sink.close()
    log(f"step {index} {op.name}: {spill.rows} documents fingerprinted, {published} published ones from the "
        "signature index; deciding duplicates")
    line_dedup = isinstance(op, DocumentLineDeduplicator)
    owners = _repeated_unit_owners(keys, step_dir) if line_dedup else {}
    decision = DedupDecision() if line_dedup else _decide_buckets(op, keys, fps, step_dir)
    seconds = time.perf_counter() - started

    def decided() -> Iterator[pa.Table]:
        first = True
        tables = (pa.Table.from_batches([batch]) for batch in spill.batches())
        if line_dedup:  # rewrites depend on the batch's texts: decided in the worker processes
            results = ordered_map(pool, _line_dedup_batch, ((table, index, op, text_key, owners, failed)
                                                            for table in tables), ahead)
        else:
            results = (apply_dedup_decision(table, index, text_key, decision, failed)[:2] for table in tables)
        for table, step_stats in results:
            step_stats.seconds = seconds if first else 0.0
            first = False
            stats[index].add(step_stats)
            drop(table)
            live = alive(table)
            if live.num_rows:
                yield live

    return _progress(decided(), f"documents through step {index} {op.name}", log)


def _line_dedup_batch(args) -> tuple[pa.Table, StepStats]:
    table, index, op, text_key, owners, failed = args
    live = table.filter(pc.equal(table.column(DROP_STEP), ALIVE))
    decision = decide_line_dedup(op, live.column(text_key).to_pylist(), live.column(ROW).to_numpy(), owners, set(),
                                 failed)
    return apply_dedup_decision(table, index, text_key, decision, failed)[:2]


def _selector_step(stream, index, op: Selector, text_key, workdir, stats, drop, alive) -> Iterator[pa.Table]:
    """Spill the documents, decide from the row ids and the selector's fields only, stream them again."""
    spill = ParquetSink(workdir / f"step{index}-select.parquet")
    started = time.perf_counter()
    for table in stream:
        spill.write(table)
    spill.close()
    present = pq.read_schema(spill.path).names if spill.rows else []
    wanted = [name for name in (ROW, DROP_STEP, *op.fields()) if name in present]  # a missing one: RecipeError
    columns = pq.read_table(spill.path, columns=wanted) if spill.rows else None
    decision = decide_selection(op, columns, text_key) if columns is not None else DedupDecision()
    seconds = time.perf_counter() - started

    def decided() -> Iterator[pa.Table]:
        for number, batch in enumerate(spill.batches()):
            table, step_stats, _ = apply_dedup_decision(pa.Table.from_batches([batch]), index, text_key, decision, {})
            step_stats.seconds = seconds if number == 0 else 0.0
            stats[index].add(step_stats)
            drop(table)
            live = alive(table)
            if live.num_rows:
                yield live

    return decided()


def _progress(stream: Iterator[pa.Table], what: str, log: Callable[[str], None]) -> Iterator[pa.Table]:
    """Pass batches through, logging a running count at most every PROGRESS_SECONDS (a long run shows it moves)."""
    count, next_log = 0, time.monotonic() + PROGRESS_SECONDS
    for table in stream:
        count += table.num_rows
        if time.monotonic() >= next_log:
            log(f"{count} {what}")
            next_log = time.monotonic() + PROGRESS_SECONDS
        yield table


def _ascending_rows(batches: Iterable[pa.RecordBatch], what: str) -> Iterator[np.ndarray]:
    """The row ids of `batches` as arrays, checked to ascend (every spill is written in row order)."""
    last = None
    for batch in batches:
        rows = batch.column(ROW).to_numpy()
        if len(rows) and ((last is not None and rows[0] < last) or np.any(rows[1:] < rows[:-1])):
            raise RuntimeError(f"{what} is not in row order; the signature index cannot be merged")
        if len(rows):
            last = rows[-1]
            yield rows


class _RowLookup:
    """Looks up ascending row ids in a stream of (rows, values) batches that ascend too; the buffer holds only
    what lies between two lookups, so a merge over any number of rows runs in bounded memory."""

    def __init__(self, batches: Iterator[tuple[np.ndarray, pa.Array | None]]):
        self._batches = batches
        self._rows = np.zeros(0, np.int64)
        self._values: pa.Array | None = None

    def find(self, rows: np.ndarray) -> tuple[np.ndarray, pa.Array | None]:
        """(which of `rows` are present, the values of those present, in order)."""
        while len(self._rows) == 0 or self._rows[-1] < rows[-1]:
            more = next(self._batches, None)
            if more is None:
                break
            self._rows = np.concatenate([self._rows, more[0]])
            if more[1] is not None:
                self._values = more[1] if self._values is None else pa.concat_arrays([self._values, more[1]])
        at = np.minimum(np.searchsorted(self._rows, rows), max(len(self._rows) - 1, 0))
        found = (self._rows[at] == rows) if len(self._rows) else np.zeros(len(rows), bool)
        values = self._values.take(pa.array(at[found])) if self._values is not None else None
        cut = int(np.searchsorted(self._rows, rows[-1], side="right"))
        self._rows = self._rows[cut:]
        self._values = self._values[cut:] if self._values is not None else None
        return found, values


def _keys_per_row(path: Path) -> Iterator[tuple[np.ndarray, pa.Array]]:
    """A step's (key, row) spill, written in row order, as (rows, list of keys per row) batches."""
    if not path.exists():
        return
    carry_rows, carry_keys = np.zeros(0, np.int64), np.zeros(0, np.int64)
    for batch in parquet_batches(path, BATCH_ROWS, [ROW, "key"]):
        rows = np.concatenate([carry_rows, batch.column(ROW).to_numpy()])
        keys = np.concatenate([carry_keys, batch.column("key").to_numpy()])
        if np.any(rows[1:] < rows[:-1]):
            raise RuntimeError(f"{path} is not in row order; the signature index cannot be merged")
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        last = starts[-1]  # the last row's keys may go on in the next batch
        carry_rows, carry_keys = rows[last:], keys[last:]
        if last:
            # starts[-1] == last: the offsets of the complete rows' key lists and the end of the last one
            yield rows[starts[:-1]], pa.ListArray.from_arrays(pa.array(starts, pa.int32()), pa.array(keys[:last]))
    if len(carry_rows):
        yield carry_rows[:1], pa.ListArray.from_arrays(pa.array([0, len(carry_keys)], pa.int32()),
                                                       pa.array(carry_keys))


def _write_index(workdir: Path, kept_rows: ParquetSink, steps: list[int], split_steps: list[int]) -> None:
    """The signature index of the published documents after this run: the ones carried over (negative rows) and
    the ones kept now, per dedup step (a document a later step split counts as kept when one of its pieces is).

    Every spill is in row order, so this is a merge of the step's fingerprints, its keys and the kept rows, a
    batch at a time (a DuckDB join grouping the keys ran out of its memory limit at 300k documents)."""
    sink = ParquetSink(workdir / "index.parquet")
    for step in steps:
        step_dir = workdir / f"step{step}"
        if not (step_dir / "fps.parquet").exists():
            continue
        shift = SPLIT_BITS * sum(1 for split in split_steps if split > step)  # back to the row ids of `step`
        kept_batches = parquet_batches(kept_rows.path, BATCH_ROWS, [ROW]) \
            if kept_rows.rows else iter(())
        kept = _RowLookup((rows >> shift, None) for rows in _ascending_rows(kept_batches, kept_rows.path))
        keys = _RowLookup(_keys_per_row(step_dir / "keys.parquet"))
        for batch in parquet_batches(step_dir / "fps.parquet", BATCH_ROWS):
            rows = next(_ascending_rows([batch], step_dir / "fps.parquet"), None)
            if rows is None:
                continue
            published = rows < 0
            keep = published.copy()
            if not published.all():
                keep[~published] = kept.find(rows[~published])[0]
            if not keep.any():
                continue
            rows = rows[keep]
            found, key_lists = keys.find(rows)
            at = np.cumsum(found) - 1
            key_column = key_lists.take(pa.array(at, mask=~found)) if key_lists is not None \
                else pa.nulls(len(rows), pa.list_(pa.int64()))
            chosen = batch.filter(pa.array(keep))
            sink.write(pa.table({"step": pa.array(np.full(len(rows), step, np.int32)),
                                 "identity": chosen.column("identity"), "name": chosen.column("name"),
                                 "fp": chosen.column("fp"), "keys": key_column}).cast(INDEX_SCHEMA))
    sink.close()


def _decide_buckets(op: BucketDeduplicator, keys: ParquetSink, fps: ParquetSink, workdir: Path) -> DedupDecision:
    """Candidate pairs per bucket, verified on their fingerprints, resolved into {dropped row: reason}."""
    if keys.writer is None:
        return DedupDecision()
    con = connect(workdir, database=None)
    con.execute(f"CREATE VIEW keys AS SELECT * FROM read_parquet('{keys.path}')")
    con.execute(f"CREATE VIEW fps AS SELECT * FROM read_parquet('{fps.path}')")
    # (smallest row of each bucket, another member): the same edges the in-memory bucket_edges draws. Only buckets
    # with several members are joined back: a grouping spills to disk past the memory limit, a window over every
    # key held ~1.2 GB at 1M documents.
    con.execute(f"""CREATE TABLE pairs AS SELECT DISTINCT shared.first, keys.{ROW} AS other
        FROM keys JOIN (SELECT key, min({ROW}) AS first FROM keys GROUP BY key HAVING count(*) > 1) shared
        USING (key) WHERE keys.{ROW} <> shared.first AND keys.{ROW} >= 0""")
    width = op.fingerprint_batch(["probe text for the fingerprint shape"])
    dtype, columns = width.dtype, width.shape[1]
    first_parts, other_parts = [], []
    reader = con.execute(f"""SELECT p.first, p.other, a.fp AS fa, b.fp AS fb FROM pairs p
        JOIN fps a ON a.{ROW} = p.first JOIN fps b ON b.{ROW} = p.other""").fetch_record_batch(BATCH_ROWS)
    for batch in reader:
        fa = np.frombuffer(b"".join(batch.column("fa").to_pylist()), dtype).reshape(-1, columns)
        fb = np.frombuffer(b"".join(batch.column("fb").to_pylist()), dtype).reshape(-1, columns)
        verified = op.verify(fa, fb)
        first_parts.append(batch.column("first").to_numpy()[verified])
        other_parts.append(batch.column("other").to_numpy()[verified])
    first = np.concatenate(first_parts) if first_parts else np.zeros(0, np.int64)
    other = np.concatenate(other_parts) if other_parts else np.zeros(0, np.int64)
    duplicates = duplicate_map(first, other, protected=set(np.unique(first[first < 0]).tolist()))
    if not duplicates:
        return DedupDecision()
    con.register("duplicates", pa.table({"dup": list(duplicates), "kept": list(duplicates.values())}))
    decision = DedupDecision()
    reasons = con.execute(f"""SELECT d.dup, a.fp AS fk, b.fp AS fd, a.name AS source FROM duplicates d
        JOIN fps a ON a.{ROW} = d.kept JOIN fps b ON b.{ROW} = d.dup""").fetch_record_batch(BATCH_ROWS)
    for batch in reasons:
        fk = np.frombuffer(b"".join(batch.column("fk").to_pylist()), dtype).reshape(-1, columns)
        fd = np.frombuffer(b"".join(batch.column("fd").to_pylist()), dtype).reshape(-1, columns)
        for i, (row, source) in enumerate(zip(batch.column("dup").to_pylist(), batch.column("source").to_pylist(),
                                              strict=True)):
            decision.drops[row] = f"{op.reason(fk[i], fd[i])} of {source or 'an earlier document'}"
    con.close()
    return decision


def _repeated_unit_owners(units: ParquetSink, workdir: Path) -> dict[int, int]:
    """{unit hash: first row owning it} for the units found in several documents (line/sentence dedup)."""
    if units.writer is None:
        return {}
    con = connect(workdir, database=None)
    # DISTINCT first: a count(DISTINCT ...) aggregate cannot spill, and ran out of DuckDB's memory at 1M documents
    owners = con.execute(f"""SELECT key, min({ROW}) AS owner FROM (SELECT DISTINCT key, {ROW} FROM
        read_parquet('{units.path}')) GROUP BY key HAVING count(*) > 1""").fetch_arrow_table()
    con.close()
    units = owners.column("key").to_numpy().view(np.uint64).tolist()
    return dict(zip(units, owners.column("owner").to_pylist(), strict=True))
