"""Annotation stage: `<dataset>/cleaned` → `<dataset>/annotated`, and the Label Studio round trip.

- `annotated`: per document, language (lingua), topic from the spec's label set (zero-shot by the embedding
  model, or by the LLM with schema-constrained output) and a rule-based quality score. Every label records
  its source and confidence in the `labels` JSON; human labels from Label Studio replace automatic ones and
  carry who and when.
- `label_studio_tasks` (with `annotation.label_studio.export`): tasks with the labels as pre-annotations
  (predictions), in Label Studio's import format as sharded JSONL files (`tasks-00000.jsonl`, …), plus the
  labeling config, under `label_studio/<dataset>/`; the URI of every shard is in the asset's metadata.
- `human_labels` (with `annotation.label_studio`): every Label Studio JSON export found under the inbox
  prefix, read back into one row per document and field. A sensor (automation) can materialize it and
  `annotated` when a new export lands.

Every step streams: documents are read from the `cleaned` table a batch at a time (the models are loaded once),
labels and tasks are written as they are made, and the summaries in the metadata are counters.

With `labeler: llm`, the labeler's usage goes to the metadata and to `<dataset>/llm_usage` (stage `annotated`) like
the other LLM stages, and `annotation.budget` and the dataset's run `budget` bound it (`budgets.py`): documents
whose request was held back keep a null topic, and the next materialization labels them, the rest from the cache.
"""

import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from functools import partial
from typing import Any

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa

from datamate_assets.budgets import StageBudget
from datamate_assets.keys import key
from datamate_assets.ray_stages import ray_metadata, run_on_ray
from datamate_assets.spec import AnnotationSection, Budget, DatasetSpec
from datamate_resources import tables
from datamate_resources.embeddings import EmbeddingsResource, fit_to_actor
from datamate_resources.llm import BUDGET_ERROR, LLMResource, record_usage
from datamate_resources.ray import DatamateRay
from datamate_resources.storage import ObjectStore
from datamate_resources.tables import TableRef
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
DOCUMENT_BATCH = 512  # documents labeled (embedded or sent to the LLM) per batch
TASKS_PER_SHARD = 5_000  # Label Studio tasks per JSONL file
TASK_SHARD = "tasks-{:05d}.jsonl"


class TopicLabeler:
    """Topic labels batch by batch, with the model (or LLM client) and the label vectors made once."""

    def __init__(self, section: AnnotationSection, context: dg.AssetExecutionContext, llm: LLMResource,
                 embeddings: EmbeddingsResource, storage: ObjectStore, dataset: str, run_budget: Budget | None):
        self.labels = section.labels
        self.client = self.model = self.label_vectors = self.budget = None
        if not self.labels:
            return
        if section.labeler == "embeddings":
            self.model = embeddings.get_embeddings()
            context.log.info(f"Topic by embeddings ({embeddings.model_name}) over {len(self.labels)} labels")
            self.label_vectors = np.asarray(self.model.embed_documents([label_description(n) for n in self.labels]))
            self.source = f"embeddings:{embeddings.model_name}"
        else:
            self.budget = StageBudget.for_run(storage, dataset, context.run.run_id, section.budget, run_budget)
            self.client = self.budget.client(llm, storage, context.log)
            context.log.info(f"Topic by LLM ({self.client.model_name}) over {len(self.labels)} labels")
            self.source = f"llm:{self.client.model_name}"

    def __call__(self, texts: list[str]) -> list:
        """One topic label (or None without labels) per text."""
        if not self.labels or not texts:
            return [None] * len(texts)
        if self.model is not None:
            return embedding_topics(self.model, self.label_vectors, self.labels, self.source, texts)
        results = self.client.generate_structured([topic_messages(t, self.labels) for t in texts],
                                                  topic_schema(self.labels), cache_key_extra="annotation.topic.v1")
        return [label(r.value.topic, r.value.confidence, self.source) if r.ok
                else {**label(None, 0, self.source), "error": r.error} for r in results]

    def metadata(self) -> dict:
        if self.client is None:
            return {}
        return {**self.client.usage.as_metadata(), **self.budget.metadata(self.client, "llm_")}


def embedding_topics(model, label_vectors: np.ndarray, labels: list[str], source: str, texts: list[str]) -> list:
    doc_vectors = np.asarray(model.embed_documents([t[:EMBEDDING_TEXT_CHARS] for t in texts]))
    return topic_labels_from_embeddings(doc_vectors, label_vectors, labels, source)


class ShardAnnotator:
    """`annotate` as a shard processor (`operators.ray_shards`) for `annotation.executor: ray`: the embedding
    model and the label vectors are made once per Ray actor; the counters fold into `AnnotationTotals`."""

    def __init__(self, section: AnnotationSection, human: dict[str, dict], make_model, model_name: str):
        self.section, self.human, self.make_model = section, human, make_model
        self.source = f"embeddings:{model_name}"
        self.model = self.label_vectors = None

    def __call__(self, documents: pa.Table) -> tuple[pa.Table, dict]:
        texts = documents.column("text").to_pylist()
        topics = [None] * len(texts)
        if self.section.labels and texts:
            if self.model is None:
                self.model = fit_to_actor(self.make_model())
                self.label_vectors = np.asarray(
                    self.model.embed_documents([label_description(n) for n in self.section.labels]))
            topics = embedding_topics(self.model, self.label_vectors, self.section.labels, self.source, texts)
        batch = annotate(documents, self.section, topics, self.human)
        totals = AnnotationTotals()
        totals.add(batch, topics)
        return pa.Table.from_batches([batch]), vars(totals)


def latest_human_labels(human: pa.Table | None) -> dict[str, dict[str, dict]]:
    """doc_id → field → label, the most recent annotation winning when several exports cover a document."""
    by_doc: dict[str, dict[str, dict]] = {}
    rows = sorted(human.to_pylist(), key=lambda r: r["annotated_at"] or "") if human is not None else []
    for row in rows:
        by_doc.setdefault(row["doc_id"], {})[row["field"]] = label(
            json.loads(row["value"]), 1.0, "human:label-studio", row["annotator"], row["annotated_at"])
    return by_doc


def annotate(cleaned: pa.Table | pa.RecordBatch, section: AnnotationSection, topics: list,
             human: dict[str, dict]) -> pa.RecordBatch:
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
    return pa.RecordBatch.from_pylist(rows, schema=ANNOTATED_SCHEMA)


def _part(labels: dict[str, dict], name: str, part: str = "value") -> Any:
    return labels.get(name, {}).get(part)


def distribution(counts: Counter, column: str) -> str:
    return markdown_table([{column: value, "documents": n} for value, n in counts.most_common()])


class AnnotationTotals:
    """Counters over the annotated batches, for the metadata."""

    def __init__(self):
        self.documents = self.human_labeled = self.topic_failed = self.topic_budget_stopped = 0
        self.languages: Counter = Counter()
        self.topics: Counter = Counter()

    def add(self, batch: pa.RecordBatch, topics: list) -> None:
        self.documents += batch.num_rows
        self.human_labeled += sum(batch.column("human_labeled").to_pylist())
        unlabeled = [t for t in topics if t is not None and t["value"] is None]
        stopped = sum(1 for t in unlabeled if t.get("error") == BUDGET_ERROR)
        self.topic_budget_stopped += stopped
        self.topic_failed += len(unlabeled) - stopped
        self.languages.update(batch.column("language").to_pylist())
        self.topics.update(batch.column("topic").to_pylist())

    @classmethod
    def folded(cls, counters: dict) -> "AnnotationTotals":
        """The totals of a run on Ray, from its shards' folded `vars(totals)`."""
        totals = cls()
        for name, value in counters.items():
            setattr(totals, name, Counter(value) if isinstance(value, dict) else value)
        return totals


def join_tasks(db: duckdb.DuckDBPyConnection, cleaned: TableRef, annotated: TableRef) -> list[str]:
    """Declares the `tasks` view (each annotated document with its text) in `db`; returns the languages seen.

    DuckDB joins the two tables as it scans them; with one thread the task order is the same on every run."""
    db.register("cleaned", cleaned.dataset())
    db.register("annotated", annotated.dataset())
    db.execute("create view tasks as select a.doc_id, a.labels, coalesce(c.text, '') as text "
               "from annotated a left join (select doc_id, text from cleaned) c using (doc_id)")
    return [row[0] for row in db.sql("select distinct coalesce(language, 'unknown') from annotated "
                                     "order by 1").fetchall()]


def task_shards(db: duckdb.DuckDBPyConnection, model_version: str) -> Iterator[list[dict]]:
    """Label Studio tasks, `TASKS_PER_SHARD` at a time, read from the `tasks` view in batches."""
    reader = db.sql("select doc_id, labels, text from tasks").fetch_record_batch(TASKS_PER_SHARD)
    shard: list[dict] = []
    for batch in reader:
        for row in batch.to_pylist():
            shard.append(label_studio.task(row["doc_id"], row["text"], json.loads(row["labels"]),
                                           model_version=model_version))
            if len(shard) == TASKS_PER_SHARD:
                yield shard
                shard = []
    if shard:
        yield shard


def build_defs(spec: DatasetSpec) -> dg.Definitions:
    section = spec.annotation
    if section is None:
        return dg.Definitions()
    studio = section.label_studio
    annotated_key, human_key = key(spec, "annotated"), key(spec, "human_labels")
    assets = []

    def label_documents(context: dg.AssetExecutionContext, llm: LLMResource, embeddings: EmbeddingsResource,
                        storage: ObjectStore, cleaned: TableRef, ray: DatamateRay | None):
        # The human labels table through the table API rather than as an input: without a label_studio section
        # there is no such asset. It holds what people labeled, small next to the corpus.
        human_ref = tables.current(storage, spec.name, "human_labels") if studio else None
        human = latest_human_labels(human_ref.read() if human_ref is not None else None)
        if ray is not None:
            # Ray actors read shards of the cleaned version, label them and write the parts; this process commits.
            context.log.info(f"Annotating {cleaned.num_rows} documents on Ray")
            annotator = partial(ShardAnnotator, section, human, embeddings.model_factory(), embeddings.model_name)
            ref, run = run_on_ray(context, ray, storage, spec.name, "annotated", cleaned, ["doc_id", "text"],
                                  annotator, ANNOTATED_SCHEMA, section.ray)
            totals, extra = AnnotationTotals.folded(run.counters), ray_metadata(run)
        else:
            ref, totals, extra = label_here(context, llm, embeddings, storage, cleaned, human)
        context.log.info(f"{totals.documents} documents annotated, {totals.topic_failed} topics failed, "
                         f"{totals.topic_budget_stopped} not labeled (budget reached), "
                         f"{totals.human_labeled} with human labels")
        metadata = {
            "documents": totals.documents,
            "human_labeled": totals.human_labeled,
            "topic_failed": totals.topic_failed,
            **({"topic_budget_stopped": totals.topic_budget_stopped} if section.labeler == "llm" else {}),
            "cleaned_version": cleaned.version,
            **({"human_labels_version": human_ref.version} if human_ref is not None else {}),
            "language_distribution": dg.MetadataValue.md(distribution(totals.languages, "language")),
            **({"topic_distribution": dg.MetadataValue.md(distribution(totals.topics, "topic"))}
               if section.labels else {}),
            "executor": section.executor,
            **extra,
        }
        return dg.Output(ref, metadata=metadata)

    def label_here(context: dg.AssetExecutionContext, llm: LLMResource, embeddings: EmbeddingsResource,
                   storage: ObjectStore, cleaned: TableRef, human: dict) -> tuple[TableRef, AnnotationTotals, dict]:
        context.log.info(f"Annotating {cleaned.num_rows} documents in batches of {DOCUMENT_BATCH}")
        # Opened (first batch read) before the models load, so a failing store fails fast, before model work.
        documents_in = cleaned.batches(columns=["doc_id", "text"], batch_size=DOCUMENT_BATCH)
        labeler = TopicLabeler(section, context, llm, embeddings, storage, spec.name, spec.budget)
        totals = AnnotationTotals()

        def batches() -> Iterator[pa.RecordBatch]:
            for documents in documents_in:
                topics = labeler(documents.column("text").to_pylist())
                batch = annotate(documents, section, topics, human)
                totals.add(batch, topics)
                yield batch

        ref = tables.write(storage, spec.name, "annotated", batches(), schema=ANNOTATED_SCHEMA,
                           run_id=context.run.run_id)
        if labeler.client is not None:
            record_usage(storage, spec.name, "annotated", context.run.run_id, labeler.client.usage)
        return ref, totals, labeler.metadata()

    # Only datasets that annotate on Ray ask for the Ray resource, so a local run never starts Ray.
    if section.executor == "ray":
        def compute(context: dg.AssetExecutionContext, llm: LLMResource, embeddings: EmbeddingsResource,
                    storage: ObjectStore, cleaned: TableRef, ray: DatamateRay):
            return label_documents(context, llm, embeddings, storage, cleaned, ray)
    else:
        def compute(context: dg.AssetExecutionContext, llm: LLMResource, embeddings: EmbeddingsResource,
                    storage: ObjectStore, cleaned: TableRef):
            return label_documents(context, llm, embeddings, storage, cleaned, None)

    annotated = dg.asset(
        key=annotated_key, group_name=spec.name, kinds={"delta"},
        ins={"cleaned": dg.AssetIn(key(spec, "cleaned"))},
        deps=[human_key] if studio else [],
        description="Per document: language (lingua), topic from the spec's labels, quality score; `labels` "
                    "holds every label with its source and confidence, human labels from Label Studio win.",
    )(compute)

    assets.append(annotated)

    if studio is not None:
        inbox = studio.inbox

        @dg.asset(
            key=human_key, group_name=spec.name, kinds={"delta", "labelstudio"},
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
            description="Label Studio tasks with the current labels as pre-annotations (sharded JSONL files, "
                        f"{TASKS_PER_SHARD} tasks each), and the labeling config (import both into a Label Studio "
                        f"project), under `label_studio/{spec.name}/`; the metadata lists every file's URI.",
        )
        def label_studio_tasks(context: dg.AssetExecutionContext, storage: ObjectStore, cleaned: TableRef,
                               annotated: TableRef) -> dg.MaterializeResult:
            folder = ("label_studio", spec.name)
            shards, tasks, with_predictions, sample = [], 0, 0, {}
            # The join spills to a temporary directory rather than hold both tables in memory.
            with tempfile.TemporaryDirectory(prefix="datamate-duckdb-") as spill, \
                    duckdb.connect(config={"threads": 1, "temp_directory": spill}) as db:
                config = label_studio.labeling_config(section.labels, join_tasks(db, cleaned, annotated))
                for number, shard in enumerate(task_shards(db, f"datamate:{spec.name}")):
                    name = TASK_SHARD.format(number)
                    lines = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in shard)
                    storage.write_bytes(lines.encode(), *folder, name)
                    shards.append(name)
                    tasks += len(shard)
                    with_predictions += sum(1 for t in shard if t["predictions"])
                    sample = sample or shard[0]
            # Shards of an earlier, larger export would be imported with these: they go.
            for path in storage.list(*folder, pattern="tasks*"):
                if path.rsplit("/", 1)[-1] not in shards:
                    storage.fs.rm(path)
            storage.write_bytes(config.encode(), *folder, "config.xml")
            context.log.info(f"{tasks} Label Studio tasks written to {len(shards)} files under "
                             f"{storage.uri(*folder)}")
            return dg.MaterializeResult(metadata={
                "tasks": tasks,
                "tasks_with_predictions": with_predictions,
                "task_files": len(shards),
                "task_uris": dg.MetadataValue.json([storage.uri(*folder, name) for name in shards]),
                "config_uri": storage.uri(*folder, "config.xml"),
                "annotated_version": annotated.version,
                "cleaned_version": cleaned.version,
                "labeling_config": dg.MetadataValue.md(f"```xml\n{config}```"),
                "sample_task": dg.MetadataValue.json(sample),
            })

        assets.append(label_studio_tasks)

    return dg.Definitions(assets=assets)
