"""Annotation stage: `<dataset>/cleaned` → `<dataset>/annotated`, and the Label Studio round trip.

- `annotated`: per document, language (lingua), topic from the spec's label set (zero-shot by the embedding
  model, or by the LLM with schema-constrained output) and a rule-based quality score. Every label records
  its source and confidence in the `labels` JSON; human labels from Label Studio replace automatic ones and
  carry who and when.
- `label_studio_tasks` (with `annotation.label_studio.export`): tasks with the labels as pre-annotations
  (predictions) plus the labeling config, in Label Studio's import format, under `label_studio/<dataset>/`.
- `human_labels` (with `annotation.label_studio`): every Label Studio JSON export found under the inbox
  prefix, read back into one row per document and field. A sensor (automation) can materialize it and
  `annotated` when a new export lands.
"""

import json
from collections import Counter
from typing import Any

import dagster as dg
import pyarrow as pa

from datamate_assets.keys import key
from datamate_assets.spec import AnnotationSection, DatasetSpec
from datamate_resources.embeddings import EmbeddingsResource
from datamate_resources.io_manager import asset_parts
from datamate_resources.llm import LLMResource
from datamate_resources.storage import ObjectStore
from operators.annotation import label_studio
from operators.annotation.labels import (
    label,
    label_description,
    language_labels,
    merge_human_labels,
    quality_labels,
    topic_labels_from_embeddings,
    topic_messages,
    topic_schema,
)
from operators.evaluation.report import markdown_table

ANNOTATED_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("language", pa.string()), ("language_confidence", pa.float64()),
    ("topic", pa.string()), ("topic_confidence", pa.float64()), ("topic_source", pa.string()),
    ("quality_score", pa.float64()), ("labels", pa.string()), ("human_labeled", pa.bool_()),
])
HUMAN_LABELS_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("field", pa.string()), ("value", pa.string()), ("annotator", pa.string()),
    ("annotated_at", pa.string()), ("export_file", pa.string()), ("task_id", pa.int64()),
    ("task_index", pa.int64()),
])
EMBEDDING_TEXT_CHARS = 2000  # MiniLM reads 256 tokens; more text only costs tokenization


def topic_labels(texts: list[str], section: AnnotationSection, context: dg.AssetExecutionContext,
                 llm: LLMResource, embeddings: EmbeddingsResource, storage: ObjectStore) -> tuple[list, dict]:
    """(one topic label or None per text, metadata about how they were made)."""
    if not section.labels or not texts:
        return [None] * len(texts), {}
    if section.labeler == "embeddings":
        model = embeddings.get_embeddings()
        context.log.info(f"Topic by embeddings ({embeddings.model_name}) over {len(section.labels)} labels")
        import numpy as np

        doc_vectors = np.asarray(model.embed_documents([t[:EMBEDDING_TEXT_CHARS] for t in texts]))
        label_vectors = np.asarray(model.embed_documents([label_description(n) for n in section.labels]))
        source = f"embeddings:{embeddings.model_name}"
        return topic_labels_from_embeddings(doc_vectors, label_vectors, section.labels, source), {}
    client = llm.client(storage, context.log)
    context.log.info(f"Topic by LLM ({client.model_name}) over {len(section.labels)} labels")
    results = client.generate_structured([topic_messages(t, section.labels) for t in texts],
                                         topic_schema(section.labels), cache_key_extra="annotation.topic.v1")
    source = f"llm:{client.model_name}"
    topics = [label(r.value.topic, r.value.confidence, source) if r.ok else {**label(None, 0, source),
                                                                             "error": r.error} for r in results]
    return topics, client.usage.as_metadata()


def latest_human_labels(human: pa.Table | None) -> dict[str, dict[str, dict]]:
    """doc_id → field → label, the most recent annotation winning when several exports cover a document."""
    by_doc: dict[str, dict[str, dict]] = {}
    rows = sorted(human.to_pylist(), key=lambda r: r["annotated_at"] or "") if human is not None else []
    for row in rows:
        by_doc.setdefault(row["doc_id"], {})[row["field"]] = label(
            json.loads(row["value"]), 1.0, "human:label-studio", row["annotator"], row["annotated_at"])
    return by_doc


def annotate(cleaned: pa.Table, section: AnnotationSection, topics: list, human: dict[str, dict]) -> pa.Table:
    texts = cleaned.column("text").to_pylist()
    doc_ids = cleaned.column("doc_id").to_pylist()
    languages = language_labels(texts) if section.language else [None] * len(texts)
    qualities = quality_labels(texts) if section.quality else [None] * len(texts)
    rows = []
    for doc_id, language, topic, quality in zip(doc_ids, languages, topics, qualities, strict=True):
        automatic = {name: value for name, value in
                     (("language", language), ("topic", topic), ("quality", quality)) if value is not None}
        labels = merge_human_labels(automatic, human.get(doc_id, {}))
        rows.append({
            "doc_id": doc_id, "language": _part(labels, "language"),
            "language_confidence": _part(labels, "language", "confidence"),
            "topic": _part(labels, "topic"), "topic_confidence": _part(labels, "topic", "confidence"),
            "topic_source": _part(labels, "topic", "source"), "quality_score": _part(labels, "quality"),
            "labels": json.dumps(labels, ensure_ascii=False, sort_keys=True), "human_labeled": doc_id in human,
        })
    return pa.Table.from_pylist(rows, schema=ANNOTATED_SCHEMA)


def _part(labels: dict[str, dict], name: str, part: str = "value") -> Any:
    return labels.get(name, {}).get(part)


def distribution(table: pa.Table, column: str) -> str:
    counts = Counter(table.column(column).to_pylist())
    return markdown_table([{column: value, "documents": n} for value, n in counts.most_common()])


def build_defs(spec: DatasetSpec) -> dg.Definitions:
    section = spec.annotation
    if section is None:
        return dg.Definitions()
    studio = section.label_studio
    annotated_key, human_key = key(spec, "annotated"), key(spec, "human_labels")
    assets = []

    @dg.asset(
        key=annotated_key, group_name=spec.name, kinds={"parquet"},
        ins={"cleaned": dg.AssetIn(key(spec, "cleaned"))},
        deps=[human_key] if studio else [],
        description="Per document: language (lingua), topic from the spec's labels, quality score; `labels` "
                    "holds every label with its source and confidence, human labels from Label Studio win.",
    )
    def annotated(context: dg.AssetExecutionContext, llm: LLMResource, embeddings: EmbeddingsResource,
                  storage: ObjectStore, cleaned: pa.Table):
        # Read through storage rather than as an input: without a label_studio section there is no such asset.
        human_labels = storage.read_table(*asset_parts(human_key)) if studio else None
        texts = cleaned.column("text").to_pylist()
        context.log.info(f"Annotating {len(texts)} documents")
        topics, llm_metadata = topic_labels(texts, section, context, llm, embeddings, storage)
        human = latest_human_labels(human_labels)
        table = annotate(cleaned, section, topics, human)
        failed = sum(1 for t in topics if t is not None and t["value"] is None)
        context.log.info(f"{table.num_rows} documents annotated, {failed} topics failed, "
                         f"{sum(table.column('human_labeled').to_pylist())} with human labels")
        metadata = {
            "documents": table.num_rows,
            "human_labeled": int(sum(table.column("human_labeled").to_pylist())),
            "topic_failed": failed,
            "language_distribution": dg.MetadataValue.md(distribution(table, "language")),
            **({"topic_distribution": dg.MetadataValue.md(distribution(table, "topic"))} if section.labels else {}),
            **llm_metadata,
        }
        return dg.Output(table, metadata=metadata)

    assets.append(annotated)

    if studio is not None:
        inbox = studio.inbox

        @dg.asset(
            key=human_key, group_name=spec.name, kinds={"parquet", "labelstudio"},
            description=f"Human labels read from the Label Studio JSON exports under `{inbox}/` in storage: one row "
                        "per document and field, with annotator and time.",
        )
        def human_labels(context: dg.AssetExecutionContext, storage: ObjectStore):
            files = [p for p in storage.list(inbox) if p.endswith(".json")]
            rows, set_aside, bad_files, tasks = [], [], [], 0
            for path in files:
                name = path.rsplit("/", 1)[-1]
                relative = path[len(storage.path(inbox)) + 1:]
                try:
                    result = label_studio.read_export(storage.read_bytes(inbox, relative), name, section.labels)
                except ValueError as exc:  # one broken export spoils no other
                    context.log.warning(str(exc))
                    bad_files.append({"export_file": name, "reason": str(exc)[:200]})
                    continue
                tasks += result.tasks
                rows += result.labels
                set_aside += result.set_aside
                context.log.info(f"{name}: {result.tasks} tasks, {len(result.labels)} labels, "
                                 f"{len(result.set_aside)} set aside")
            table = pa.Table.from_pylist(rows, schema=HUMAN_LABELS_SCHEMA)
            reasons = Counter(r["reason"].split(":", 1)[0] for r in set_aside)
            return dg.Output(table, metadata={
                "export_files": len(files), "unreadable_files": len(bad_files), "tasks": tasks,
                "tasks_labeled": len({(r["export_file"], r["task_index"]) for r in rows}),
                "tasks_set_aside": len(set_aside),
                "documents_labeled": len({r["doc_id"] for r in rows}),
                "set_aside_reasons": dg.MetadataValue.md(markdown_table(
                    [{"reason": k, "tasks": n} for k, n in reasons.most_common()])),
                "set_aside_examples": dg.MetadataValue.md(markdown_table(set_aside[:20] + bad_files[:20])),
            })

        assets.append(human_labels)

    if studio is not None and studio.export:

        @dg.asset(
            key=key(spec, "label_studio_tasks"), group_name=spec.name, kinds={"json", "labelstudio"},
            ins={"cleaned": dg.AssetIn(key(spec, "cleaned")), "annotated": dg.AssetIn(annotated_key)},
            description="Label Studio tasks with the current labels as pre-annotations, and the labeling config "
                        f"(import both into a Label Studio project), under `label_studio/{spec.name}/`.",
        )
        def label_studio_tasks(context: dg.AssetExecutionContext, storage: ObjectStore, cleaned: pa.Table,
                               annotated: pa.Table) -> dg.MaterializeResult:
            texts = dict(zip(cleaned.column("doc_id").to_pylist(), cleaned.column("text").to_pylist(), strict=True))
            rows = annotated.to_pylist()
            tasks = [label_studio.task(r["doc_id"], texts.get(r["doc_id"], ""), json.loads(r["labels"]),
                                       model_version=f"datamate:{spec.name}") for r in rows]
            config = label_studio.labeling_config(section.labels, {r["language"] or "unknown" for r in rows})
            tasks_path = storage.write_bytes(json.dumps(tasks, ensure_ascii=False, indent=1).encode(),
                                             "label_studio", spec.name, "tasks.json")
            storage.write_bytes(config.encode(), "label_studio", spec.name, "config.xml")
            context.log.info(f"{len(tasks)} Label Studio tasks written to {tasks_path}")
            return dg.MaterializeResult(metadata={
                "tasks": len(tasks),
                "tasks_with_predictions": sum(1 for t in tasks if t["predictions"]),
                "tasks_uri": storage.uri("label_studio", spec.name, "tasks.json"),
                "config_uri": storage.uri("label_studio", spec.name, "config.xml"),
                "labeling_config": dg.MetadataValue.md(f"```xml\n{config}```"),
                "sample_task": dg.MetadataValue.json(tasks[0] if tasks else {}),
            })

        assets.append(label_studio_tasks)

    return dg.Definitions(assets=assets)
