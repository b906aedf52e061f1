"""Delta Lake tables: every table-valued stage output is a versioned Delta table at `<storage root>/<dataset>/<stage>/`.

Between stages passes a `TableRef` (table URI + version), never the data: a step reads exactly the version its
upstream materialization recorded, lazily, in batches (`TableRef.batches`), as a pyarrow dataset, or with DuckDB
for aggregates. Each write commits exactly one version, so a reader never sees half a write and any version can be
read again (`open_table("debian_docs", "cleaned", version=3)`).

On S3 the commit uses a conditional put (`If-None-Match`, which AWS S3, MinIO and moto honour): two writers racing
for the same version cannot both win, so concurrent runs never corrupt a table; the loser fails naming the table.
`AWS_S3_ALLOW_UNSAFE_RENAME` would be simpler but gives no such guarantee.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pds
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from datamate_resources.storage import ObjectStore

BATCH_ROWS = 10_000


class TableError(RuntimeError):
    """A table that cannot be used: missing, corrupt or written by someone else at the same time."""


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
            raise TableError(f"Delta table {self.uri} (version {self.version}) cannot be read: {error}. "
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
        """Scan in record batches: memory holds a batch at a time, whatever the table's size."""
        scanner = self.dataset().scanner(columns=columns, filter=filter, batch_size=batch_size)
        for batch in scanner.to_batches():
            if batch.num_rows:
                yield batch

    def read(self, columns: list[str] | None = None, filter: pds.Expression | None = None) -> pa.Table:
        """The whole (filtered) table: for small tables and a few columns only."""
        return self.dataset().to_table(columns=columns, filter=filter)

    def head(self, rows: int = 5, columns: list[str] | None = None) -> pa.Table:
        return self.dataset().head(rows, columns=columns)

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
    options = {"conditional_put": "etag", "AWS_REGION": storage.region_name or "us-east-1"}
    if storage.endpoint_url:
        options["AWS_ENDPOINT_URL"] = storage.endpoint_url
        if storage.endpoint_url.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if storage.aws_access_key_id:
        options["AWS_ACCESS_KEY_ID"] = storage.aws_access_key_id
    if storage.aws_secret_access_key:
        options["AWS_SECRET_ACCESS_KEY"] = storage.aws_secret_access_key
    return options


def table_uri(storage: ObjectStore, dataset: str, stage: str) -> str:
    return storage.uri(dataset, stage) if storage.is_s3 else storage.path(dataset, stage)


def current(storage: ObjectStore, dataset: str, stage: str, version: int | None = None) -> TableRef | None:
    """The latest (or the given) version of `<dataset>/<stage>`, or None when the table was never written."""
    uri, options = table_uri(storage, dataset, stage), delta_options(storage)
    try:
        table = DeltaTable(uri, version=version, storage_options=options or None)
    except TableNotFoundError:
        return None
    except (DeltaError, OSError) as error:
        raise TableError(f"Delta table {uri} cannot be opened: {error}. If it is corrupt, delete the folder "
                         f"and re-materialize {dataset}/{stage}.") from error
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
        write_deltalake(target, data, mode="overwrite", schema_mode="overwrite",
                        storage_options=None if existing or not options else options,
                        commit_properties=_commit_properties(run_id))
    except CommitFailedError as error:
        raise TableError(f"Another run committed to {uri} at the same time; this run's write was not committed "
                         f"and the table keeps the other run's version. Re-run to write it again. ({error})") from error
    version = target.version() if existing else DeltaTable(uri, storage_options=options or None).version()
    return TableRef(uri, version, options)


def merge(storage: ObjectStore, dataset: str, stage: str, changes: pa.Table | pa.RecordBatchReader, keys: list[str],
          deleted_column: str, run_id: str | None = None) -> tuple[TableRef, dict[str, int]]:
    """Apply `changes` as one version: rows matching on `keys` are updated, or deleted where `deleted_column` is
    true; new rows are inserted. Unchanged rows are left as they are (no rewrite of the table)."""
    uri, options = table_uri(storage, dataset, stage), delta_options(storage)
    table = DeltaTable(uri, storage_options=options or None)
    columns = [name for name in changes.schema.names if name != deleted_column]
    on = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    try:
        metrics = (table.merge(changes, predicate=on, source_alias="s", target_alias="t",
                               commit_properties=_commit_properties(run_id))
                   .when_matched_delete(predicate=f"s.{deleted_column}")
                   .when_matched_update({c: f"s.{c}" for c in columns}, predicate=f"NOT s.{deleted_column}")
                   .when_not_matched_insert({c: f"s.{c}" for c in columns}, predicate=f"NOT s.{deleted_column}")
                   .execute())
    except CommitFailedError as error:
        raise TableError(f"Another run committed to {uri} at the same time; this run's merge was not committed. "
                         f"Re-run to apply it. ({error})") from error
    counts = {name: int(metrics.get(name, 0)) for name in
              ("num_target_rows_inserted", "num_target_rows_updated", "num_target_rows_deleted")}
    return TableRef(uri, table.version(), options), counts


def _commit_properties(run_id: str | None) -> CommitProperties | None:
    return CommitProperties(custom_metadata={"dagster_run_id": run_id}) if run_id else None


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
