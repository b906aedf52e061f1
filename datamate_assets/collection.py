"""Collection stage: a dataset's sources → `<dataset>/collected` and `<dataset>/collection_rejects`.

One multi-asset reads every source once. `collected` holds every current document (one row per source_uri);
it is compared with the previous `collected` in storage, so a re-run on unchanged sources reports
0 new / 0 changed and keeps the original `collected_at`. Inputs = collected (new + changed) + rejected +
unchanged, all in the metadata.
"""

import json
import os
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pyarrow as pa

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
PROGRESS_EVERY = 100
TIMESTAMP = pa.timestamp("us", tz="UTC")
COLLECTED_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("text", pa.string()), ("source_uri", pa.string()), ("mime_type", pa.string()),
    ("title", pa.string()), ("collected_at", TIMESTAMP), ("metadata", pa.string()),
])
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


def previous_documents(storage: ObjectStore, asset_key: dg.AssetKey, log) -> dict[str, tuple[str, datetime]]:
    """source_uri → (doc_id, collected_at) of the last collected output, empty on the first run."""
    try:
        table = storage.read_table(*asset_parts(asset_key), columns=["source_uri", "doc_id", "collected_at"])
    except Exception as error:  # why: an unreadable old output only costs the incremental comparison
        log.warning(f"Previous {asset_key.to_user_string()} unreadable, counting every document as new: {error}")
        return {}
    if table is None:
        return {}
    return {row["source_uri"]: (row["doc_id"], row["collected_at"]) for row in table.to_pylist()}


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
        previous = previous_documents(storage, collected_key, context.log)
        documents: dict[str, Document] = {}
        rejects: list[tuple[Reject, str]] = []
        per_source = []
        for number, source in enumerate(spec.sources, start=1):
            label = describe(source)
            context.log.info(f"Source {number}/{len(spec.sources)}: {label}")
            documents_before, rejects_before = len(documents), len(rejects)
            for count, record in enumerate(source_records(source, spec, storage), start=1):
                if isinstance(record, Reject):
                    rejects.append((record, label))
                elif record.source_uri in documents:
                    rejects.append((Reject(record.source_uri, "duplicate_source",
                                           "an earlier document of this run has the same source_uri"), label))
                else:
                    documents[record.source_uri] = record
                if count % PROGRESS_EVERY == 0:
                    context.log.info(f"{label}: {count} inputs read")
            found = len(documents) - documents_before, len(rejects) - rejects_before
            per_source.append([label, *found, sum(found)])
            context.log.info(f"{label}: {found[0]} documents, {found[1]} rejects")

        changes = Counter()
        rows = []
        for uri in sorted(documents):
            document = documents[uri]
            before = previous.get(uri)
            change = "new" if before is None else "unchanged" if before[0] == document.doc_id else "changed"
            changes[change] += 1
            rows.append({
                "doc_id": document.doc_id, "text": document.text, "source_uri": uri,
                "mime_type": document.mime_type, "title": document.title,
                "collected_at": before[1] if change == "unchanged" else started,
                "metadata": json.dumps(document.metadata, ensure_ascii=False, sort_keys=True, default=str),
            })
        collected = pa.Table.from_pylist(rows, schema=COLLECTED_SCHEMA)
        rejected = pa.Table.from_pylist(
            [{"source_uri": r.source_uri, "reason": r.reason, "detail": r.detail, "rejected_at": started,
              "source": label} for r, label in rejects],
            schema=REJECTS_SCHEMA,
        )
        removed = len(previous.keys() - documents.keys())
        newly_collected = changes["new"] + changes["changed"]
        context.log.info(
            f"Collected {len(documents)} documents ({changes['new']} new, {changes['changed']} changed, "
            f"{changes['unchanged']} unchanged, {removed} removed) and {len(rejects)} rejects"
        )

        if collected_key in context.selected_asset_keys:
            mime_types = Counter(d.mime_type for d in documents.values())
            yield dg.Output(collected, output_name="collected", metadata={
                "inputs": len(documents) + len(rejects),
                "collected": newly_collected,
                "new": changes["new"],
                "changed": changes["changed"],
                "unchanged": changes["unchanged"],
                "removed": removed,
                "rejected": len(rejects),
                "summary": dg.MetadataValue.md(
                    f"**Inputs {len(documents) + len(rejects)}** = collected {newly_collected} "
                    f"(new {changes['new']}, changed {changes['changed']}) + rejected {len(rejects)} "
                    f"+ unchanged {changes['unchanged']}; removed since last run: {removed}"
                ),
                "sources": dg.MetadataValue.md(
                    markdown_table(["source", "documents", "rejects", "inputs"], per_source)
                ),
                "mime_types": dg.MetadataValue.md(
                    markdown_table(["mime type", "documents"], mime_types.most_common())
                ),
                "text_characters": sum(len(d.text) for d in documents.values()),
            })
        if rejects_key in context.selected_asset_keys:
            reasons = Counter(r.reason for r, _ in rejects)
            yield dg.Output(rejected, output_name="collection_rejects", metadata={
                "rejected": len(rejects),
                "reasons": dg.MetadataValue.md(markdown_table(
                    ["reason", "inputs", "meaning"], [[r, n, REASONS[r]] for r, n in reasons.most_common()]
                )),
            })

    return dg.Definitions(assets=[collection])
