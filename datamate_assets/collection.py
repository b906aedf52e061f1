"""Collection stage: a dataset's sources → `<dataset>/collected` and `<dataset>/collection_rejects`.

One multi-asset reads every source once. `collected` holds every current document (one row per source_uri);
it is compared with the previous `collected` in storage, so a re-run on unchanged sources reports
0 new / 0 changed and keeps the original `collected_at` (a repeated reject keeps its `rejected_at`). Inputs =
collected (new + changed) + rejected + unchanged, all in the metadata.
"""

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec, FolderSource, S3Source, SqlSource, WebSource
from datamate_resources.io_manager import asset_parts
from datamate_resources.storage import ObjectStore
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
        max_bytes=source.max_bytes,
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


def previous_collected(storage: ObjectStore, asset_key: dg.AssetKey, log) -> pa.Table | None:
    """source_uri, doc_id, collected_at of the last collected output; None on the first run."""
    try:
        table = storage.read_table(*asset_parts(asset_key), columns=["source_uri", "doc_id", "collected_at"])
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
        previous = storage.read_table(*asset_parts(asset_key), columns=[*key_columns, "rejected_at"])
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
    what their table costs, not a Python object per value."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
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
            self.batches.append(pa.RecordBatch.from_pydict(self.columns, schema=self.schema))
            self.columns = {name: [] for name in self.schema.names}

    def table(self) -> pa.Table:
        self.flush()
        table = pa.Table.from_batches(self.batches, schema=self.schema)
        self.batches = []
        return table


def compare(documents: pa.Table, previous: pa.Table | None, started: datetime) -> tuple[pa.Array, pa.Array, int]:
    """(change per row: new | changed | unchanged, collected_at per row, removed count) against the last output;
    joined on the small columns only, so the texts are never copied."""
    if previous is None or previous.num_rows == 0:  # first run: no join needed
        return (pa.repeat("new", documents.num_rows), pa.repeat(pa.scalar(started, TIMESTAMP), documents.num_rows),
                0)
    keys = pa.table({"row": np.arange(documents.num_rows), "source_uri": documents["source_uri"],
                     "doc_id": documents["doc_id"]})
    before = previous.rename_columns(["source_uri", "previous_doc_id", "previous_collected_at"])
    joined = keys.join(before, "source_uri", join_type="left outer").sort_by("row")
    unchanged = pc.fill_null(pc.equal(joined["previous_doc_id"], joined["doc_id"]), False)
    change = pc.if_else(pc.is_null(joined["previous_doc_id"]), "new", pc.if_else(unchanged, "unchanged", "changed"))
    collected_at = pc.if_else(unchanged, joined["previous_collected_at"], pa.scalar(started, TIMESTAMP))
    removed = previous.num_rows - (joined.num_rows - joined["previous_doc_id"].null_count)
    return change, collected_at, removed


def drop_duplicate_uris(documents: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(one document per source_uri: the first read; the later ones), in reading order. Found by sorting the uris
    alone (a stable sort keeps the first read first among equals); the texts are copied only if there are repeats."""
    uris = documents["source_uri"]
    if len(uris) < 2:
        return documents, documents.slice(0, 0)
    order = pc.sort_indices(uris)
    ordered = uris.take(order)
    repeats = pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1)).combine_chunks()
    if not pc.any(repeats).as_py():  # the usual case
        return documents, documents.slice(0, 0)
    later = pc.is_in(pa.array(np.arange(len(uris))), value_set=order.slice(1).filter(repeats))
    return documents.filter(pc.invert(later)), documents.filter(later)


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
                key=collected_key, group_name=spec.name, kinds={"parquet"},
                description=f"One row per document collected from: {sources}. doc_id is the sha256 of the text.",
            ),
            "collection_rejects": dg.AssetOut(
                key=rejects_key, group_name=spec.name, kinds={"parquet"},
                description="Inputs set aside during collection, with the reason (unreadable, corrupt, encoding, "
                "empty, binary, oversized, parse_error, …).",
            ),
        },
        can_subset=True,
    )
    def collection(context: dg.AssetExecutionContext, storage: ObjectStore):
        started = datetime.now(UTC)
        previous = previous_collected(storage, collected_key, context.log)
        documents = Batches(DOCUMENTS_SCHEMA)
        rejects = Batches(REJECTS_SCHEMA)
        labels = [describe(source) for source in spec.sources]
        found = [[0, 0] for _ in labels]  # documents, rejects per source
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
                if time.monotonic() >= next_progress:
                    context.log.info(f"{label}: {count} inputs read")
                    next_progress = time.monotonic() + PROGRESS_SECONDS
            found[number - 1] = [documents.rows - documents_before, rejects.rows - rejects_before]
            context.log.info(f"{label}: {found[number - 1][0]} documents, {found[number - 1][1]} rejects")

        # One document per source_uri (the first read); later ones are rejects of the source they came from.
        table, repeated = drop_duplicate_uris(documents.table())
        for uri, source in zip(repeated["source_uri"].to_pylist(), repeated["source"].to_pylist(), strict=True):
            rejects.append(uri, "duplicate_source", "an earlier document of this run has the same source_uri",
                           started, labels[source])
            found[source][0] -= 1
            found[source][1] += 1
        rejected = keep_rejected_at(rejects.table(), storage, rejects_key, context.log)
        change, collected_at, removed = compare(table, previous, started)
        changes = Counter({row["values"]: row["counts"] for row in pc.value_counts(change).to_pylist()})
        per_source = [[label, *counts, sum(counts)] for label, counts in zip(labels, found, strict=True)]
        collected = pa.Table.from_arrays(
            [table[name] if name != "collected_at" else collected_at for name in COLLECTED_SCHEMA.names],
            schema=COLLECTED_SCHEMA,
        )
        del table, documents, repeated
        total_documents, total_rejects = collected.num_rows, rejected.num_rows
        newly_collected = changes["new"] + changes["changed"]
        context.log.info(
            f"Collected {total_documents} documents ({changes['new']} new, {changes['changed']} changed, "
            f"{changes['unchanged']} unchanged, {removed} removed) and {total_rejects} rejects"
        )

        if collected_key in context.selected_asset_keys:
            mime_types = [(r["values"], r["counts"]) for r in pc.value_counts(collected["mime_type"]).to_pylist()]
            yield dg.Output(collected, output_name="collected", metadata={
                "inputs": total_documents + total_rejects,
                "collected": newly_collected,
                "new": changes["new"],
                "changed": changes["changed"],
                "unchanged": changes["unchanged"],
                "removed": removed,
                "rejected": total_rejects,
                "summary": dg.MetadataValue.md(
                    f"**Inputs {total_documents + total_rejects}** = collected {newly_collected} "
                    f"(new {changes['new']}, changed {changes['changed']}) + rejected {total_rejects} "
                    f"+ unchanged {changes['unchanged']}; removed since last run: {removed}"
                ),
                "sources": dg.MetadataValue.md(
                    markdown_table(["source", "documents", "rejects", "inputs"], per_source)
                ),
                "mime_types": dg.MetadataValue.md(
                    markdown_table(["mime type", "documents"], sorted(mime_types, key=lambda m: -m[1]))
                ),
                "text_characters": pc.sum(pc.utf8_length(collected["text"])).as_py() or 0,
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
