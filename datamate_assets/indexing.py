"""Indexing stage: `<dataset>/chunks` (cleaned documents split for retrieval and synthesis), `<dataset>/indexed`
(the chunks embedded into the dataset's Milvus collection) and `<dataset>/retrieval_eval` (recall@k and MRR of
the knowledge base on the synthesized questions, whose source chunk is known).

Milvus Lite is opened by one process at a time: each step opens it only while it works, and the assets that
touch it share the `milvus` pool, so `dagster instance concurrency set milvus 1` (with op-granularity pools)
serialises them across runs. For concurrent access use `milvus-lite server` or a Milvus server.
"""

import json
import time

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec
from datamate_resources.embeddings import EmbeddingsResource, RayEmbeddings
from datamate_resources.milvus import KnowledgeBase, MilvusResource
from datamate_resources.ray import DatamateRay
from operators.chunking import ChunkingConfig, chunk_documents

MILVUS_POOL = "milvus"
EVAL_COLUMNS = ["record_id", "question", "chunk_id", "doc_id", "rank", "top_chunk_ids"]


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def length_summary(lengths: list[int]) -> str:
    if not lengths:
        return "_(no chunks)_"
    ordered = sorted(lengths)
    pick = [ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.0, 0.5, 0.9, 0.99)]
    return markdown_table(["min", "p50", "p90", "p99", "max"], [[*pick, ordered[-1]]])


def build_defs(spec: DatasetSpec) -> dg.Definitions:
    if spec.index is None:
        return dg.Definitions()
    section = spec.index
    config = ChunkingConfig(section.splitter, section.chunk_size, section.chunk_overlap)

    @dg.asset(
        key=key(spec, "chunks"),
        group_name=spec.name,
        ins={"cleaned": dg.AssetIn(key(spec, "cleaned"))},
        description=f"Cleaned documents split by the `{config.splitter}` splitter "
        f"(size {config.chunk_size}, overlap {config.chunk_overlap}).",
        kinds={"python", "parquet"},
    )
    def chunks(context: dg.AssetExecutionContext, cleaned: pa.Table) -> dg.Output[pa.Table]:
        result = chunk_documents(cleaned, config)
        for doc_id in result.empty_documents[:20]:
            context.log.warning(f"document {doc_id} has no text to chunk; it gets no chunk")
        context.log.info(f"{result.documents} documents -> {result.chunks.num_rows} chunks")
        lengths = pc.utf8_length(result.chunks["text"]).to_pylist()
        return dg.Output(
            result.chunks,
            metadata={
                "documents": result.documents,
                "chunks": result.chunks.num_rows,
                "documents_without_chunks": len(result.empty_documents),
                "repeated_chunks_merged": result.duplicate_chunks,
                "splitter": config.splitter,
                "chunk_size": config.chunk_size,
                "chunk_overlap": config.chunk_overlap,
                "chunk_characters": dg.MetadataValue.md(length_summary(lengths)),
            },
        )

    def index(context: dg.AssetExecutionContext, chunks: pa.Table, milvus: MilvusResource,
              embeddings: EmbeddingsResource, on_ray: bool) -> dg.MaterializeResult:
        started = time.perf_counter()

        def progress(done: int, total: int) -> None:
            rate = done / max(time.perf_counter() - started, 1e-9)
            context.log.info(f"embedded and upserted {done}/{total} new chunks ({rate:.1f} chunks/s)")

        model = RayEmbeddings(embeddings.model_factory()) if on_ray else embeddings.get_embeddings()
        if on_ray:
            context.log.info(f"embedding on Ray with {len(model.actors)} model actors")
        try:
            with milvus.get_client() as client:
                knowledge_base = KnowledgeBase(
                    client, spec.name, model, embeddings.model_name,
                    where=milvus.describe(), timeout=milvus.timeout_seconds, logger=context.log,
                )
                report = knowledge_base.sync(
                    chunks, index_type=section.index_type, hybrid=section.hybrid, on_progress=progress
                )
        finally:
            if on_ray:
                model.close()
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
            }
        )

    # Only datasets that embed on Ray ask for the Ray resource, so a local run never starts Ray.
    if section.executor == "ray":
        def compute(context: dg.AssetExecutionContext, chunks: pa.Table, milvus: MilvusResource,
                    embeddings: EmbeddingsResource, ray: DatamateRay) -> dg.MaterializeResult:
            return index(context, chunks, milvus, embeddings, on_ray=True)
    else:
        def compute(context: dg.AssetExecutionContext, chunks: pa.Table, milvus: MilvusResource,
                    embeddings: EmbeddingsResource) -> dg.MaterializeResult:
            return index(context, chunks, milvus, embeddings, on_ray=False)

    indexed = dg.asset(
        key=key(spec, "indexed"),
        group_name=spec.name,
        ins={"chunks": dg.AssetIn(key(spec, "chunks"))},
        description="Chunks embedded and upserted into the dataset's Milvus collection (idempotent by chunk_id).",
        kinds={"milvus"},
        pool=MILVUS_POOL,
    )(compute)

    defs = [chunks, indexed]
    if spec.synthesis is not None:
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
        synthesized: pa.Table,
        chunks: pa.Table,
        milvus: MilvusResource,
        embeddings: EmbeddingsResource,
    ):
        known_chunks = set(chunks["chunk_id"].to_pylist())
        questions, set_aside = [], {"no_question": 0, "no_chunk_id": 0, "chunk_not_indexed": 0}
        for row in synthesized.select(["record_id", "question", "chunk_id", "doc_id"]).to_pylist():
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
