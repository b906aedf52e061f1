"""Indexing benchmark: one command, figures measured against a baseline in the same run.

    .venv/bin/python -m bench.indexing [--chunks 300] [--rounds 9] [--search-chunks 100000] [--queries 200]

1. Throughput. Baseline: the raw local model (MiniLM ONNX int8) embedding the chunk texts, in passages/s. Ours:
   `KnowledgeBase.sync` of the same chunks into a new Milvus Lite collection (dimension, create, diff, embed with
   the upserts overlapped, flush, index build, count check), in chunks/s. The two alternate `--rounds` times, so
   both see the same machine load; the median of the rounds' ratios is printed (target >= 0.85), with the share
   of sync's time spent outside the model's calls, which machine load does not blur as much.
2. Search at `--search-chunks` chunks: `KnowledgeBase.sync` (dense HNSW, default batches) of synthetic vectors
   standing in for the model, so the figures are Milvus Lite's: clustered unit vectors (n/100 clusters, cosine
   ~0.7 within a cluster, like embeddings of related passages; uniform random vectors have no near neighbours, so
   HNSW builds slowly and finds few of them). Prints the write and index-build seconds, then the latency p50/p95
   of one query per `KnowledgeBase.search` call, one client, and recall@5 against exact cosine search.
3. Memory: the process's RSS after each part and its peak (`ru_maxrss`). Milvus Lite runs inside this process,
   so its memory is included.
"""

import argparse
import os
import resource
import statistics
import tempfile
import time

import numpy as np
import psutil
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


class ClusteredEmbeddings:
    """Stands in for the model at 10^5 chunks: text "<i> ..." gets row i of a fixed matrix of clustered unit
    vectors; query "q<j>" a perturbed copy of row j·7919 mod n (so its true neighbours are in that row's cluster)."""

    dimension = 384

    def __init__(self, rows: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        centers = rng.standard_normal((max(rows // 100, 1), self.dimension))
        vectors = centers[rng.integers(0, len(centers), rows)] + 0.7 * rng.standard_normal((rows, self.dimension))
        self.vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)

    def query_vector(self, j: int) -> np.ndarray:
        row = self.vectors[j * 7919 % len(self.vectors)]
        noisy = row + 0.03 * np.random.default_rng(j).standard_normal(self.dimension).astype(np.float32)
        return noisy / np.linalg.norm(noisy)

    def embed_documents(self, texts):
        return [self.embed_query(t) if t.startswith("q") else self.vectors[int(t.split(" ", 1)[0])].tolist()
                for t in texts]

    def embed_query(self, text):
        return self.query_vector(int(text.removeprefix("q"))).tolist()


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def phases(seconds: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f}" for name, value in seconds.items())


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process, Milvus Lite's included
    return usage.ru_utime + usage.ru_stime


def throughput(client, chunks: pa.Table, rounds: int) -> list[dict]:
    """Per round: the raw model and `sync` on the same texts, back to back (order alternating, so a change of
    machine load hits both alike); wall-clock and CPU seconds of each."""
    texts = chunks["text"].to_pylist()
    model = MiniLMOnnxEmbeddings()
    model.embed_documents(texts[:64])  # load and warm up
    results = []
    for n in range(rounds):
        result = {}
        for what in ("raw", "sync") if n % 2 == 0 else ("sync", "raw"):
            wall, cpu = time.perf_counter(), cpu_seconds()
            if what == "raw":
                model.embed_documents(texts)
            else:
                report = KnowledgeBase(client, f"bench_{n}", model, model.model_name).sync(chunks)
                assert report.vectors == report.embedded == len(texts), report
                result["seconds"] = report.seconds
            result[what] = time.perf_counter() - wall, cpu_seconds() - cpu
        result["ratio"] = result["raw"][0] / result["sync"][0]
        results.append(result)
        print(f"  round {n + 1}: raw model {len(texts) / result['raw'][0]:.1f} passages/s, sync "
              f"{len(texts) / result['sync'][0]:.1f} chunks/s, ratio {result['ratio']:.2f} (CPU seconds "
              f"{result['raw'][1]:.0f} vs {result['sync'][1]:.0f}; load average {os.getloadavg()[0]:.1f}; "
              f"sync seconds: {phases(result['seconds'])})", flush=True)
    return results


def search(client, rows: int, queries: int):
    model = ClusteredEmbeddings(rows)
    texts = corpus(1_000, seed=1)["text"].to_pylist()
    big = pa.Table.from_pylist([
        {"chunk_id": f"c{i:07d}", "doc_id": f"d{i // 10}", "text": f"{i} {texts[i % len(texts)]}", "position": i % 10,
         "headings": "[]", "source_uri": "bench://big", "recipe_hash": ""} for i in range(rows)
    ])
    kb = KnowledgeBase(client, "bench_search", model, "clustered")
    began = time.perf_counter()
    report = kb.sync(big, hybrid=False)  # the default batch size, 256
    total = time.perf_counter() - began
    assert report.vectors == rows
    del big

    kb.search(["q0"], k=5)  # the first search per KnowledgeBase describes and loads the collection
    latencies, recall = [], []
    for j in range(1, queries + 1):
        began = time.perf_counter()
        hits = kb.search([f"q{j}"], k=5)[0]
        latencies.append((time.perf_counter() - began) * 1000)
        exact = np.argpartition(-(model.vectors @ model.query_vector(j)), 5)[:5]
        recall.append(len({f"c{i:07d}" for i in exact} & {hit["chunk_id"] for hit in hits}) / 5)
    return report, total, latencies, float(np.mean(recall))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=300, help="chunks per throughput round (800 characters)")
    parser.add_argument("--rounds", type=int, default=9, help="alternating raw-model / sync rounds")
    parser.add_argument("--search-chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    chunks = corpus(args.chunks)

    with tempfile.TemporaryDirectory() as home:
        milvus = MilvusResource(provider="local", path=f"{home}/milvus.db")
        with milvus.get_client() as client:
            print(f"throughput: {args.rounds} rounds of {chunks.num_rows} chunks (800 characters, ~170 tokens)")
            rounds = throughput(client, chunks, args.rounds)
            after_throughput = rss_mb(), peak_rss_mb()
            print(f"search: sync of {args.search_chunks} chunks, then {args.queries} queries", flush=True)
            report, total, latencies, recall = search(client, args.search_chunks, args.queries)
            after_search = rss_mb(), peak_rss_mb()

    n = chunks.num_rows
    raw = [n / r["raw"][0] for r in rounds]
    ours = [n / r["sync"][0] for r in rounds]
    ratios = sorted(r["ratio"] for r in rounds)
    ratio = statistics.median(ratios)
    sync_seconds = sum(r["sync"][0] for r in rounds)
    outside_model = 1 - sum(r["seconds"]["embed"] for r in rounds) / sync_seconds
    model_inside = sum(r["seconds"]["embed"] for r in rounds) / sum(r["raw"][0] for r in rounds)
    median_round = min(rounds, key=lambda r: abs(r["ratio"] - ratio))
    p50, p95 = np.percentile(latencies, [50, 95])
    write = report.seconds["embed"] + report.seconds["upsert"]  # overlapped: at most their sum
    print()
    print(f"raw model (baseline)   : {statistics.median(raw):.1f} passages/s (median; rounds "
          f"{', '.join(f'{r:.1f}' for r in raw)})")
    print(f"indexing end-to-end    : {statistics.median(ours):.1f} chunks/s (median; rounds "
          f"{', '.join(f'{o:.1f}' for o in ours)}); sync seconds of the median round: "
          f"{phases(median_round['seconds'])}")
    print(f"ratio                  : {ratio:.2f} (median of the rounds' ratios {ratios[0]:.2f}-{ratios[-1]:.2f}; "
          f"target >= 0.85) {'OK' if ratio >= 0.85 else 'BELOW TARGET'}")
    print(f"where sync time goes   : {outside_model:.1%} outside the model's calls (prepare, diff, the last upsert, "
          f"flush, index, verify); the model's calls inside sync took {model_inside:.2f}x its time alone")
    print(f"{args.search_chunks} chunks, sync   : {total:.0f} s = write {write:.0f} s + flush "
          f"{report.seconds['flush']:.0f} s + index build {report.seconds.get('index', 0):.0f} s + rest "
          f"({args.search_chunks / write:.0f} rows/s written; seconds: {phases(report.seconds)})")
    print(f"search at {args.search_chunks}     : p50 {p50:.1f} ms, p95 {p95:.1f} ms over {args.queries} queries, "
          f"recall@5 {recall:.3f} vs exact (Milvus Lite, dense HNSW M=16 efConstruction=200, ef=64)")
    print(f"memory                 : RSS {after_throughput[0]:.0f} MB after throughput (peak "
          f"{after_throughput[1]:.0f} MB), {after_search[0]:.0f} MB after search (peak {after_search[1]:.0f} MB)")
    print(f"load average           : {', '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min) on "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
