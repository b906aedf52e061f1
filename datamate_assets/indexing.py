"""Indexing stage: `<dataset>/chunks` (cleaned documents split for retrieval and synthesis), `<dataset>/indexed`
(the chunks embedded into the dataset's Milvus collection) and `<dataset>/retrieval_eval` (recall@k and MRR of
the knowledge base on the synthesized questions, whose source chunk is known).

Milvus Lite is opened by one process at a time: each step opens it only while it works, and the assets that
touch it share the `milvus` pool, so `dagster instance concurrency set milvus 1` (with op-granularity pools)
serialises them across runs. For concurrent access use `milvus-lite server` or a Milvus server.

Every step streams, so memory does not grow with the corpus: `chunks` reads the cleaned table a batch of
documents at a time and writes chunks as they come (the length summary is a DuckDB query over the written table);
`indexed` diffs chunk ids (not texts) against the collection and embeds the new chunks batch by batch;
`retrieval_eval` reads the synthesized questions and only the chunk ids they name.

With `index.executor: ray` no chunk passes through the step's process while chunking or embedding: Ray actors
read shards of the cleaned (chunks) version and write the chunks (the new chunks with their vectors, table
`<dataset>/vectors`) as parts the step commits as one version (`datamate_assets/ray_stages.py`); `indexed` then
upserts from the vectors table into Milvus in batches. Resources per actor come from `index.ray`.
"""

import json
import time
from functools import partial
from pathlib import Path

import dagster as dg
import duckdb
import httpx
import pyarrow as pa
import pyarrow.dataset as pds

from datamate_assets.keys import key
from datamate_assets.ray_stages import ray_metadata, run_on_ray
from datamate_assets.spec import DatasetSpec
from datamate_resources import tables
from datamate_resources.embeddings import EmbeddingsResource, NewChunkEmbedder
from datamate_resources.milvus import OUTPUT_FIELDS, KnowledgeBase, MilvusResource
from datamate_resources.ray import DatamateRay
from datamate_resources.storage import ObjectStore
from datamate_resources.tables import TableRef
from operators.chunking import CHUNK_SCHEMA, ChunkingConfig, ChunkingTotals, ChunkProcessor, chunk_batches
from operators.evaluation.retrieval import KnownQuestion, first_answer_rank, rank_summary, read_questions
from operators.ray_shards import ShardRun

MILVUS_POOL = "milvus"
# Cleaned documents per batch: a batch and its chunks are what chunking holds in memory.
DOCUMENT_BATCH = 1_000
SERVICE_BATCH = 32  # questions per request: the service's `queries` limit
EVAL_COLUMNS = ["record_id", "question", "chunk_id", "doc_id", "rank", "top_chunk_ids"]


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def vectors_schema(chunks: pa.Schema) -> pa.Schema:
    """`<dataset>/vectors`: the chunks embedded by a run on Ray, with their vector, as Milvus takes them."""
    fields = [chunks.field(name) for name in chunks.names if name in {*OUTPUT_FIELDS, "recipe_hash"}]
    return pa.schema([*fields, ("dense", pa.list_(pa.float32()))])


def length_summary(chunks: TableRef) -> str:
    """Chunk lengths in characters (min, p50, p90, p99, max), computed by DuckDB over the table's text column."""
    with duckdb.connect() as db:
        db.register("chunks", chunks.dataset())  # scanned in batches, the text column only
        row = db.sql("select min(n), quantile_disc(n, [0.5, 0.9, 0.99]), max(n) "
                     "from (select length(text) as n from chunks)").fetchone()
    if row[0] is None:
        return "_(no chunks)_"
    return markdown_table(["min", "p50", "p90", "p99", "max"], [[row[0], *row[1], row[2]]])


def build_defs(spec: DatasetSpec) -> dg.Definitions:
    if spec.index is None:
        return dg.Definitions()
    section = spec.index
    config = ChunkingConfig(section.splitter, section.chunk_size, section.chunk_overlap, section.heading_context)

    def chunk_here(context: dg.AssetExecutionContext, storage: ObjectStore, cleaned: TableRef,
                   columns: list[str]) -> tuple[TableRef, dict, dict]:
        # Streamed: cleaned documents are read a batch at a time and their chunks written as they come.
        totals = ChunkingTotals()
        documents = cleaned.batches(columns=columns, batch_size=DOCUMENT_BATCH)
        ref = tables.write(storage, spec.name, "chunks", chunk_batches(documents, config, totals),
                           schema=CHUNK_SCHEMA, run_id=context.run.run_id)
        counters = {"documents": totals.documents, "chunks": totals.chunks,
                    "empty_documents": totals.empty_documents, "empty_examples": totals.empty_examples,
                    "duplicate_chunks": totals.duplicate_chunks}
        return ref, counters, {}

    def chunk_on_ray(context: dg.AssetExecutionContext, storage: ObjectStore, cleaned: TableRef,
                     columns: list[str], ray: DatamateRay) -> tuple[TableRef, dict, dict]:
        # Ray actors read shards of the cleaned version and write the chunk parts; this process commits them.
        ref, run = run_on_ray(context, ray, storage, spec.name, "chunks", cleaned, columns,
                              partial(ChunkProcessor, config), CHUNK_SCHEMA, section.ray)
        return ref, run.counters, ray_metadata(run)

    def chunk(context: dg.AssetExecutionContext, storage: ObjectStore, cleaned: TableRef,
              ray: DatamateRay | None) -> dg.Output[TableRef]:
        columns = [c for c in ("doc_id", "text", "source_uri", "recipe_hash", "title") if c in cleaned.schema.names]
        ref, counters, extra = (chunk_on_ray(context, storage, cleaned, columns, ray) if ray is not None
                                else chunk_here(context, storage, cleaned, columns))
        for doc_id in counters.get("empty_examples", []):
            context.log.warning(f"document {doc_id} has no text to chunk; it gets no chunk")
        context.log.info(f"{counters.get('documents', 0)} documents -> {counters.get('chunks', 0)} chunks")
        return dg.Output(
            ref,
            metadata={
                "documents": counters.get("documents", 0),
                "chunks": counters.get("chunks", 0),
                "documents_without_chunks": counters.get("empty_documents", 0),
                "repeated_chunks_merged": counters.get("duplicate_chunks", 0),
                "splitter": config.splitter,
                "chunk_size": config.chunk_size,
                "chunk_overlap": config.chunk_overlap,
                "heading_context": config.heading_context,
                "chunk_characters": dg.MetadataValue.md(length_summary(ref)),
                "cleaned_version": cleaned.version,
                "executor": section.executor,
                **extra,
            },
        )

    # Only datasets that run on Ray ask for the Ray resource, so a local run never starts Ray.
    if section.executor == "ray":
        def compute_chunks(context: dg.AssetExecutionContext, storage: ObjectStore, cleaned: TableRef,
                           ray: DatamateRay) -> dg.Output[TableRef]:
            return chunk(context, storage, cleaned, ray)
    else:
        def compute_chunks(context: dg.AssetExecutionContext, storage: ObjectStore,
                           cleaned: TableRef) -> dg.Output[TableRef]:
            return chunk(context, storage, cleaned, None)

    chunks = dg.asset(
        key=key(spec, "chunks"),
        group_name=spec.name,
        ins={"cleaned": dg.AssetIn(key(spec, "cleaned"))},
        description=f"Cleaned documents split by the `{config.splitter}` splitter "
        f"(size {config.chunk_size}, overlap {config.chunk_overlap}).",
        kinds={"python", "delta"},
    )(compute_chunks)

    def index(context: dg.AssetExecutionContext, chunks: TableRef, milvus: MilvusResource,
              embeddings: EmbeddingsResource, storage: ObjectStore, ray: DatamateRay | None) -> dg.MaterializeResult:
        started = time.perf_counter()

        def progress(done: int, total: int) -> None:
            rate = done / max(time.perf_counter() - started, 1e-9)
            context.log.info(f"embedded and upserted {done}/{total} new chunks ({rate:.1f} chunks/s)")

        ray_runs: list[ShardRun] = []

        def embed_on_ray(stored_ids: pa.Array) -> TableRef:
            # Actors read the chunks version, embed the chunks Milvus lacks and write them with their vectors to
            # `<dataset>/vectors`; this process then upserts from that table.
            import ray as ray_api

            embedder = partial(NewChunkEmbedder, embeddings.model_factory(), ray_api.put(stored_ids))
            ref, run = run_on_ray(context, ray, storage, spec.name, "vectors", chunks, None, embedder,
                                  vectors_schema(chunks.schema), section.ray)
            ray_runs.append(run)
            return ref

        with milvus.get_client() as client:
            knowledge_base = KnowledgeBase(
                client, spec.name, embeddings.get_embeddings(), embeddings.model_name,
                where=milvus.describe(), timeout=milvus.timeout_seconds, logger=context.log,
            )
            report = knowledge_base.sync(
                chunks, index_type=section.index_type, hybrid=section.hybrid, on_progress=progress,
                source_version=str(chunks.version), embed_new=embed_on_ray if ray is not None else None,
            )
        layout = report.layout
        summary = (
            "unchanged: nothing embedded, nothing deleted"
            if not report.changed
            else f"{report.embedded} chunks embedded, {report.deleted} deleted, {report.unchanged} kept"
        )
        context.log.info(f"{knowledge_base.name}: {summary}; {report.vectors} vectors for {report.chunks} chunks")
        return dg.MaterializeResult(
            metadata={
                "chunks": report.chunks,
                "chunks_version": chunks.version,
                "vectors": report.vectors,
                "embedded": report.embedded,
                "deleted": report.deleted,
                "unchanged": report.unchanged,
                "summary": summary,
                "rebuilt": report.rebuilt,
                "collection": knowledge_base.name,
                "milvus": milvus.describe(),
                "executor": section.executor,
                "search": "hybrid: dense + BM25, reciprocal rank fusion" if layout.hybrid else "dense only",
                "index_type": layout.index_type,
                "index_params": dg.MetadataValue.json(layout.index_params),
                "embedding_model": layout.model,
                "dimension": layout.dim,
                "seconds_per_phase": dg.MetadataValue.md(
                    markdown_table(["phase", "seconds"], [[k, f"{v:.2f}"] for k, v in report.seconds.items()])
                ),
                **(ray_metadata(ray_runs[0]) if ray_runs else {}),
            }
        )

    if section.executor == "ray":
        def compute(context: dg.AssetExecutionContext, chunks: TableRef, milvus: MilvusResource,
                    embeddings: EmbeddingsResource, storage: ObjectStore, ray: DatamateRay) -> dg.MaterializeResult:
            return index(context, chunks, milvus, embeddings, storage, ray)
    else:
        def compute(context: dg.AssetExecutionContext, chunks: TableRef, milvus: MilvusResource,
                    embeddings: EmbeddingsResource) -> dg.MaterializeResult:
            return index(context, chunks, milvus, embeddings, None, None)

    indexed = dg.asset(
        key=key(spec, "indexed"),
        group_name=spec.name,
        ins={"chunks": dg.AssetIn(key(spec, "chunks"))},
        description="Chunks embedded and upserted into the dataset's Milvus collection (idempotent by chunk_id).",
        kinds={"milvus"},
        pool=MILVUS_POOL,
    )(compute)

    defs = [chunks, indexed]
    if section.checks.questions:
        defs.append(build_known_questions_eval(spec, milvus_dependency=key(spec, "indexed")))
    elif spec.synthesis is not None:
        defs.append(build_retrieval_eval(spec, milvus_dependency=key(spec, "indexed")))
    return dg.Definitions(assets=defs)


def build_retrieval_eval(spec: DatasetSpec, milvus_dependency: dg.AssetKey) -> dg.AssetsDefinition:
    checks = spec.index.checks
    eval_key = key(spec, "retrieval_eval")

    @dg.asset(
        key=eval_key,
        group_name=spec.name,
        ins={"synthesized": dg.AssetIn(key(spec, "synthesized")), "chunks": dg.AssetIn(key(spec, "chunks"))},
        deps=[milvus_dependency],
        description=f"Recall@{checks.k} and MRR of the knowledge base on the synthesized questions.",
        check_specs=[dg.AssetCheckSpec(f"recall_at_{checks.k}", asset=eval_key)],
        kinds={"milvus"},
        pool=MILVUS_POOL,
    )
    def retrieval_eval(
        context: dg.AssetExecutionContext,
        synthesized: TableRef,
        chunks: TableRef,
        milvus: MilvusResource,
        embeddings: EmbeddingsResource,
    ):
        # Synthesis keeps at most `max_records` records; of the chunks only the ids those records name are read.
        records = synthesized.read(columns=["record_id", "question", "chunk_id", "doc_id"]).to_pylist()
        asked = sorted({r["chunk_id"] for r in records if r["chunk_id"]})
        known_chunks = set(chunks.read(columns=["chunk_id"], filter=pds.field("chunk_id").isin(asked))
                           .column("chunk_id").to_pylist()) if asked else set()
        questions, set_aside = [], {"no_question": 0, "no_chunk_id": 0, "chunk_not_indexed": 0}
        for row in records:
            if not (row["question"] or "").strip():
                set_aside["no_question"] += 1
            elif not row["chunk_id"]:
                set_aside["no_chunk_id"] += 1
            elif row["chunk_id"] not in known_chunks:
                set_aside["chunk_not_indexed"] += 1
            else:
                questions.append(row)
        context.log.info(f"evaluating {len(questions)} questions at k={checks.k}; set aside: {set_aside}")

        with milvus.get_client() as client:
            knowledge_base = KnowledgeBase(
                client, spec.name, embeddings.get_embeddings(), embeddings.model_name,
                where=milvus.describe(), timeout=milvus.timeout_seconds, logger=context.log,
            )
            hits = knowledge_base.search([q["question"] for q in questions], k=checks.k)

        results = []
        for question, found in zip(questions, hits, strict=True):
            ranked = [hit["chunk_id"] for hit in found]
            rank = ranked.index(question["chunk_id"]) + 1 if question["chunk_id"] in ranked else None
            results.append({**question, "rank": rank, "top_chunk_ids": json.dumps(ranked)})
        table = pa.Table.from_pylist(results, schema=pa.schema(
            [("record_id", pa.string()), ("question", pa.string()), ("chunk_id", pa.string()),
             ("doc_id", pa.string()), ("rank", pa.int32()), ("top_chunk_ids", pa.string())]
        ))
        ranks = [r["rank"] for r in results]
        recall = sum(r is not None for r in ranks) / len(ranks) if ranks else 0.0
        mrr = sum(1 / r for r in ranks if r) / len(ranks) if ranks else 0.0
        rank_counts = [[str(n), ranks.count(n)] for n in range(1, checks.k + 1)] + [["miss", ranks.count(None)]]
        context.log.info(f"recall@{checks.k} = {recall:.3f}, MRR = {mrr:.3f} on {len(ranks)} questions")
        yield dg.Output(
            table,
            metadata={
                "questions": len(ranks),
                **{f"set_aside_{reason}": count for reason, count in set_aside.items()},
                f"recall_at_{checks.k}": dg.MetadataValue.float(recall),
                "mrr": dg.MetadataValue.float(mrr),
                "rank_of_source_chunk": dg.MetadataValue.md(markdown_table(["rank", "questions"], rank_counts)),
            },
        )
        threshold = checks.min_recall_at_k
        yield dg.AssetCheckResult(
            check_name=f"recall_at_{checks.k}",
            passed=bool(ranks) and (threshold is None or recall >= threshold),
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                f"recall_at_{checks.k}": recall,
                "mrr": mrr,
                "threshold": threshold if threshold is not None else "none set",
                "questions": len(ranks),
            },
            description=None if ranks else "no synthesized question with an indexed source chunk",
        )

    return retrieval_eval


def questions_path(spec: DatasetSpec) -> Path:
    """`index.checks.questions`, relative to the folder holding datasets/ like a folder source."""
    base = spec.spec_path.resolve().parent.parent if spec.spec_path else Path.cwd()
    return base / spec.index.checks.questions


def service_ranks(known: list[KnownQuestion], dataset: str, k: int, logger) -> list[int | None] | None:
    """The same questions through the retrieval service (`datamate serve`) at DATAMATE_SERVICE_URL, with the API
    key in DATAMATE_SERVICE_API_KEY; None when no service is configured."""
    url = dg.EnvVar("DATAMATE_SERVICE_URL").get_value()
    if not url:
        return None
    headers = {"Authorization": f"Bearer {dg.EnvVar('DATAMATE_SERVICE_API_KEY').get_value() or ''}"}
    ranks: list[int | None] = []
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=120) as client:
        for start in range(0, len(known), SERVICE_BATCH):
            batch = known[start : start + SERVICE_BATCH]
            response = client.post("/v1/search", json={"dataset": dataset, "queries": [q.question for q in batch],
                                                       "k": k})
            if response.status_code != 200:
                raise RuntimeError(f"{url}/v1/search answered {response.status_code}: {response.text[:500]}")
            ranks += [first_answer_rank(result["hits"], q)
                      for q, result in zip(batch, response.json()["results"], strict=True)]
    logger.info(f"asked {len(ranks)} questions through the service at {url}")
    return ranks


def build_known_questions_eval(spec: DatasetSpec, milvus_dependency: dg.AssetKey) -> dg.AssetsDefinition:
    """`retrieval_eval` on a fixed question set with known answers (`index.checks.questions`), e.g. an FAQ's
    questions kept apart from the pages indexed: a hit is right when it holds the answer's text
    (operators.evaluation.retrieval). Reported in process and, when DATAMATE_SERVICE_URL is set, through the
    service over HTTP."""
    checks = spec.index.checks
    eval_key = key(spec, "retrieval_eval")

    @dg.asset(
        key=eval_key,
        group_name=spec.name,
        deps=[milvus_dependency],
        description=f"Hit rate at {checks.k} and MRR of the knowledge base on known questions ({checks.questions}).",
        check_specs=[dg.AssetCheckSpec(f"recall_at_{checks.k}", asset=eval_key)],
        kinds={"milvus"},
        pool=MILVUS_POOL,
    )
    def retrieval_eval(context: dg.AssetExecutionContext, milvus: MilvusResource, embeddings: EmbeddingsResource):
        known = read_questions(questions_path(spec))
        with milvus.get_client() as client:
            knowledge_base = KnowledgeBase(
                client, spec.name, embeddings.get_embeddings(), embeddings.model_name,
                where=milvus.describe(), timeout=milvus.timeout_seconds, logger=context.log,
            )
            found = knowledge_base.search([q.question for q in known], k=checks.k)
        ranks = [first_answer_rank(hits, q) for hits, q in zip(found, known, strict=True)]
        # Milvus Lite is released above, so a service on the same database can answer now.
        served = service_ranks(known, spec.name, checks.k, context.log)
        summary = rank_summary(ranks, checks.k)
        recall, mrr = summary[f"recall_at_{checks.k}"], summary["mrr"]
        context.log.info(f"recall@{checks.k} = {recall:.3f}, MRR = {mrr:.3f} on {len(ranks)} known questions")
        table = pa.table({
            "question": [q.question for q in known],
            "source": [q.source for q in known],
            "rank": pa.array(ranks, pa.int32()),
            "top_chunk_ids": [json.dumps([h["chunk_id"] for h in hits]) for hits in found],
            "top_sources": [json.dumps([h["source_uri"] for h in hits]) for hits in found],
        })
        rank_counts = [[str(n), ranks.count(n)] for n in range(1, checks.k + 1)] + [["miss", ranks.count(None)]]
        metadata = {
            "questions": len(ranks),
            **{name: dg.MetadataValue.float(value) for name, value in summary.items() if name != "questions"},
            "rank_of_answer": dg.MetadataValue.md(markdown_table(["rank", "questions"], rank_counts)),
            "misses": dg.MetadataValue.md("\n".join(f"- {q.question} ({q.source})"
                                                    for q, r in zip(known, ranks, strict=True) if r is None)[:20_000]
                                          or "_(none)_"),
        }
        if served is not None:
            over_http = rank_summary(served, checks.k)
            metadata |= {f"service_{name}": dg.MetadataValue.float(value)
                         for name, value in over_http.items() if name != "questions"}
        yield dg.Output(table, metadata=metadata)
        threshold = checks.min_recall_at_k
        yield dg.AssetCheckResult(
            check_name=f"recall_at_{checks.k}",
            passed=bool(ranks) and (threshold is None or recall >= threshold),
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={f"recall_at_{checks.k}": recall, "mrr": mrr, "questions": len(ranks),
                      "threshold": threshold if threshold is not None else "none set"},
            description=None if ranks else f"no question in {checks.questions}",
        )

    return retrieval_eval
