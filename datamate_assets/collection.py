"""Collection stage: a dataset's sources → `<dataset>/collected` and `<dataset>/collection_rejects`.

One multi-asset reads every source once. `collected` holds every current document (one row per source_uri);
it is compared with the previous `collected` in storage, so a re-run on unchanged sources reports
0 new / 0 changed and keeps the original `collected_at` (a repeated reject keeps its `rejected_at`). Inputs =
collected (new + changed) + rejected + unchanged, all in the metadata.
"""

import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec, FolderSource, S3Source, SqlSource, WebSource
from datamate_resources import tables
from datamate_resources.io_manager import dataset_and_stage
from datamate_resources.storage import ObjectStore
from datamate_resources.tables import TableRef
from operators.readers import (
    REASONS,
    Document,
    ReadOptions,
    Reject,
    SourceFile,
    fetch_web,
    query_sql,
    read_source,
    walk_filesystem,
    walk_folder,
)

Source = FolderSource | S3Source | WebSource | SqlSource
PROGRESS_SECONDS = 10.0  # a progress line at most this often (a log event per record would cost memory)
TIMESTAMP = pa.timestamp("us", tz="UTC")
COLLECTED_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("text", pa.string()), ("source_uri", pa.string()), ("mime_type", pa.string()),
    ("title", pa.string()), ("collected_at", TIMESTAMP), ("metadata", pa.string()),
])
# What is accumulated while reading: the collected columns but collected_at, plus the source's index.
DOCUMENTS_SCHEMA = pa.schema([
    *(f for f in COLLECTED_SCHEMA if f.name != "collected_at"), ("source", pa.int32()),
])
BATCH_ROWS = 10_000
REJECTS_SCHEMA = pa.schema([
    ("source_uri", pa.string()), ("reason", pa.string()), ("detail", pa.string()), ("rejected_at", TIMESTAMP),
    ("source", pa.string()),
])


def describe(source: Source) -> str:
    """A short label for logs and metadata (never a secret: SQL sources name their env var only)."""
    match source:
        case FolderSource() | S3Source():
            where = f"folder {source.path}" if isinstance(source, FolderSource) else source.url
            return where if source.include == ["**/*"] else f"{where} [{', '.join(source.include)}]"
        case WebSource():
            return f"sitemap {source.sitemap}" if source.sitemap else f"web ({len(source.urls)} URLs)"
        case SqlSource():
            return f"sql ${source.url_env}"


def source_records(source: Source, spec: DatasetSpec, storage: ObjectStore) -> Iterator[Document | Reject]:
    options = ReadOptions(
        text_field=source.text_field, id_field=source.id_field, title_field=source.title_field,
        max_bytes=source.max_bytes, html_format=source.html_format,
    )
    match source:
        case FolderSource():
            # Relative to the folder holding datasets/ (the repository root in the standard layout).
            base = spec.spec_path.resolve().parent.parent if spec.spec_path else Path.cwd()
            inputs = walk_folder(base / source.path, source.include, source.exclude)
        case S3Source():
            # Same endpoint and keys as the storage resource, another bucket/prefix.
            bucket = storage.with_url(source.url)
            inputs = walk_filesystem(bucket.fs, bucket.root, source.include, source.exclude)
        case WebSource():
            inputs = fetch_web(
                source.urls, source.sitemap, allowed_hosts=source.allowed_hosts,
                allow_private_addresses=source.allow_private_addresses, timeout_seconds=source.timeout_seconds,
                max_pages=source.max_pages, max_bytes=source.max_bytes,
            )
        case SqlSource():
            url = os.environ.get(source.url_env)
            if not url:
                raise ValueError(f"dataset {spec.name}: environment variable {source.url_env} (sources url_env) is "
                                 "not set; it must hold the SQLAlchemy URL of the SQL source")
            yield from query_sql(url, source.query, options)
            return
    for item in inputs:
        yield from read_source(item, options) if isinstance(item, SourceFile) else [item]


def previous_collected(previous: TableRef | None, asset_key: dg.AssetKey, log) -> pa.Table | None:
    """source_uri, doc_id, collected_at of the last collected version (small columns only); None on the first run."""
    try:
        table = None if previous is None else previous.read(["source_uri", "doc_id"])
        if table is not None and pc.count_distinct(table["source_uri"]).as_py() != table.num_rows:
            raise ValueError("source_uri is not unique")
        return None if table is None else table.cast(pa.schema([COLLECTED_SCHEMA.field(n) for n in table.column_names]))
    except Exception as error:  # why: an unreadable old output only costs the incremental comparison
        log.warning(f"Previous {asset_key.to_user_string()} unreadable, counting every document as new: {error}")
        return None


def keep_rejected_at(rejected: pa.Table, storage: ObjectStore, asset_key: dg.AssetKey, log) -> pa.Table:
    """A reject the last run already had (same source_uri, reason and detail) keeps its first rejected_at, as an
    unchanged document keeps its collected_at: a re-run on unchanged sources rewrites the same rejects."""
    key_columns = ["source_uri", "reason", "detail"]
    try:
        ref = tables.current(storage, *dataset_and_stage(asset_key))
        previous = None if ref is None else ref.read([*key_columns, "rejected_at"])
    except Exception as error:  # why: an unreadable old output only costs the original times
        log.warning(f"Previous {asset_key.to_user_string()} unreadable, rejects get this run's time: {error}")
        return rejected
    if previous is None or previous.num_rows == 0 or rejected.num_rows == 0:
        return rejected
    first = previous.cast(pa.schema([REJECTS_SCHEMA.field(n) for n in previous.column_names])).group_by(
        key_columns).aggregate([("rejected_at", "min")])
    keys = pa.table({"row": np.arange(rejected.num_rows), **{n: rejected[n] for n in key_columns}})
    joined = keys.join(first, key_columns, join_type="left outer").sort_by("row")
    rejected_at = pc.coalesce(joined["rejected_at_min"], rejected["rejected_at"]).cast(TIMESTAMP)
    return rejected.set_column(rejected.schema.get_field_index("rejected_at"), "rejected_at", rejected_at)


def utf8_safe(value: str) -> str:
    """Parquet stores UTF-8 only: lone surrogates (undecodable file names, "\\ud800" in JSON) become U+FFFD."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


class Batches:
    """Rows appended one by one, kept as Arrow record batches of BATCH_ROWS: a million short records cost
    what their table costs, not a Python object per value. With a `path`, full batches go to a local Parquet
    file instead of memory, so memory holds one batch whatever the number of documents."""

    def __init__(self, schema: pa.Schema, path: Path | None = None):
        self.schema = schema
        self.path = path
        self.writer = pq.ParquetWriter(path, schema) if path else None
        self.batches: list[pa.RecordBatch] = []
        self.columns: dict[str, list] = {name: [] for name in schema.names}
        self.rows = 0

    def append(self, *values: object) -> None:
        for column, value in zip(self.columns.values(), values, strict=True):
            column.append(value)
        self.rows += 1
        if self.rows % BATCH_ROWS == 0:
            self.flush()

    def flush(self) -> None:
        if self.columns[self.schema.names[0]]:
            batch = pa.RecordBatch.from_pydict(self.columns, schema=self.schema)
            if self.writer:
                self.writer.write_batch(batch)
            else:
                self.batches.append(batch)
            self.columns = {name: [] for name in self.schema.names}

    def table(self) -> pa.Table:
        self.flush()
        table = pa.Table.from_batches(self.batches, schema=self.schema)
        self.batches = []
        return table

    def close(self) -> None:
        self.flush()
        if self.writer:
            self.writer.close()

    def read(self, columns: list[str]) -> pa.Table:
        """Some columns of the spilled rows (the small ones: the texts stay on disk)."""
        return pq.read_table(self.path, columns=columns)

    def iter_batches(self) -> Iterator[pa.RecordBatch]:
        yield from pq.ParquetFile(self.path).iter_batches(batch_size=BATCH_ROWS)


NEW, CHANGED, UNCHANGED, REPEATED = 0, 1, 2, 3
CHANGE_NAMES = ["new", "changed", "unchanged"]


def compare(documents: pa.Table, previous: pa.Table | None) -> tuple[np.ndarray, int]:
    """(change code per row: NEW | CHANGED | UNCHANGED, removed count) against the last output; `documents` holds
    the small columns only (source_uri, doc_id), so the texts are never read."""
    if previous is None or previous.num_rows == 0:  # first run: no join needed
        return np.full(documents.num_rows, NEW, np.int8), 0
    keys = pa.table({"row": np.arange(documents.num_rows), "source_uri": documents["source_uri"],
                     "doc_id": documents["doc_id"]})
    before = previous.select(["source_uri", "doc_id"]).rename_columns(["source_uri", "previous_doc_id"])
    joined = keys.join(before, "source_uri", join_type="left outer").sort_by("row")
    unchanged = pc.fill_null(pc.equal(joined["previous_doc_id"], joined["doc_id"]), False).to_numpy(
        zero_copy_only=False)
    known = pc.is_valid(joined["previous_doc_id"]).to_numpy(zero_copy_only=False)
    change = np.where(unchanged, UNCHANGED, np.where(known, CHANGED, NEW)).astype(np.int8)
    removed = previous.num_rows - int(known.sum())
    return change, removed


def removed_uris(documents: pa.Table, previous: pa.Table | None) -> pa.Array:
    if previous is None or previous.num_rows == 0:
        return pa.array([], pa.string())
    uris = previous["source_uri"]
    return uris.filter(pc.invert(pc.is_in(uris, documents["source_uri"]))).combine_chunks()


DELETED = "__deleted"
CHANGES_SCHEMA = pa.schema([*COLLECTED_SCHEMA, (DELETED, pa.bool_())])


def read_sources(context, spec: DatasetSpec, storage: ObjectStore, documents: Batches, rejects: Batches,
                 started: datetime) -> tuple[list[str], list[list[int]], int]:
    """Read every source once into `documents` and `rejects`; (labels, [documents, rejects] per source, characters)."""
    labels = [describe(source) for source in spec.sources]
    found = [[0, 0] for _ in labels]
    characters = 0
    for number, (source, label) in enumerate(zip(spec.sources, labels, strict=True), start=1):
        context.log.info(f"Source {number}/{len(spec.sources)}: {label}")
        documents_before, rejects_before = documents.rows, rejects.rows
        next_progress = time.monotonic() + PROGRESS_SECONDS
        for count, record in enumerate(source_records(source, spec, storage), start=1):
            uri = utf8_safe(record.source_uri)
            if isinstance(record, Reject):
                rejects.append(uri, record.reason, utf8_safe(record.detail), started, label)
            else:
                try:
                    record.text.encode("utf-8")
                except UnicodeEncodeError:  # lone surrogates, e.g. "\ud800" escapes in a JSON record
                    rejects.append(uri, "encoding", "the text has unpaired surrogates (invalid Unicode)",
                                   started, label)
                    continue
                metadata = json.dumps(record.metadata, ensure_ascii=False, sort_keys=True, default=str)
                documents.append(
                    record.doc_id, record.text, uri, record.mime_type, utf8_safe(record.title), utf8_safe(metadata),
                    number - 1,
                )
                characters += len(record.text)
            if time.monotonic() >= next_progress:
                context.log.info(f"{label}: {count} inputs read")
                next_progress = time.monotonic() + PROGRESS_SECONDS
        found[number - 1] = [documents.rows - documents_before, rejects.rows - rejects_before]
        context.log.info(f"{label}: {found[number - 1][0]} documents, {found[number - 1][1]} rejects")
    return labels, found, characters


def repeated_rows(uris: pa.ChunkedArray) -> np.ndarray:
    """Rows whose source_uri an earlier row already has (found by sorting the uris alone; a stable sort keeps the
    first read first among equals)."""
    if len(uris) < 2:
        return np.zeros(0, np.int64)
    order = pc.sort_indices(uris)
    ordered = uris.take(order)
    repeats = pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1)).combine_chunks()
    return np.sort(order.slice(1).filter(repeats).to_numpy())


def changed_batches(documents: Batches, status: np.ndarray, started: datetime,
                    removed: pa.Array) -> Iterator[pa.RecordBatch]:
    """The merge's source: new and changed documents (read back from the spill in batches), then a deletion row
    per removed source_uri. Unchanged documents are not rewritten, so they keep their collected_at."""
    offset = 0
    for batch in documents.iter_batches():
        rows = status[offset: offset + batch.num_rows]
        offset += batch.num_rows
        chosen = batch.filter(pa.array((rows == NEW) | (rows == CHANGED)))
        if chosen.num_rows:
            n = chosen.num_rows
            columns = [pa.repeat(pa.scalar(started, TIMESTAMP), n) if name == "collected_at" else chosen.column(name)
                       for name in COLLECTED_SCHEMA.names]
            yield pa.RecordBatch.from_arrays([*columns, pa.repeat(False, n)], schema=CHANGES_SCHEMA)
    if len(removed):
        columns = {name: pa.nulls(len(removed), field.type) for name, field in zip(
            COLLECTED_SCHEMA.names, COLLECTED_SCHEMA, strict=True)}
        columns["source_uri"] = removed
        yield pa.RecordBatch.from_pydict({**columns, DELETED: pa.array([True] * len(removed))}, schema=CHANGES_SCHEMA)


def drop_deleted(changes: pa.RecordBatchReader) -> pa.RecordBatchReader:
    """The first write has nothing to delete: the changes minus the deletion flag."""
    batches = (batch.drop_columns([DELETED]) for batch in changes)
    return pa.RecordBatchReader.from_batches(COLLECTED_SCHEMA, batches)


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def build_defs(spec: DatasetSpec) -> dg.Definitions:
    collected_key, rejects_key = key(spec, "collected"), key(spec, "collection_rejects")
    sources = ", ".join(describe(s) for s in spec.sources)

    @dg.multi_asset(
        name=f"{spec.name}_collection",
        outs={
            "collected": dg.AssetOut(
                key=collected_key, group_name=spec.name, kinds={"delta"}, is_required=False,
                description=f"One row per document collected from: {sources}. doc_id is the sha256 of the text.",
            ),
            "collection_rejects": dg.AssetOut(
                key=rejects_key, group_name=spec.name, kinds={"delta"}, is_required=False,
                description="Inputs set aside during collection, with the reason (unreadable, corrupt, encoding, "
                "empty, binary, oversized, parse_error, …).",
            ),
        },
        can_subset=True,
    )
    def collection(context: dg.AssetExecutionContext, storage: ObjectStore):
        started = datetime.now(UTC)
        previous_ref = tables.current(storage, spec.name, "collected")
        previous = previous_collected(previous_ref, collected_key, context.log)
        with tempfile.TemporaryDirectory(prefix="datamate-collection-") as work:
            # Documents go to a local spill file as they are read; only their small columns come back to memory.
            documents = Batches(DOCUMENTS_SCHEMA, Path(work) / "documents.parquet")
            rejects = Batches(REJECTS_SCHEMA)
            labels, found, characters = read_sources(context, spec, storage, documents, rejects, started)
            documents.close()
            small = documents.read(["source_uri", "doc_id", "mime_type", "source"])
            # One document per source_uri (the first read); later ones are rejects of the source they came from.
            repeated = repeated_rows(small["source_uri"])
            for row in repeated.tolist():
                source = small["source"][row].as_py()
                rejects.append(small["source_uri"][row].as_py(), "duplicate_source",
                               "an earlier document of this run has the same source_uri", started, labels[source])
                found[source][0] -= 1
                found[source][1] += 1
            status = np.full(small.num_rows, REPEATED, np.int8)
            firsts = np.setdiff1d(np.arange(small.num_rows), repeated)
            unique = small.take(pa.array(firsts))
            change, removed = compare(unique, previous)
            status[firsts] = change
            rejected = keep_rejected_at(rejects.table(), storage, rejects_key, context.log)
            counts = Counter({CHANGE_NAMES[code]: int((change == code).sum()) for code in (NEW, CHANGED, UNCHANGED)})
            total_documents, total_rejects = unique.num_rows, rejected.num_rows
            newly_collected = counts["new"] + counts["changed"]
            context.log.info(
                f"Collected {total_documents} documents ({counts['new']} new, {counts['changed']} changed, "
                f"{counts['unchanged']} unchanged, {removed} removed) and {total_rejects} rejects"
            )
            if collected_key in context.selected_asset_keys:
                changed_rows = pa.RecordBatchReader.from_batches(
                    CHANGES_SCHEMA, changed_batches(documents, status, started, removed_uris(unique, previous)))
                if previous_ref is None:
                    ref = tables.write(storage, spec.name, "collected", drop_deleted(changed_rows),
                                       run_id=context.run.run_id)
                else:
                    ref, _ = tables.merge(storage, spec.name, "collected", changed_rows, keys=["source_uri"],
                                          deleted_column=DELETED, run_id=context.run.run_id)
                mime_types = [(r["values"], r["counts"]) for r in pc.value_counts(unique["mime_type"]).to_pylist()]
                per_source = [[label, *n, sum(n)] for label, n in zip(labels, found, strict=True)]
                yield dg.Output(ref, output_name="collected", metadata={
                    "inputs": total_documents + total_rejects,
                    "collected": newly_collected,
                    "new": counts["new"],
                    "changed": counts["changed"],
                    "unchanged": counts["unchanged"],
                    "removed": removed,
                    "rejected": total_rejects,
                    "summary": dg.MetadataValue.md(
                        f"**Inputs {total_documents + total_rejects}** = collected {newly_collected} "
                        f"(new {counts['new']}, changed {counts['changed']}) + rejected {total_rejects} "
                        f"+ unchanged {counts['unchanged']}; removed since last run: {removed}"
                    ),
                    "sources": dg.MetadataValue.md(
                        markdown_table(["source", "documents", "rejects", "inputs"], per_source)
                    ),
                    "mime_types": dg.MetadataValue.md(
                        markdown_table(["mime type", "documents"], sorted(mime_types, key=lambda m: -m[1]))
                    ),
                    "text_characters": characters,
                })
        if rejects_key in context.selected_asset_keys:
            reasons = Counter({r["values"]: r["counts"] for r in pc.value_counts(rejected["reason"]).to_pylist()})
            yield dg.Output(rejected, output_name="collection_rejects", metadata={
                "rejected": total_rejects,
                "reasons": dg.MetadataValue.md(markdown_table(
                    ["reason", "inputs", "meaning"], [[r, n, REASONS[r]] for r, n in reasons.most_common()]
                )),
            })

    return dg.Definitions(assets=[collection])
