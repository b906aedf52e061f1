"""Delta Lake tables: every table-valued stage output is a versioned Delta table at `<storage root>/<dataset>/<stage>/`.

Between stages passes a `TableRef` (table URI + version), never the data: a step reads exactly the version its
upstream materialization recorded, lazily, in batches (`TableRef.batches`), as a pyarrow dataset, or with DuckDB
for aggregates. Each write commits exactly one version, so a reader never sees half a write and any version can be
read again (`open_table("debian_docs", "cleaned", version=3)`).

On S3 the commit uses a conditional put (`If-None-Match`, which AWS S3, MinIO and moto honour): two writers racing
for the same version cannot both win, so concurrent runs never corrupt a table; the loser fails naming the table.
delta-rs's unsafe-rename setting would be simpler but gives no such guarantee.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pds
from deltalake import CommitProperties, DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from datamate_resources.storage import ObjectStore

BATCH_ROWS = 10_000
# delta-rs buffers a whole Parquet row group in memory before writing it (1M rows by default: ~1 GB of text);
# 10k rows keeps a write's memory flat whatever the table's size.
WRITER = WriterProperties(max_row_group_size=10_000)
# ... and a whole data file in memory before uploading it: files of ~32 MB bound that too.
TARGET_FILE_BYTES = 32 * 1024 * 1024
RUN_ID_KEY = "dagster_run_id"  # the commit's custom metadata: which Dagster run wrote a version


class TableError(RuntimeError):
    """A table that cannot be used: missing, corrupt or written by someone else at the same time."""


def reason(error: BaseException) -> str:
    """delta-rs errors carry a Rust backtrace after their first line; a person needs the first line only."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(".")


def unreadable(uri: str, version: int, error: BaseException) -> TableError:
    return TableError(f"Delta table {uri} version {version} cannot be read: {reason(error)}. A data file is missing "
                      "or corrupt (deleted by hand, or removed by retention when the version is old): re-materialize "
                      "the asset that writes it, or read a later version.")


@dataclass(frozen=True)
class TableRef:
    """One committed version of a Delta table. Pickles to Ray workers; storage options (keys) never print."""

    uri: str
    version: int
    storage_options: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def delta(self) -> DeltaTable:
        try:
            return DeltaTable(self.uri, version=self.version, storage_options=self.storage_options or None)
        except (DeltaError, OSError) as error:
            raise TableError(f"Delta table {self.uri} (version {self.version}) cannot be opened: {reason(error)}. "
                             "Re-materialize the asset that writes it.") from error

    def delta_latest(self) -> DeltaTable:
        return DeltaTable(self.uri, storage_options=self.storage_options or None)

    def dataset(self) -> pds.Dataset:
        return self.delta().to_pyarrow_dataset()

    @property
    def schema(self) -> pa.Schema:
        return self.dataset().schema

    @property
    def num_rows(self) -> int:
        """From the files' statistics in the Delta log: no data is read."""
        actions = self.delta().get_add_actions(flatten=True)
        return sum(actions.column("num_records").to_pylist()) if actions.num_rows else 0

    @property
    def num_bytes(self) -> int:
        actions = self.delta().get_add_actions(flatten=True)
        return sum(actions.column("size_bytes").to_pylist()) if actions.num_rows else 0

    @property
    def num_files(self) -> int:
        return len(self.delta().file_uris())

    def batches(self, columns: list[str] | None = None, batch_size: int = BATCH_ROWS,
                filter: pds.Expression | None = None) -> Iterator[pa.RecordBatch]:
        """Scan in record batches: memory holds a batch at a time, whatever the table's size.

        The table is opened now, not when the first batch is pulled: batches streamed into `write` are pulled
        inside deltalake's async runtime, where opening a Delta table panics."""
        dataset = self.dataset()

        def scan() -> Iterator[pa.RecordBatch]:
            # File by file, on this thread: a stage consumes slower than Parquet decodes, and the dataset
            # scanner's read-ahead ran ahead through the whole table (1.4 GB after 6 batches of a 1M-row table).
            try:
                for fragment in dataset.get_fragments(filter=filter):
                    for batch in fragment.to_batches(schema=dataset.schema, columns=columns, filter=filter,
                                                     batch_size=batch_size, use_threads=False):
                        if batch.num_rows:
                            yield batch
            except (OSError, pa.ArrowException) as error:
                raise unreadable(self.uri, self.version, error) from error
        return scan()

    def read(self, columns: list[str] | None = None, filter: pds.Expression | None = None) -> pa.Table:
        """The whole (filtered) table: for small tables and a few columns only."""
        try:
            return self.dataset().to_table(columns=columns, filter=filter)
        except (OSError, pa.ArrowException) as error:
            raise unreadable(self.uri, self.version, error) from error

    def head(self, rows: int = 5, columns: list[str] | None = None) -> pa.Table:
        try:
            return self.dataset().head(rows, columns=columns)
        except (OSError, pa.ArrowException) as error:
            raise unreadable(self.uri, self.version, error) from error

    def sample(self, rows: int, seed: int = 0, columns: list[str] | None = None) -> pa.Table:
        """A uniform sample of at most `rows` rows in table order, by reservoir sampling over batches."""
        rng = random.Random(seed)
        chosen: list[int] = []
        seen = 0
        for batch in self.batches(columns=[]):
            for _ in range(batch.num_rows):
                if len(chosen) < rows:
                    chosen.append(seen)
                else:
                    slot = rng.randrange(seen + 1)
                    if slot < rows:
                        chosen[slot] = seen
                seen += 1
        wanted, parts, offset = sorted(chosen), [], 0
        position = 0
        for batch in self.batches(columns=columns):
            end = offset + batch.num_rows
            local = []
            while position < len(wanted) and wanted[position] < end:
                local.append(wanted[position] - offset)
                position += 1
            if local:
                parts.append(batch.take(pa.array(local, pa.int64())))
            offset = end
        schema = self.dataset().schema if columns is None else pa.schema([self.schema.field(c) for c in columns])
        return pa.Table.from_batches(parts, schema=schema) if parts else schema.empty_table()

    def history(self) -> list[dict[str, Any]]:
        return self.delta_latest().history()


def delta_options(storage: ObjectStore) -> dict[str, str]:
    """deltalake's storage options for this store (object_store keys); empty for a local directory."""
    if not storage.is_s3:
        return {}
    options = {"conditional_put": "etag", "aws_region": storage.region_name or "us-east-1"}
    if storage.endpoint_url:
        options["aws_endpoint_url"] = storage.endpoint_url
        if storage.endpoint_url.startswith("http://"):
            options["aws_allow_http"] = "true"
    if storage.aws_access_key_id:
        options["aws_access_key_id"] = storage.aws_access_key_id
    if storage.aws_secret_access_key:
        options["aws_secret_access_key"] = storage.aws_secret_access_key
    return options


def table_uri(storage: ObjectStore, dataset: str, stage: str) -> str:
    return storage.uri(dataset, stage) if storage.is_s3 else storage.path(dataset, stage)


def current(storage: ObjectStore, dataset: str, stage: str, version: int | None = None) -> TableRef | None:
    """The latest (or the given) version of `<dataset>/<stage>`, or None when the table was never written."""
    uri, options = table_uri(storage, dataset, stage), delta_options(storage)
    try:
        table = DeltaTable(uri, storage_options=options or None)
        if version is not None and version != table.version():
            if version > table.version() or version < 0:
                raise TableError(f"Delta table {uri} has no version {version}: its latest is {table.version()} "
                                 "(`datamate datasets` lists the versions).")
            table.load_as_version(version)
    except TableNotFoundError:
        return None
    except (DeltaError, OSError) as error:
        cause = "is corrupt" if version is None else f"is corrupt or no longer holds version {version}"
        raise TableError(f"Delta table {uri} cannot be opened: {reason(error)}. Its log (_delta_log) {cause}: "
                         f"restore the folder from a backup, or delete it and re-materialize {dataset}/{stage} "
                         "(its versions are lost).") from error
    return TableRef(uri, table.version(), options)


TableData = pa.Table | pa.RecordBatchReader | Iterable[pa.RecordBatch]


def write(storage: ObjectStore, dataset: str, stage: str, data: TableData,
          schema: pa.Schema | None = None, run_id: str | None = None) -> TableRef:
    """Replace the table's content with `data` as one new version (streamed: batches are written as they come)."""
    if not isinstance(data, pa.Table | pa.RecordBatchReader):
        if schema is None:
            raise ValueError("writing an iterable of batches needs its schema")
        data = pa.RecordBatchReader.from_batches(schema, data)
    uri, options = table_uri(storage, dataset, stage), delta_options(storage)
    if not storage.is_s3:
        storage.fs.makedirs(uri, exist_ok=True)
    existing = current(storage, dataset, stage)
    # Writing through the opened table tells us the version we committed, even if another run commits next.
    target = existing.delta_latest() if existing else uri
    try:
        write_deltalake(target, data, mode="overwrite", schema_mode="overwrite", writer_properties=WRITER,
                        target_file_size=TARGET_FILE_BYTES,
                        storage_options=None if existing or not options else options,
                        commit_properties=_commit_properties(run_id, creating=existing is None))
    except CommitFailedError as error:
        raise TableError(f"Another run committed to {uri} at the same time; this run's write was not committed "
                         "and the table keeps the other run's version. Re-run to write it again. "
                         f"({reason(error)})") from error
    # Without commit retries, creating the table can only have committed its first version.
    return TableRef(uri, target.version() if existing else 0, options)


def append(storage: ObjectStore, dataset: str, stage: str, rows: pa.Table, run_id: str | None = None) -> TableRef:
    """Add `rows` to the table as one new version, without reading it (for logs such as `llm_usage`): appends of
    concurrent runs do not conflict, delta-rs commits both."""
    existing = current(storage, dataset, stage)
    if existing is None:
        return write(storage, dataset, stage, rows, run_id=run_id)
    target = existing.delta_latest()
    write_deltalake(target, rows, mode="append", writer_properties=WRITER, commit_properties=_commit_properties(run_id))
    return TableRef(existing.uri, target.version(), existing.storage_options)


def commit_parts(storage: ObjectStore, dataset: str, stage: str, parts: Iterable[tuple[str, int, int]],
                 schema: pa.Schema, run_id: str | None = None) -> TableRef:
    """Replace the table's content with Parquet files already written into its folder (by Ray workers), as one
    version: `parts` are (file name in the table's folder, rows, bytes). No data passes through this process."""
    from deltalake import Schema
    from deltalake.transaction import AddAction, create_table_with_add_actions

    uri, options = table_uri(storage, dataset, stage), delta_options(storage)
    now = int(time.time() * 1000)
    actions = [AddAction(name, size, {}, now, True, json.dumps({"numRecords": rows})) for name, rows, size in parts]
    existing = current(storage, dataset, stage)
    try:
        if existing is None:
            if not storage.is_s3:
                storage.fs.makedirs(uri, exist_ok=True)
            # delta-rs takes its own Schema here (a pyarrow schema is refused), but a pyarrow one for overwrites.
            create_table_with_add_actions(uri, Schema.from_arrow(schema), actions, mode="error",
                                          storage_options=options or None,
                                          commit_properties=_commit_properties(run_id, creating=True))
            return TableRef(uri, 0, options)
        table = existing.delta_latest()
        table.create_write_transaction(actions, mode="overwrite", schema=schema,
                                       commit_properties=_commit_properties(run_id))
    except CommitFailedError as error:
        raise TableError(f"Another run committed to {uri} at the same time; this run's write was not committed "
                         "and the table keeps the other run's version. Re-run to write it again. "
                         f"({reason(error)})") from error
    return TableRef(uri, table.version(), options)


def merge(storage: ObjectStore, dataset: str, stage: str, changes: pa.Table | pa.RecordBatchReader, keys: list[str],
          deleted_column: str, run_id: str | None = None) -> tuple[TableRef, dict[str, int]]:
    """Apply `changes` as one version: rows matching on `keys` are updated, or deleted where `deleted_column` is
    true; new rows are inserted. Unchanged rows are left as they are (no rewrite of the table)."""
    uri, options = table_uri(storage, dataset, stage), delta_options(storage)
    table = DeltaTable(uri, storage_options=options or None)
    columns = [name for name in changes.schema.names if name != deleted_column]
    on = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    try:
        metrics = (table.merge(changes, predicate=on, source_alias="s", target_alias="t", writer_properties=WRITER,
                               commit_properties=_commit_properties(run_id))
                   .when_matched_delete(predicate=f"s.{deleted_column}")
                   .when_matched_update({c: f"s.{c}" for c in columns}, predicate=f"NOT s.{deleted_column}")
                   .when_not_matched_insert({c: f"s.{c}" for c in columns}, predicate=f"NOT s.{deleted_column}")
                   .execute())
    except CommitFailedError as error:
        raise TableError(f"Another run committed to {uri} at the same time; this run's merge was not committed. "
                         f"Re-run to apply it. ({reason(error)})") from error
    counts = {name: int(metrics.get(name, 0)) for name in
              ("num_target_rows_inserted", "num_target_rows_updated", "num_target_rows_deleted")}
    return TableRef(uri, table.version(), options), counts


def _commit_properties(run_id: str | None, creating: bool = False) -> CommitProperties:
    # Creating a table, no commit retry: delta-rs would rebase the loser of two writers racing to create it onto
    # the winner's first version as a blind append, so both runs' rows would land. On an existing table its
    # conflict checker already fails an overwrite when another run committed data meanwhile, and lets it through
    # a commit that changed no data (e.g. the maintenance job's vacuum).
    return CommitProperties(custom_metadata={RUN_ID_KEY: run_id} if run_id else None,
                            max_commit_retries=0 if creating else None)


# --- versions and housekeeping ----------------------------------------------------------------------------
# Commits that change no data: the maintenance job's own. "Keep the last N versions" counts the others.
HOUSEKEEPING_OPERATIONS = frozenset({"OPTIMIZE", "VACUUM START", "VACUUM END"})


def datasets(storage: ObjectStore) -> list[str]:
    """Datasets with at least one table in this storage."""
    return sorted({path.rstrip("/").split("/")[-3] for path in storage.fs.glob(f"{storage.root}/*/*/_delta_log")})


def stages(storage: ObjectStore, dataset: str) -> list[str]:
    """The stages of `dataset` that have a table."""
    return sorted(path.rstrip("/").split("/")[-2] for path in storage.fs.glob(f"{storage.path(dataset)}/*/_delta_log"))


def versions(ref: TableRef, limit: int | None = None) -> list[dict[str, Any]]:
    """The table's versions, newest first, from its log: version, committed (UTC), operation, the Dagster run that
    wrote it and its rows (from file statistics, no data read)."""
    listed = []
    for entry in ref.delta_latest().history(limit):
        version = entry["version"]
        listed.append({
            "version": version,
            "committed": datetime.fromtimestamp(entry["timestamp"] / 1000, UTC),
            "operation": entry.get("operation", ""),
            "run_id": entry.get(RUN_ID_KEY),
            "rows": TableRef(ref.uri, version, ref.storage_options).num_rows,
        })
    return listed


def housekeep(storage: ObjectStore, dataset: str, stage: str, keep_versions: int | None, keep_days: float | None,
              compact: bool, min_file_age_hours: int, protect: Iterable[int] = (),
              run_id: str | None = None) -> dict[str, Any]:
    """Compact small files, then delete the files no kept version needs (Delta vacuum) and expired log entries.

    Kept: the latest version, the versions in `protect` (those a Dagster materialization recorded, which
    downstream steps read), the last `keep_versions` data versions and those committed in the last `keep_days`
    days; with neither set every version is kept. Files younger than `min_file_age_hours` are never deleted: a
    running write may own them (files of a killed write are deleted once older)."""
    ref = current(storage, dataset, stage)
    if ref is None:
        raise TableError(f"{table_uri(storage, dataset, stage)} is not a Delta table: nothing to maintain.")
    table = ref.delta_latest()
    done: dict[str, Any] = {"files_compacted": 0, "files_removed": 0, "bytes_removed": 0, "kept_versions": []}
    if compact:
        metrics = table.optimize.compact(commit_properties=_commit_properties(run_id))
        done["files_compacted"] = int(metrics.get("numFilesRemoved", 0))
    if keep_versions is None and keep_days is None:
        table.create_checkpoint()
        table.cleanup_metadata()
        return done
    # One group per data version, with the housekeeping versions after it (same rows, e.g. compacted): a kept
    # data version is kept as the last version of its group, so the files compaction replaced can go.
    groups: list[list[dict[str, Any]]] = []
    for entry in sorted(table.history(), key=lambda entry: entry["version"]):
        if groups and entry.get("operation") in HOUSEKEEPING_OPERATIONS:
            groups[-1].append(entry)
        else:
            groups.append([entry])
    chosen = groups[-keep_versions:] if keep_versions else []
    if keep_days:
        cutoff_ms = (datetime.now(UTC) - timedelta(days=keep_days)).timestamp() * 1000
        chosen += [group for group in groups if group[0]["timestamp"] >= cutoff_ms]
    kept = {table.version(), *protect, *(group[-1]["version"] for group in chosen)}
    done["kept_versions"] = sorted(kept)
    sizes = _file_sizes(storage, dataset, stage)
    removed = table.vacuum(retention_hours=min_file_age_hours, enforce_retention_duration=False, dry_run=False,
                           full=True, keep_versions=sorted(kept), commit_properties=_commit_properties(run_id))
    # vacuum also names files an earlier vacuum deleted (their tombstones stay in the log): count those it found.
    removed = [name for name in removed if name in sizes]
    done["files_removed"] = len(removed)
    done["bytes_removed"] = sum(sizes[name] for name in removed)
    table.create_checkpoint()
    table.cleanup_metadata()
    return done


def _file_sizes(storage: ObjectStore, dataset: str, stage: str) -> dict[str, int]:
    """Size of every file of the table by its path relative to the table's folder (one listing)."""
    root = storage.path(dataset, stage)
    return {path[len(root) + 1:]: info.get("size", 0) for path, info in storage.fs.find(root, detail=True).items()}


def read_stage(storage: ObjectStore, dataset: str, stage: str, version: int | None = None,
               columns: list[str] | None = None) -> pa.Table | None:
    """A whole stage output as a table (tests, small outputs); None when it was never written."""
    ref = current(storage, dataset, stage, version)
    return None if ref is None else ref.read(columns)


def open_table(dataset: str, stage: str, version: int | None = None) -> pds.Dataset:
    """From Python: a stage's table (any version) as a lazy pyarrow dataset, with this environment's storage."""
    from datamate_resources import open_storage
    from datamate_resources.settings import Settings

    ref = current(open_storage(Settings.from_env()), dataset, stage, version)
    if ref is None:
        raise LookupError(f"{dataset}/{stage} has no table yet: materialize it first")
    return ref.dataset()
