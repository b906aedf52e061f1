"""Indexing benchmark: one command, figures measured against a baseline in the same run.

    .venv/bin/python bench/indexing.py [--chunks 600] [--search-chunks 100000]

1. Throughput: the raw local model's passages/s on the chunk texts (baseline), then end-to-end indexing
   (KnowledgeBase.sync into Milvus Lite: embed + upsert + verify) in chunks/s; prints the ratio (target ≥ 0.85).
2. Search latency p50/p95 at `--search-chunks` chunks in Milvus Lite (random unit vectors instead of the model,
   so the figure is Milvus's; dense HNSW) and the process's peak RSS. One client, one query per call through
   `KnowledgeBase.search`, after the index is built: `sync` flushes (Milvus Lite searches rows still in its
   MemTable by converting each to Python per query: seconds at 100k rows, which is what an earlier version of
   this benchmark measured), then release + load builds the HNSW index of every flushed segment before timing
   (Milvus Lite otherwise builds it in a background thread and searches unindexed segments meanwhile).
"""

import argparse
import resource
import tempfile
import time

import numpy as np
import pyarrow as pa

from datamate_resources.embeddings import MiniLMOnnxEmbeddings
from datamate_resources.milvus import KnowledgeBase, MilvusResource
from operators.chunking import ChunkingConfig, chunk_documents

WORDS = ("debian package kernel network interface mirror apt install remove service config boot grub ssh "
         "port firewall user group disk partition mount filesystem log journal update upgrade release").split()


def corpus(chunks: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    docs = [{"doc_id": f"d{i}", "text": " ".join(rng.choice(WORDS, 900)) + ".", "source_uri": f"bench://{i}"}
            for i in range(chunks // 8 + 1)]
    return chunk_documents(docs, ChunkingConfig("recursive", 800, 100)).chunks.slice(0, chunks)


class ArrayEmbeddings:
    """Precomputed unit vectors standing in for a model, so the search figure measures Milvus alone."""

    def __init__(self, dim: int):
        self.dim = dim

    def embed_documents(self, texts):
        return [self.embed_query(t) for t in texts]

    def embed_query(self, text):
        vector = np.random.default_rng(abs(hash(text)) % 2**32).standard_normal(self.dim)
        return (vector / np.linalg.norm(vector)).tolist()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=600)
    parser.add_argument("--search-chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    chunks = corpus(args.chunks)
    texts = chunks["text"].to_pylist()
    model = MiniLMOnnxEmbeddings()
    model.embed_documents(texts[:8])  # load and warm up

    began = time.perf_counter()
    model.embed_documents(texts)
    baseline = len(texts) / (time.perf_counter() - began)

    with tempfile.TemporaryDirectory() as home:
        milvus = MilvusResource(provider="local", path=f"{home}/milvus.db")
        with milvus.get_client() as client:
            kb = KnowledgeBase(client, "bench", model, model.model_name)
            began = time.perf_counter()
            report = kb.sync(chunks)
            end_to_end = len(texts) / (time.perf_counter() - began)
            assert report.vectors == len(texts)

            began = time.perf_counter()
            big = pa.Table.from_pylist([
                {"chunk_id": f"c{i:07d}", "doc_id": f"d{i // 10}", "text": f"chunk {i}", "position": i % 10,
                 "headings": "[]", "source_uri": "bench://big", "recipe_hash": ""} for i in range(args.search_chunks)
            ])
            big_kb = KnowledgeBase(client, "bench_search", ArrayEmbeddings(384), "random")
            big_report = big_kb.sync(big, hybrid=False, batch_size=5_000)
            assert big_report.vectors == args.search_chunks
            insert_seconds = time.perf_counter() - began
            began = time.perf_counter()
            client.release_collection(big_kb.name)
            client.load_collection(big_kb.name)  # builds the HNSW index of each segment before returning
            index_seconds = time.perf_counter() - began
            big_kb.search(["warm-up"], k=5)
            latencies = []
            for n in range(args.queries):
                began = time.perf_counter()
                big_kb.search([f"query {n}"], k=5)
                latencies.append((time.perf_counter() - began) * 1000)

    ratio = end_to_end / baseline
    p50, p95 = np.percentile(latencies, [50, 95])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"chunks                 : {len(texts)} (800 chars, ~170 tokens)")
    print(f"raw model              : {baseline:.1f} passages/s")
    print(f"indexing end-to-end    : {end_to_end:.1f} chunks/s (phases {report.seconds})")
    print(f"ratio                  : {ratio:.2f} (target >= 0.85) {'OK' if ratio >= 0.85 else 'BELOW TARGET'}")
    print(f"search at {args.search_chunks} chunks : p50 {p50:.1f} ms, p95 {p95:.1f} ms over {args.queries} queries "
          f"(Milvus Lite, HNSW, dense; insert+flush {insert_seconds:.0f} s, index build {index_seconds:.0f} s)")
    print(f"peak RSS               : {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
