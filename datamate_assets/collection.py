"""Collection stage: a dataset's sources → `<dataset>/collected` and `<dataset>/collection_rejects`.

One multi-asset reads every source once. `collected` holds every current document (one row per source_uri);
it is compared with the previous `collected` in storage (by DuckDB over spill files, so memory does not grow with
the number of documents), and a re-run on unchanged sources reports 0 new / 0 changed and keeps the original
`collected_at` (a repeated reject keeps its `rejected_at`). Only new and changed documents are merged in and removed
ones deleted. Inputs = collected (new + changed) + rejected + unchanged, all in the metadata.
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
import pyarrow.parquet as pq

from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec, FolderSource, S3Source, SqlSource, WebSource
from datamate_resources import tables
from datamate_resources.io_manager import dataset_and_stage
from datamate_resources.storage import ObjectStore
from datamate_resources.tables import TableRef
from operators.changes import CHANGED, NEW, Changes, compare, keep_first_times
from operators.parquet import parquet_batches
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


def previous_batches(previous: TableRef | None, columns: list[str], asset_key: dg.AssetKey, log,
                     consequence: str) -> Iterator[pa.RecordBatch] | None:
    """Some columns of the last version of `asset_key`, in batches (None on the first run, or when it cannot be
    opened: an unreadable old output only costs the incremental comparison or the first times)."""
    try:
        return None if previous is None else previous.batches(columns)
    except Exception as error:
        log.warning(f"Previous {asset_key.to_user_string()} unreadable, {consequence}: {error}")
        return None


def keep_rejected_at(rejects: Path, storage: ObjectStore, asset_key: dg.AssetKey, work: Path, log) -> Path:
    """A reject the last run already had (same source_uri, reason and detail) keeps its first rejected_at, as an
    unchanged document keeps its collected_at: a re-run on unchanged sources rewrites the same rejects.
    DuckDB joins them with the previous rejects, from and to local files (`rejected.parquet` in `work`)."""
    key_columns, out = ["source_uri", "reason", "detail"], work / "rejected.parquet"
    consequence = "rejects get this run's time"
    previous = previous_batches(tables.current(storage, *dataset_and_stage(asset_key)),
                                [*key_columns, "rejected_at"], asset_key, log, consequence)
    try:
        return keep_first_times(rejects, previous, key_columns, "rejected_at", out, work / "rejects")
    except Exception as error:  # why: an unreadable old output only costs the original times
        log.warning(f"Previous {asset_key.to_user_string()} unreadable, {consequence}: {error}")
        return keep_first_times(rejects, None, key_columns, "rejected_at", out, work / "rejects-again")


def spilled_rejects(path: Path) -> pa.RecordBatchReader:
    """The rejects file as the table's batches (DuckDB wrote rejected_at last)."""
    batches = (pa.Table.from_batches([batch]).select(REJECTS_SCHEMA.names).cast(REJECTS_SCHEMA).to_batches()
               for batch in parquet_batches(path, BATCH_ROWS))
    return pa.RecordBatchReader.from_batches(REJECTS_SCHEMA, (b for parts in batches for b in parts))


def utf8_safe(value: str) -> str:
    """Parquet stores UTF-8 only: lone surrogates (undecodable file names, "\\ud800" in JSON) become U+FFFD."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


class Batches:
    """Rows appended one by one, written to a local Parquet file in record batches of BATCH_ROWS: memory holds
    one batch whatever the number of records, and no Python object per value."""

    def __init__(self, schema: pa.Schema, path: Path):
        self.schema = schema
        self.path = path
        self.writer = pq.ParquetWriter(path, schema)
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
            self.writer.write_batch(pa.RecordBatch.from_pydict(self.columns, schema=self.schema))
            self.columns = {name: [] for name in self.schema.names}

    def close(self) -> None:
        self.flush()
        self.writer.close()

    def iter_batches(self) -> Iterator[pa.RecordBatch]:
        yield from parquet_batches(self.path, BATCH_ROWS)


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


class Codes:
    """The change codes of the spilled rows, handed out in runs matching the spill's batches."""

    def __init__(self, codes: Iterator[np.ndarray]):
        self.codes, self.pending = codes, np.zeros(0, np.int8)

    def take(self, rows: int) -> np.ndarray:
        while len(self.pending) < rows:
            self.pending = np.concatenate([self.pending, next(self.codes)])
        taken, self.pending = self.pending[:rows], self.pending[rows:]
        return taken


def changed_batches(documents: Batches, changes: Changes, started: datetime) -> Iterator[pa.RecordBatch]:
    """The merge's source: new and changed documents (read back from the spill in batches), then a deletion row
    per removed source_uri. Unchanged documents are not rewritten, so they keep their collected_at."""
    codes = Codes(changes.codes())
    for batch in documents.iter_batches():
        rows = codes.take(batch.num_rows)
        chosen = batch.filter(pa.array((rows == NEW) | (rows == CHANGED)))
        if chosen.num_rows:
            n = chosen.num_rows
            columns = [pa.repeat(pa.scalar(started, TIMESTAMP), n) if name == "collected_at" else chosen.column(name)
                       for name in COLLECTED_SCHEMA.names]
            yield pa.RecordBatch.from_arrays([*columns, pa.repeat(False, n)], schema=CHANGES_SCHEMA)
    for removed in changes.removed_uris():
        columns = {field.name: pa.nulls(len(removed), field.type) for field in COLLECTED_SCHEMA}
        columns["source_uri"] = removed.cast(pa.string())
        yield pa.RecordBatch.from_pydict({**columns, DELETED: pa.repeat(True, len(removed))}, schema=CHANGES_SCHEMA)


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
        with tempfile.TemporaryDirectory(prefix="datamate-collection-") as work:
            # Documents and rejects go to local spill files as they are read; only counts come back to memory.
            documents = Batches(DOCUMENTS_SCHEMA, Path(work) / "documents.parquet")
            rejects = Batches(REJECTS_SCHEMA, Path(work) / "rejects.parquet")
            labels, found, characters = read_sources(context, spec, storage, documents, rejects, started)
            documents.close()

            consequence = "counting every document as new"

            def unusable(error: Exception) -> None:
                context.log.warning(f"Previous {collected_key.to_user_string()} unreadable, {consequence}: {error}")
            previous = previous_batches(previous_ref, ["source_uri", "doc_id"], collected_key, context.log,
                                        consequence)
            # Out of core: DuckDB compares the spill's identity columns with the previous version's.
            changes = compare(documents.path, previous, Path(work) / "compare", unusable)
            # One document per source_uri (the first read); later ones are rejects of the source they came from.
            for batch in changes.repeated():
                for uri, source in zip(batch.column("source_uri").to_pylist(), batch.column("source").to_pylist(),
                                       strict=True):
                    rejects.append(uri, "duplicate_source", "an earlier document of this run has the same source_uri",
                                   started, labels[source])
            for source, count in changes.repeated_per_source.items():
                found[source][0] -= count
                found[source][1] += count
            rejects.close()
            total_documents, total_rejects = changes.documents, rejects.rows
            newly_collected = changes.new + changes.changed
            context.log.info(
                f"Collected {total_documents} documents ({changes.new} new, {changes.changed} changed, "
                f"{changes.unchanged} unchanged, {changes.removed} removed) and {total_rejects} rejects"
            )
            if collected_key in context.selected_asset_keys:
                changed_rows = pa.RecordBatchReader.from_batches(
                    CHANGES_SCHEMA, changed_batches(documents, changes, started))
                if previous_ref is None:
                    ref = tables.write(storage, spec.name, "collected", drop_deleted(changed_rows),
                                       run_id=context.run.run_id)
                else:
                    ref, _ = tables.merge(storage, spec.name, "collected", changed_rows, keys=["source_uri"],
                                          deleted_column=DELETED, run_id=context.run.run_id)
                per_source = [[label, *n, sum(n)] for label, n in zip(labels, found, strict=True)]
                yield dg.Output(ref, output_name="collected", metadata={
                    "inputs": total_documents + total_rejects,
                    "collected": newly_collected,
                    "new": changes.new,
                    "changed": changes.changed,
                    "unchanged": changes.unchanged,
                    "removed": changes.removed,
                    "rejected": total_rejects,
                    "summary": dg.MetadataValue.md(
                        f"**Inputs {total_documents + total_rejects}** = collected {newly_collected} "
                        f"(new {changes.new}, changed {changes.changed}) + rejected {total_rejects} "
                        f"+ unchanged {changes.unchanged}; removed since last run: {changes.removed}"
                    ),
                    "sources": dg.MetadataValue.md(
                        markdown_table(["source", "documents", "rejects", "inputs"], per_source)
                    ),
                    "mime_types": dg.MetadataValue.md(markdown_table(["mime type", "documents"], changes.mime_types)),
                    "text_characters": characters,
                })
            if rejects_key in context.selected_asset_keys:
                rejected = keep_rejected_at(rejects.path, storage, rejects_key, Path(work), context.log)
                reasons = Counter()
                for batch in parquet_batches(rejected, BATCH_ROWS, ["reason"]):
                    reasons.update(batch.column("reason").to_pylist())
                # Dagster hands this output to the IO manager, which writes it from the file, before resuming here.
                yield dg.Output(spilled_rejects(rejected), output_name="collection_rejects", metadata={
                    "rejected": total_rejects,
                    "reasons": dg.MetadataValue.md(markdown_table(
                        ["reason", "inputs", "meaning"], [[r, n, REASONS[r]] for r, n in reasons.most_common()]
                    )),
                })

    return dg.Definitions(assets=[collection])
