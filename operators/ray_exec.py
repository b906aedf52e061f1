"""A recipe on Ray with no driver in the data path: workers read the input table, run every step and write the
kept rows, the drops and the signature index straight to storage; the run process submits, watches and commits.

Input: the data files of one Delta table version (from its log, no data read by the driver). One read task per
file numbers its rows `file offset + position`, so row ids follow the table's scan order exactly as the local
executor numbers them: both keep the same document of a duplicate group (the smallest row). `ray.data.read_delta`
(delta-sharing/deltalake under the hood) gives no such position, hence the read tasks.

Steps:
- mappers and filters run in `map_batches`; each batch's per-operator statistics (counts, seconds, a few examples)
  ride in a `__report` column of its first row and are folded batch after batch, on the workers, so only the
  folded reports of the write tasks reach the driver;
- a bucket dedup (exact, MinHash, SimHash) adds each document's fingerprint and bucket keys as columns, groups
  the keys by bucket in a hash shuffle (candidate pairs per bucket), verifies the pairs on a distributed join with
  the fingerprints, and resolves connected components in union-find actors that own hash ranges of row ids
  (Data-Juicer's BTS design: edges routed to the owner of their larger end, merged by message passing until no
  actor changes, then pointer jumping to the component's smallest row). The reasons (verified similarity, name
  of the kept document) are joined on workers and stored in the actors; the documents never move: each batch
  asks the owning actors which of its rows are duplicates (the anti-join) and why;
- line/sentence dedup: units seen in several documents go to the actors owning their hash with their first row;
  each batch asks for the owners of its own units and rewrites its texts.
Incremental runs put the published documents' signature index rows in the same shuffle with negative row ids:
they sort first, so they are the kept side of any duplicate and are never dropped.

Output: Parquet parts written by the tasks into the destination folders; the caller commits them as one table
version (`datamate_resources.tables.commit_parts`) or merges them (`run_ray_batches`, for `datamate clean`, first
writes its input batches as Parquet files and streams the parts back out). A task Ray retries writes new parts;
only the parts whose task result reached the driver are committed, so a retry never duplicates rows.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from operators.base import Deduplicator, Selector, SplitMapper
from operators.dedup.buckets import BucketDeduplicator, bucket_edges
from operators.dedup.lines import DocumentLineDeduplicator
from operators.parquet import parquet_batches
from operators.ray_shards import RayStageResources
from operators.recipe import (
    ALIVE,
    BATCH_ROWS,
    DROP_REASON,
    DROP_STEP,
    EXAMPLES_PER_STEP,
    ROW,
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
from operators.stream import (
    INDEX_SCHEMA,  # noqa: F401 - the signature index rows the workers write
    Sink,
    StreamResult,
    output_schemas,
)

REPORT = "__report"
SHARD_ATTEMPTS = 3  # a dedup step runs again when a node that held shard actors died
PUBLISHED_OFFSET = -(1 << 62)  # published documents' row ids: below every new row, in index scan order
SALT = np.uint64(0x9E3779B97F4A7C15)
IDENTITY_SEPARATOR = "\x1f"
INPUT_PART_ROWS = 10_000  # rows per input file `run_ray_batches` writes: one read task each


def identity_of(table: pa.Table | pa.RecordBatch, columns: Sequence[str]) -> pa.Array:
    """A document's identity: its identity columns joined (the cleaning asset's doc_id + source_uri)."""
    values = [pc.cast(table.column(name), pa.string()) for name in columns]
    return pc.binary_join_element_wise(*values, IDENTITY_SEPARATOR)


# --- storage ------------------------------------------------------------------------------------------------
def filesystem(uri: str, storage_options: dict[str, str] | None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a table URI and its deltalake storage options (local path or s3://)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3":
        return pafs.LocalFileSystem(), parsed.path if parsed.scheme == "file" else uri
    options = storage_options or {}
    endpoint = options.get("aws_endpoint_url")
    kwargs: dict[str, Any] = {"region": options.get("aws_region", "us-east-1")}
    if options.get("aws_access_key_id"):
        kwargs.update(access_key=options["aws_access_key_id"], secret_key=options.get("aws_secret_access_key"))
    if endpoint:
        kwargs.update(endpoint_override=endpoint.split("://", 1)[-1],
                      scheme="http" if endpoint.startswith("http://") else "https")
    return pafs.S3FileSystem(**kwargs), f"{parsed.netloc}{parsed.path}"


@dataclass(frozen=True)
class Source:
    """A Delta table version as (file URI, first row) read tasks; storage options never print."""

    files: tuple[tuple[str, int], ...]
    schema: pa.Schema
    storage_options: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, uri: str, version: int, storage_options: dict[str, str] | None = None) -> Source:
        from deltalake import DeltaTable

        table = DeltaTable(uri, version=version, storage_options=storage_options or None)
        actions = table.get_add_actions(flatten=True)
        rows = dict(zip(actions.column("path").to_pylist(), actions.column("num_records").to_pylist(), strict=True))
        files, offset = [], 0
        base = uri.rstrip("/")
        # the order the local executor scans in (the pyarrow dataset's fragments)
        for fragment in table.to_pyarrow_dataset().get_fragments():
            relative = next((p for p in rows if fragment.path.endswith(p)), None)
            if relative is None:
                raise RecipeError(f"{uri} version {version}: data file {fragment.path} is not in the table's log")
            files.append((f"{base}/{relative}", offset))
            offset += int(rows[relative] or 0)
        return cls(tuple(files), table.to_pyarrow_dataset().schema, dict(storage_options or {}))


@dataclass(frozen=True)
class Destination:
    """Where one output's parts go and the schema they are written with (constants fill named columns)."""

    folder: str
    schema: pa.Schema
    constants: tuple[tuple[str, str], ...] = ()
    storage_options: dict[str, str] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class Part:
    uri: str
    name: str  # the file name inside the destination folder
    rows: int
    bytes: int
    first_row: int


@dataclass
class RayRun:
    stats: list[StepStats]
    kept: list[Part]
    drops: list[Part]
    index: list[Part]

    @property
    def kept_rows(self) -> int:
        return sum(p.rows for p in self.kept)

    @property
    def dropped_rows(self) -> int:
        return sum(p.rows for p in self.drops)


def conform(table: pa.Table, schema: pa.Schema, constants: dict[str, str]) -> pa.Table:
    """The table in `schema`: its columns cast, constants repeated, other columns null."""
    columns = []
    for f in schema:
        if f.name in table.column_names:
            columns.append(table.column(f.name).cast(f.type))
        elif f.name in constants:
            columns.append(pa.repeat(pa.scalar(constants[f.name], f.type), table.num_rows))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _write_part(table: pa.Table, destination: Destination, first_row: int) -> Part | None:
    if table.num_rows == 0:
        return None
    table = conform(table, destination.schema, dict(destination.constants))
    fs, folder = filesystem(destination.folder, destination.storage_options)
    name = f"part-{first_row:020d}-{uuid.uuid4().hex[:12]}.parquet"
    if isinstance(fs, pafs.LocalFileSystem):  # S3 needs no folders (pyarrow would leave marker objects)
        fs.create_dir(folder, recursive=True)
    pq.write_table(table, f"{folder}/{name}", filesystem=fs, row_group_size=10_000)
    size = fs.get_file_info(f"{folder}/{name}").size
    return Part(f"{destination.folder.rstrip('/')}/{name}", name, table.num_rows, size, first_row)


def read_parts(parts: Sequence[Part], storage_options: dict[str, str] | None, columns: list[str] | None = None,
               batch_size: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Stream written parts back, a batch at a time (the asset's statistics sample, incremental merges)."""
    for part in parts:
        fs, path = filesystem(part.uri, storage_options)
        yield from parquet_batches(fs.open_input_file(path), batch_size, columns)


# --- statistics carried with the rows -------------------------------------------------------------------------
def _fold(reports: list[str]) -> dict[int, StepStats]:
    folded: dict[int, StepStats] = {}
    for value in reports:
        for entry in json.loads(value):
            stats = StepStats(**entry)
            if stats.step in folded:
                folded[stats.step].add(stats)
            else:
                folded[stats.step] = stats
    return folded


def _report_json(folded: dict[int, StepStats]) -> str:
    return json.dumps([asdict(s) for s in folded.values()])


def _carry(batch: pa.Table, new: list[StepStats]) -> pa.Table:
    """Fold the batch's carried reports and this step's into the first row's `__report`."""
    reports = batch.column(REPORT).drop_null().to_pylist() if REPORT in batch.column_names else []
    folded = _fold(reports)
    for stats in new:
        if stats.step in folded:
            folded[stats.step].add(stats)
        else:
            folded[stats.step] = stats
    column = ([_report_json(folded)] + [None] * (batch.num_rows - 1)) if batch.num_rows else []
    if REPORT in batch.column_names:
        batch = batch.drop_columns([REPORT])
    return batch.append_column(REPORT, pa.array(column, pa.string()))


def _core(batch: pa.Table) -> tuple[pa.Table, list[str]]:
    """The batch without the columns the executor carries (`__report`, fingerprints, ...)."""
    carried = [c for c in batch.column_names if c.startswith("__") and c not in (ROW, DROP_STEP, DROP_REASON)]
    return batch.drop_columns(carried), carried


def _with(batch: pa.Table, core: pa.Table, carried: list[str]) -> pa.Table:
    for name in carried:
        core = core.append_column(name, batch.column(name))
    return core


def _resolved(value):
    """A value put in the object store (passed by reference in `fn_args`, which Ray Data does not resolve)."""
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


# --- reading ------------------------------------------------------------------------------------------------
def _read_file(item: dict[str, Any], storage_options, text_key: str, stats: pa.StructType | None,
               new_identities, identity_columns: tuple[str, ...]) -> pa.Table:
    fs, path = filesystem(item["uri"], storage_options)
    table = pq.read_table(path, filesystem=fs)
    rows = np.arange(item["offset"], item["offset"] + table.num_rows, dtype=np.int64)
    if new_identities is not None:  # incremental: the new and changed documents only
        wanted = pc.is_in(identity_of(table, identity_columns), _resolved(new_identities))
        table, rows = table.filter(wanted), rows[wanted.to_numpy(zero_copy_only=False)]
    if STATS in table.column_names:
        table = table.drop_columns([STATS])
    n = table.num_rows
    text = pc.fill_null(table.column(text_key).cast(pa.large_string()), "")
    table = table.set_column(table.schema.get_field_index(text_key), text_key, text)
    table = table.append_column(ROW, pa.array(rows))
    table = table.append_column(DROP_STEP, pa.array(np.full(n, ALIVE, dtype=np.int32)))
    table = table.append_column(DROP_REASON, pa.nulls(n, pa.string()))
    table = table.append_column(STATS, pa.nulls(n, stats)) if stats is not None else table
    return table.append_column(REPORT, pa.nulls(n, pa.string()))


def _read_files(batch: dict[str, np.ndarray], *args) -> pa.Table:
    tables = [_read_file({"uri": u, "offset": int(o)}, *args) for u, o in zip(batch["uri"], batch["offset"],
                                                                                strict=True)]
    return pa.concat_tables(tables)


# --- mappers and filters --------------------------------------------------------------------------------------
def _segment(batch: pa.Table, part, text_key: str) -> pa.Table:
    core, carried = _core(batch)
    core, report = apply_steps(core, part, text_key)
    return _carry(_with(batch, core, carried), report)


def _split(batch: pa.Table, step: int, op: SplitMapper, text_key: str) -> pa.Table:
    """A splitting mapper: the carried reports stay on the first rows (pieces copy every other column)."""
    reports = batch.column(REPORT).drop_null().to_pylist()
    out, stats = split_rows(batch.drop_columns([REPORT]), step, op, text_key)
    column = (reports + [None] * (out.num_rows - len(reports)))[: out.num_rows]
    return _carry(out.append_column(REPORT, pa.array(column, pa.string())), [stats])


# --- shard actors ---------------------------------------------------------------------------------------------
def owner(values: np.ndarray, shards: int) -> np.ndarray:
    """The shard owning each row id, bucket key or unit hash: a mixed hash, so neighbours spread over shards."""
    mixed = (np.asarray(values, dtype=np.int64).view(np.uint64) * SALT) >> np.uint64(40)
    return (mixed % np.uint64(shards)).astype(np.int64)


def _as_matrix(blobs: list[bytes], dtype, width: int) -> np.ndarray:
    return np.frombuffer(b"".join(blobs), dtype=dtype).reshape(len(blobs), width)


class DedupShard:
    """One hash range of a dedup step's state, as in Data-Juicer's BTS MinHash: the bucket keys (or line units)
    whose hash it owns, and the fingerprints, names and union-find parent pointers (parent < child) of the rows
    it owns. Shards call each other (a threaded actor), so no state passes through the driver.

    Components by message passing: a message (a, b), a > b, "a and b are connected", goes to the owner of a; it
    sets a's parent or, when a already has one, sends the larger of the two parents on. The smallest row of each
    component ends up its root; pointer jumping then points every row at it."""

    def __init__(self, index: int, shards: int):
        self.index, self.shards = index, shards
        self.peers: list = []
        self.key_chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self.fps: dict[int, bytes] = {}
        self.names: dict[int, str | None] = {}
        self.parent: dict[int, int] = {}
        self.inbox: list[tuple[int, int]] = []
        self.outbox: dict[int, list[tuple[int, int]]] = {}
        self.reasons: dict[int, str] = {}
        self.units: dict[int, int] = {}

    def set_peers(self, peers: list) -> None:
        self.peers = peers

    def ping(self) -> bool:
        return True

    def release(self) -> None:
        """After the step: keep only what applying the decision needs (parents, reasons, unit owners)."""
        self.key_chunks, self.fps, self.names, self.inbox, self.outbox = [], {}, {}, [], {}

    def add_keys(self, keys: np.ndarray, rows: np.ndarray) -> int:
        self.key_chunks.append((keys, rows))
        return len(keys)

    def add_fps(self, rows: np.ndarray, fps: list[bytes], names: list[str | None]) -> int:
        self.fps.update(zip(rows.tolist(), fps, strict=True))
        self.names.update(zip(rows.tolist(), names, strict=True))
        return len(fps)

    def fps_of(self, rows: list[int]) -> list[tuple[bytes, str | None]]:
        return [(self.fps[r], self.names.get(r)) for r in rows]

    def _fetch(self, rows: np.ndarray) -> list[tuple[bytes, str | None]]:
        """Fingerprint and name of each row, from this shard or the owning peers."""
        import ray

        found: list = [None] * rows.size
        owners = owner(rows, self.shards)
        groups = {o: np.flatnonzero(owners == o) for o in np.unique(owners).tolist()}
        replies = ray.get([self.peers[o].fps_of.remote(rows[p].tolist()) for o, p in groups.items()
                           if o != self.index])
        local = [self.fps_of(rows[p].tolist()) for o, p in groups.items() if o == self.index]
        remote = iter(replies)
        for o, positions in groups.items():
            values = local[0] if o == self.index else next(remote)
            for position, value in zip(positions.tolist(), values, strict=True):
                found[position] = value
        return found

    def candidates(self, op: BucketDeduplicator, shape: tuple) -> int:
        """Candidate pairs of the buckets owned here (smallest row of the bucket, each other new row), verified on
        the fingerprints and sent as messages; the keys are freed."""
        if not self.key_chunks:
            return 0
        keys = np.concatenate([k for k, _ in self.key_chunks])
        rows = np.concatenate([r for _, r in self.key_chunks])
        self.key_chunks = []
        first, other = bucket_edges(keys, rows)
        new = other >= 0
        first, other = first[new], other[new]
        if not first.size:
            return 0
        dtype, width = shape
        fa = _as_matrix([fp for fp, _ in self._fetch(first)], dtype, width)
        fb = _as_matrix([fp for fp, _ in self._fetch(other)], dtype, width)
        verified = op.verify(fa, fb)
        for a, b in zip(other[verified].tolist(), first[verified].tolist(), strict=True):
            self._send(a, b)
        return int(verified.sum())

    def _send(self, a: int, b: int) -> None:
        target = int(owner(np.array([a]), self.shards)[0])
        if target == self.index:
            self.inbox.append((a, b))
        else:
            self.outbox.setdefault(target, []).append((a, b))

    def process(self) -> bool:
        """Merge the messages for the rows owned here; True when some are left for other shards."""
        while self.inbox:
            messages, self.inbox = self.inbox, []
            for a, b in messages:
                if a < b:
                    a, b = b, a
                current = self.parent.get(a)
                if a == b or current == b:
                    continue
                if current is None:
                    self.parent[a] = b
                elif b < current:  # a-b and a-current: current joins b
                    self.parent[a] = b
                    self._send(current, b)
                else:
                    self._send(b, current)
        return bool(self.outbox)

    def take(self, target: int) -> list[tuple[int, int]]:
        return self.outbox.pop(target, [])

    def pull(self) -> None:
        import ray

        for messages in ray.get([peer.take.remote(self.index) for peer in self.peers]):
            self.inbox.extend(messages)

    def parents_of(self, rows: list[int]) -> list[int | None]:
        return [self.parent.get(r) for r in rows]

    def jump(self) -> bool:
        """parent = parent's parent; True when a pointer moved."""
        import ray

        if not self.parent:
            return False
        children = np.fromiter(self.parent, dtype=np.int64, count=len(self.parent))
        parents = np.array([self.parent[c] for c in children.tolist()], dtype=np.int64)
        owners = owner(parents, self.shards)
        groups = {o: np.flatnonzero(owners == o) for o in np.unique(owners).tolist()}
        replies = ray.get([self.peers[o].parents_of.remote(parents[p].tolist()) for o, p in groups.items()])
        moved = False
        for positions, reply in zip(groups.values(), replies, strict=True):
            for position, up in zip(positions.tolist(), reply, strict=True):
                if up is not None:
                    self.parent[int(children[position])] = up
                    moved = True
        return moved

    def explain(self, op: BucketDeduplicator, shape: tuple) -> int:
        """The reason of each new duplicate owned here: similarity to its component's root, and the root's name."""
        dups = np.array([d for d in self.parent if d >= 0], dtype=np.int64)
        if not dups.size:
            return 0
        kept = np.array([self.parent[d] for d in dups.tolist()], dtype=np.int64)
        dtype, width = shape
        roots = self._fetch(kept)
        fk = _as_matrix([fp for fp, _ in roots], dtype, width)
        fd = _as_matrix([self.fps[d] for d in dups.tolist()], dtype, width)
        for i, (dup, (_, name)) in enumerate(zip(dups.tolist(), roots, strict=True)):
            self.reasons[dup] = f"{op.reason(fk[i], fd[i])} of {name or 'an earlier document'}"
        return int(dups.size)

    def reasons_of(self, rows: list[int]) -> list[str | None]:
        return [self.reasons.get(r) for r in rows]

    def repeated_units(self) -> int:
        """Line dedup: {unit: first row} for the units owned here that several documents contain."""
        if not self.key_chunks:
            return 0
        units = np.concatenate([k for k, _ in self.key_chunks])
        rows = np.concatenate([r for _, r in self.key_chunks])
        self.key_chunks = []
        self.units = DocumentLineDeduplicator.first_owners([units], rows, rows_per_unit=True)
        return len(self.units)

    def owners_of(self, units: list[int]) -> list[int | None]:
        return [self.units.get(u) for u in units]


def _ask(shards: list, keys: np.ndarray, method: str) -> list:
    """Ask each owning shard about its keys; the answers in the keys' order."""
    import ray

    if keys.size == 0:
        return []
    owners = owner(keys, len(shards))
    answers: list = [None] * keys.size
    groups = {o: np.flatnonzero(owners == o) for o in np.unique(owners).tolist()}
    replies = ray.get([getattr(shards[o], method).remote(keys[p].tolist()) for o, p in groups.items()])
    for positions, reply in zip(groups.values(), replies, strict=True):
        for position, value in zip(positions.tolist(), reply, strict=True):
            answers[position] = value
    return answers


def _send_keys(shards: list, keys: np.ndarray, rows: np.ndarray) -> list:
    owners = owner(keys, len(shards))
    return [shards[o].add_keys.remote(keys[owners == o], rows[owners == o]) for o in np.unique(owners).tolist()]


def _send_fps(shards: list, rows: np.ndarray, fps: list[bytes], names: list) -> list:
    owners = owner(rows, len(shards))
    calls = []
    for o in np.unique(owners).tolist():
        chosen = np.flatnonzero(owners == o).tolist()
        calls.append(shards[o].add_fps.remote(rows[chosen], [fps[i] for i in chosen], [names[i] for i in chosen]))
    return calls


def _flat_keys(keys: pa.ChunkedArray | pa.Array, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts = pc.list_value_length(keys).fill_null(0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(keys).to_numpy(zero_copy_only=False).astype(np.int64)
    return flat, np.repeat(rows, counts)


def _push(table: pa.Table, shards: list, with_fps: bool) -> int:
    """Send a batch's bucket keys (or units) and fingerprints to the shards owning them."""
    import ray

    rows = table.column(ROW).to_numpy()
    keys, key_rows = _flat_keys(table.column("keys"), rows)
    calls = _send_keys(shards, keys, key_rows) if keys.size else []
    if with_fps:
        present = pc.is_valid(table.column("fp")).to_numpy(zero_copy_only=False)
        calls += _send_fps(shards, rows[present], table.column("fp").filter(present).to_pylist(),
                           table.column("name").filter(present).to_pylist()) if present.any() else []
    ray.get(calls)
    return int(keys.size)


def _push_new(batch: pa.Table, step: int, shards: list, with_fps: bool) -> pa.Table:
    table = pa.table({ROW: batch.column(ROW), "keys": batch.column(_keys_column(step)),
                      "fp": batch.column(_fp_column(step)),
                      "name": pa.array(document_names(batch), pa.string())})
    return pa.table({"sent": [_push(table, shards, with_fps)]})


def _push_published(batch: dict[str, np.ndarray], storage_options, step: int, current, shards: list,
                    with_fps: bool) -> pa.Table:
    """The published documents' index rows for `step` (still collected), with negative row ids."""
    sent = 0
    for uri, offset in zip(batch["uri"], batch["offset"], strict=True):
        fs, path = filesystem(uri, storage_options)
        table = pq.read_table(path, filesystem=fs)
        rows = np.arange(PUBLISHED_OFFSET + int(offset), PUBLISHED_OFFSET + int(offset) + table.num_rows,
                         dtype=np.int64)
        wanted = pc.fill_null(pc.and_(pc.equal(table.column("step"), step),
                                      pc.is_in(table.column("identity"), _resolved(current))), False)
        table = table.filter(wanted).append_column(ROW, pa.array(rows[wanted.to_numpy(zero_copy_only=False)]))
        sent += _push(table, shards, with_fps)
    return pa.table({"sent": [sent]})


def _resolve(shards: list) -> None:
    """Message rounds until no shard has anything to send, then pointer jumping to each component's root."""
    import ray

    while any(ray.get([s.process.remote() for s in shards])):
        ray.get([s.pull.remote() for s in shards])
    while any(ray.get([s.jump.remote() for s in shards])):
        pass


# --- dedup steps ----------------------------------------------------------------------------------------------
def _fp_column(step: int) -> str:
    return f"__fp{step}"


def _keys_column(step: int) -> str:
    return f"__keys{step}"


def _err_column(step: int) -> str:
    return f"__err{step}"


def _signatures(batch: pa.Table, step: int, op: Deduplicator, text_key: str) -> pa.Table:
    """Fingerprint and salted bucket keys (or line units) of the live documents as columns; a failure's error."""
    live = np.flatnonzero(batch.column(DROP_STEP).to_numpy(zero_copy_only=False) == ALIVE)
    texts = batch.column(text_key).to_pylist()
    fps, errors = fingerprints_of(op, [texts[i] for i in live])
    fp_col: list[bytes | None] = [None] * batch.num_rows
    keys_col: list[list[int] | None] = [None] * batch.num_rows
    err_col: list[str | None] = [None] * batch.num_rows
    ok = [j for j, e in enumerate(errors) if e is None]
    if isinstance(op, BucketDeduplicator):
        good = np.asarray(fps)[ok] if ok else None
        keys = op.bucket_keys(good) if ok else np.zeros((0, 1), np.uint64)
        salted = (keys ^ (np.arange(keys.shape[1], dtype=np.uint64) * SALT)[None, :]).view(np.int64)
        for position, j in enumerate(ok):
            fp_col[live[j]] = np.asarray(good[position]).tobytes()
            keys_col[live[j]] = salted[position].tolist()
    else:
        for j in ok:
            keys_col[live[j]] = np.asarray(fps[j], dtype=np.uint64).view(np.int64).tolist()
    for j, error in enumerate(errors):
        if error is not None:
            err_col[live[j]] = error
    batch = batch.append_column(_fp_column(step), pa.array(fp_col, pa.binary()))
    batch = batch.append_column(_keys_column(step), pa.array(keys_col, pa.list_(pa.int64())))
    return batch.append_column(_err_column(step), pa.array(err_col, pa.string()))


def _failed(batch: pa.Table, step: int) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    rows = batch.column(ROW).to_numpy()
    live = batch.column(DROP_STEP).to_numpy(zero_copy_only=False) == ALIVE
    errors = batch.column(_err_column(step)).to_pylist()
    return rows, live, {int(r): e for r, e, a in zip(rows, errors, live, strict=True) if a and e is not None}


def _apply_bucket(batch: pa.Table, step: int, text_key: str, shards: list) -> pa.Table:
    """The anti-join: this batch's live rows that the shards hold as duplicates are dropped with their reason."""
    core, carried = _core(batch)
    rows, live, failed = _failed(batch, step)
    asked = rows[live & pc.is_valid(batch.column(_fp_column(step))).to_numpy(zero_copy_only=False)]
    decision = DedupDecision(drops={int(r): why for r, why in zip(asked, _ask(shards, asked, "reasons_of"),
                                                                   strict=True) if why is not None})
    core, stats, _ = apply_dedup_decision(core, step, text_key, decision, failed)
    return _carry(_with(batch, core, carried).drop_columns([_err_column(step)]), [stats])


def _apply_lines(batch: pa.Table, step: int, op: DocumentLineDeduplicator, text_key: str, shards: list) -> pa.Table:
    """Each live document's units that an earlier document owns are removed (the owners asked of the shards)."""
    core, carried = _core(batch)
    rows, live, failed = _failed(batch, step)
    units = batch.column(_keys_column(step)).filter(pa.array(live))
    flat = np.unique(pc.list_flatten(units).to_numpy(zero_copy_only=False).astype(np.int64))
    answers = _ask(shards, flat, "owners_of")
    owners = {int(u): o for u, o in zip(flat.view(np.uint64).tolist(), answers, strict=True) if o is not None}
    texts = batch.column(text_key).filter(pa.array(live)).to_pylist()
    decision = decide_line_dedup(op, texts, rows[live], owners, set(), failed)
    core, stats, _ = apply_dedup_decision(core, step, text_key, decision, failed)
    return _carry(_with(batch, core, carried).drop_columns([_err_column(step)]), [stats])


# --- writing ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outputs:
    kept: Destination
    drops: Destination
    index: Destination | None = None  # with the identity columns: the signature index of the kept documents
    identity_columns: tuple[str, ...] = ("doc_id", "source_uri")


def _write(batch: pa.Table, names: tuple[str, ...], dedup_steps: tuple[int, ...], outputs: Outputs) -> pa.Table:
    """Write the batch's kept rows, drops and index rows; return their parts and the batch's folded report."""
    folded = _fold(batch.column(REPORT).drop_null().to_pylist()) if REPORT in batch.column_names else {}
    batch = batch.sort_by(ROW)
    first_row = int(batch.column(ROW)[0].as_py()) if batch.num_rows else 0
    drop_step = batch.column(DROP_STEP)
    alive = pc.equal(drop_step, ALIVE)
    kept, dropped = batch.filter(alive), batch.filter(pc.invert(alive))
    parts: dict[str, list] = {"kept": [], "drops": [], "index": []}
    core = [c for c in batch.column_names if not c.startswith("__")]
    part = _write_part(kept.select(core), outputs.kept, first_row)
    parts["kept"] += [asdict(part)] if part else []
    if dropped.num_rows:
        operator = pa.array(np.array(names, dtype=object)[dropped.column(DROP_STEP).to_numpy()].tolist(), pa.string())
        drops = dropped.select(core).append_column("operator", operator).append_column("reason",
                                                                                        dropped.column(DROP_REASON))
        part = _write_part(drops, outputs.drops, first_row)
        parts["drops"] += [asdict(part)] if part else []
    if outputs.index is not None and dedup_steps and kept.num_rows:
        identity = identity_of(kept, outputs.identity_columns)
        name = pa.array(document_names(kept), pa.string())
        pieces = []
        for step in dedup_steps:
            fp, keys = kept.column(_fp_column(step)), kept.column(_keys_column(step))
            present = pc.or_(pc.is_valid(fp), pc.is_valid(keys))
            pieces.append(pa.table({"step": pa.repeat(pa.scalar(step, pa.int32()), kept.num_rows),
                                    "identity": identity, "name": name, "fp": fp, "keys": keys}).filter(present))
        part = _write_part(pa.concat_tables(pieces), outputs.index, first_row)
        parts["index"] += [asdict(part)] if part else []
    return pa.table({"parts": [json.dumps(parts)], REPORT: [_report_json(folded)]})


def _carry_published(batch: dict[str, np.ndarray], storage_options, steps: tuple[int, ...], current,
                     destination: Destination) -> pa.Table:
    """The published documents still collected keep their index rows."""
    written = []
    for uri, offset in zip(batch["uri"], batch["offset"], strict=True):
        fs, path = filesystem(uri, storage_options)
        table = pq.read_table(path, filesystem=fs)
        wanted = pc.fill_null(pc.and_(pc.is_in(table.column("step"), pa.array(steps, pa.int32())),
                                      pc.is_in(table.column("identity"), _resolved(current))), False)
        part = _write_part(table.filter(wanted), destination, PUBLISHED_OFFSET + int(offset))
        if part:
            written.append(asdict(part))
    return pa.table({"parts": [json.dumps({"kept": [], "drops": [], "index": written})],
                     REPORT: [_report_json({})]})


# --- the run ----------------------------------------------------------------------------------------------------
def _shape(op: BucketDeduplicator) -> tuple:
    probe = np.asarray(op.fingerprint_batch(["probe text for the fingerprint shape"]))
    return probe.dtype, probe.shape[1]


def task_options(resources: RayStageResources | None, cluster: dict[str, float]) -> tuple[dict, dict]:
    """The map tasks' Ray options (CPUs, memory) and batch size from the spec's `ray:` section (`cpus_per_actor`,
    `memory_mb`, `rows_per_shard`); None: Ray's defaults. A task the cluster cannot hold is an error naming the
    fields (the check the other Ray stages make for their actors)."""
    if resources is None:
        return {}, {}
    dataclasses.replace(resources, actors=None).actor_count(cluster, "cleaning")
    options: dict[str, Any] = {"num_cpus": resources.cpus_per_actor}
    if resources.memory_mb:
        options["memory"] = resources.memory_mb * 2**20
    return options, {"batch_size": resources.rows_per_shard}


def run_ray_tables(recipe: Recipe, source: Source, outputs: Outputs, *, new_identities: pa.Array | None = None,
                   index: Source | None = None, current: pa.Array | None = None, shards: int | None = None,
                   resources: RayStageResources | None = None,
                   log: Callable[[str], None] | None = None) -> RayRun:
    """Run `recipe` over `source` on the connected Ray cluster (call `ray.init` first); write to `outputs`.

    `new_identities`: only these documents run (an incremental run). `index` + `current`: the published
    documents' signature index, of which the rows of the still-collected documents (`current` identities) take
    part in every dedup step and are carried into the new index. `resources` (the spec's `ray:`): CPUs and memory
    per map task, rows per batch, and `actors`: the dedup shard actors per step (default: one per cluster CPU;
    they reserve no CPU, so any number fits)."""
    import ray

    log = log or (lambda message: None)
    text_key = recipe.text_key
    if text_key not in source.schema.names:
        raise RecipeError(f"input has no text column {text_key!r} (columns: {', '.join(source.schema.names)})")
    cluster = ray.cluster_resources()
    task, batch = task_options(resources, cluster)
    cpus = max(1, int(cluster.get("CPU", 1)))
    shards = shards or (resources.actors if resources else None) or cpus
    id_columns = outputs.identity_columns
    new_ref = ray.put(new_identities) if new_identities is not None else None
    current_ref = ray.put(current) if current is not None and index is not None else None
    files = pa.table({"uri": [u for u, _ in source.files], "offset": [o for _, o in source.files]})
    ds = (ray.data.from_arrow(files).repartition(max(1, len(source.files)))
          .map_batches(_read_files, batch_size=1, batch_format="numpy", **task,
                       fn_args=(source.storage_options, text_key, stats_type(recipe.operators), new_ref, id_columns)))
    index_files = pa.table({"uri": [u for u, _ in index.files], "offset": [o for _, o in index.files]}) \
        if index is not None and index.files and current_ref is not None else None
    stats = [StepStats(i, name, op.kind) for i, (name, op) in enumerate(zip(recipe.names, recipe.operators,
                                                                            strict=True))]
    dedup_steps: list[int] = []
    # threaded: shards ask each other for fingerprints and parents while answering
    shard_class = ray.remote(num_cpus=0, max_restarts=0, max_concurrency=8)(DedupShard)
    kept_up: list = []  # shards of finished steps: lost blocks of their output are rebuilt by asking them
    try:
        for part in segments(recipe.operators):
            step, op = part[0]
            started = time.perf_counter()
            if isinstance(op, BucketDeduplicator | DocumentLineDeduplicator):
                dedup_steps.append(step)
                ds = ds.map_batches(_signatures, fn_args=(step, op, text_key), batch_format="pyarrow", **task,
                                    **batch).materialize()
                count = getattr(op, "shards", None) or shards  # ray_bts_minhash_deduplicator's union_find_parallel_num
                published = (ray.data.from_arrow(index_files).repartition(max(1, index_files.num_rows)), index,
                             current_ref) if index_files is not None else None
                for attempt in range(1, SHARD_ATTEMPTS + 1):
                    nodes = _worker_nodes()
                    group = [shard_class.options(scheduling_strategy=_on(nodes, i)).remote(i, count)
                             for i in range(count)]
                    try:
                        decided = _dedup_step(ds, step, op, text_key, group, published, {**task, **batch}, log)
                        kept_up += group
                        ray.get([shard.release.remote() for shard in group])
                        break
                    except ray.exceptions.RayError as error:
                        # a node that died took shards with it: their state is rebuilt by running the step again
                        lost = not all(_alive(shard) for shard in group)
                        for shard in group:
                            ray.kill(shard)
                        if attempt == SHARD_ATTEMPTS or not lost:
                            raise
                        log(f"step {step} {op.name} (ray): a shard actor was lost ({type(error).__name__}); "
                            f"running the step again (attempt {attempt + 1} of {SHARD_ATTEMPTS})")
                ds = decided
                stats[step].seconds = time.perf_counter() - started
            elif isinstance(op, Deduplicator):
                raise RecipeError(f"{op.name} has no distributed implementation; use executor: local")
            elif isinstance(op, Selector):  # only the row ids and the selector's fields reach the driver
                ds = ds.materialize()
                columns = [ROW, DROP_STEP, *op.fields()]
                decision = decide_selection(op, pa.concat_tables(ray.get(ds.select_columns(columns).to_arrow_refs())),
                                            text_key)
                ds = ds.map_batches(_apply_selection, fn_args=(step, text_key, decision), batch_format="pyarrow",
                                    **task, **batch)
                stats[step].seconds = time.perf_counter() - started
            elif isinstance(op, SplitMapper):
                ds = ds.map_batches(_split, fn_args=(step, op, text_key), batch_format="pyarrow", **task, **batch)
            else:
                ds = ds.map_batches(_segment, fn_args=(part, text_key), batch_format="pyarrow", **task, **batch)
        written = ds.map_batches(_write, fn_args=(tuple(recipe.names), tuple(dedup_steps), outputs),
                                 batch_size=BATCH_ROWS, batch_format="pyarrow", **task)
        if outputs.index is not None and index_files is not None and dedup_steps:
            written = written.union(
                ray.data.from_arrow(index_files).repartition(max(1, index_files.num_rows))
                .map_batches(_carry_published, batch_size=1, batch_format="numpy", **task,
                             fn_args=(index.storage_options, tuple(dedup_steps), current_ref, outputs.index)))
        results = written.take_all()  # one small row per write task: its parts and folded statistics
    finally:
        for shard in kept_up:
            ray.kill(shard)
    return _collect(recipe, stats, results, log)


def _dedup_step(ds, step: int, op: Deduplicator, text_key: str, group: list, published, task: dict, log):
    """Keys and fingerprints to the shards, components (or repeated units) resolved there, and the decision applied
    to the documents where they are; returns the materialized result (the shards can go)."""
    import ray

    bucket = isinstance(op, BucketDeduplicator)
    ray.get([s.set_peers.remote(group) for s in group])
    pushed = ds.map_batches(_push_new, fn_args=(step, group, bucket), batch_format="pyarrow", **task)
    if published is not None:
        files, index, current_ref = published
        options = {name: value for name, value in task.items() if name != "batch_size"}
        pushed = pushed.union(files.map_batches(_push_published, batch_size=1, batch_format="numpy", **options,
                                                fn_args=(index.storage_options, step, current_ref, group, bucket)))
    pushed.materialize()
    if bucket:
        shape = _shape(op)
        edges = sum(ray.get([s.candidates.remote(op, shape) for s in group]))
        _resolve(group)
        dups = sum(ray.get([s.explain.remote(op, shape) for s in group]))
        log(f"step {step} {op.name} (ray): {len(group)} shard actors, {edges} verified candidate pairs, "
            f"{dups} duplicates")
        return ds.map_batches(_apply_bucket, fn_args=(step, text_key, group), batch_format="pyarrow",
                              **task).materialize()
    units = sum(ray.get([s.repeated_units.remote() for s in group]))
    log(f"step {step} {op.name} (ray): {len(group)} shard actors, {units} units repeated across documents")
    return ds.map_batches(_apply_lines, fn_args=(step, op, text_key, group), batch_format="pyarrow",
                          **task).materialize()


def _worker_nodes() -> list[str]:
    """The alive nodes that have CPUs. Shard actors reserve none, so Ray's SPREAD would also put them on a head
    started with no CPUs (as a production head is, to only schedule): their buckets and union-find would then
    sit in the head's memory."""
    import ray

    return [node["NodeID"] for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU", 0) > 0]


def _on(nodes: list[str], index: int):
    """Shard `index`'s placement: round robin over `nodes`. Hard: a soft affinity was seen spilled back to the
    no-CPU head on a busy cluster; a node gone by then fails the attempt and the step runs again on the others."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(nodes[index % len(nodes)], soft=False) if nodes else "SPREAD"


def _alive(shard) -> bool:
    import ray

    try:
        return ray.get(shard.ping.remote(), timeout=60)
    except ray.exceptions.RayError:
        return False


def _apply_selection(batch: pa.Table, step: int, text_key: str, decision: DedupDecision) -> pa.Table:
    core, carried = _core(batch)
    core, stats, _ = apply_dedup_decision(core, step, text_key, decision, {})
    return _carry(_with(batch, core, carried), [stats])


def _collect(recipe: Recipe, stats: list[StepStats], results: list[dict], log) -> RayRun:
    kept, drops, index = [], [], []
    for row in results:
        parts = json.loads(row["parts"])
        kept += [Part(**p) for p in parts["kept"]]
        drops += [Part(**p) for p in parts["drops"]]
        index += [Part(**p) for p in parts["index"]]
        for step, folded in _fold([row[REPORT]]).items():
            seconds = stats[step].seconds
            stats[step].add(folded)
            if recipe.operators[step].kind in ("deduplicator", "selector"):
                stats[step].seconds = seconds  # the step's wall time, measured here
    for s, name in zip(stats, recipe.names, strict=True):
        s.operator = name
        s.examples = s.examples[:EXAMPLES_PER_STEP]
        log(f"step {s.step} {name} (ray): {s.docs_in} in, {s.dropped} dropped, {s.changed} changed, "
            f"{s.seconds:.1f}s")
    order = attrgetter("first_row")
    return RayRun(stats, sorted(kept, key=order), sorted(drops, key=order), sorted(index, key=order))


def parts_dataset(parts: Sequence[Part], storage_options: dict[str, str] | None) -> pds.Dataset | None:
    """The written parts as one pyarrow dataset (None when there are none)."""
    if not parts:
        return None
    fs, _ = filesystem(parts[0].uri, storage_options)
    return pds.dataset([filesystem(p.uri, storage_options)[1] for p in parts], filesystem=fs, format="parquet")


def run_ray_batches(recipe: Recipe, batches: Iterable[pa.Table | pa.RecordBatch], workdir: Path, kept: Sink,
                    drops: Sink, *, part_rows: int = INPUT_PART_ROWS, resources: RayStageResources | None = None,
                    log: Callable[[str], None] | None = None) -> StreamResult:
    """`run_stream`'s contract on the connected Ray cluster, for input that is no table yet (`datamate clean`).

    The batches are written to Parquet files of `part_rows` rows in `workdir`, numbered in order; the workers run
    `run_ray_tables` on them and write the kept rows and drops as parts into `workdir` too, which are then streamed
    into `kept` (input order) and `drops`. The workers read and write `workdir`: on a cluster it must be a folder
    the nodes share (as Data-Juicer's Ray mode needs its dataset and export paths to be)."""
    folder = workdir / "input"
    folder.mkdir(parents=True, exist_ok=True)
    files: list[tuple[str, int]] = []
    schema: pa.Schema | None = None
    writer: pq.ParquetWriter | None = None
    rows = part = 0
    for batch in batches:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        schema = schema or table.schema
        start = 0
        while start < table.num_rows:
            if writer is None or part >= part_rows:
                if writer is not None:
                    writer.close()
                path = folder / f"part-{len(files):06d}.parquet"
                writer, part = pq.ParquetWriter(path, schema), 0
                files.append((str(path.resolve()), rows))
            take = min(part_rows - part, table.num_rows - start)
            writer.write_table(table.slice(start, take).cast(schema))
            start, part, rows = start + take, part + take, rows + take
    if writer is not None:
        writer.close()
    if schema is None:  # no input: nothing to send to the cluster
        return StreamResult([StepStats(i, name, op.kind) for i, (name, op) in enumerate(zip(
            recipe.names, recipe.operators, strict=True))], 0, 0, recipe.hash)
    kept_schema, drops_schema = output_schemas(schema, recipe)
    outputs = Outputs(Destination(str((workdir / "kept").resolve()), kept_schema),
                      Destination(str((workdir / "drops").resolve()), drops_schema))
    run = run_ray_tables(recipe, Source(tuple(files), schema), outputs, resources=resources, log=log)
    for parts, sink in ((run.kept, kept), (run.drops, drops)):
        for table in read_parts(parts, None):
            sink.write(table)
    return StreamResult(run.stats, run.kept_rows, run.dropped_rows, recipe.hash)
