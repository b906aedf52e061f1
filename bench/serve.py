"""Retrieval service benchmark: `datamate serve` under 1, 8 and 32 concurrent clients, against the same queries
through the in-process API (`KnowledgeBase.search`) as the baseline, measured in the same run.

    .venv/bin/python -m bench.serve [--chunks 100000] [--requests 300] [--clients 1,8,32] [--mode hybrid]

1. A Milvus server on loopback (`milvus-lite server`, Milvus Lite's gRPC server: hybrid dense + BM25 like a
   Milvus >= 2.5 server) gets `--chunks` chunks: texts from bench.indexing's word corpus for BM25, synthetic
   clustered vectors (bench.indexing.ClusteredEmbeddings) standing in for the model, as bench/indexing.py does.
2. `datamate serve` as its own process on loopback reads it, with one API key and no effective rate limit.
   Queries are real questions embedded by the packaged model (MiniLM ONNX int8) in the service, as in
   production; the hits are meaningless against synthetic vectors, the latency is not.
3. For each client count: `--requests` POST /v1/search (k=5) from that many threads with keep-alive
   connections: requests/s, p50/p95/p99 latency, error rate. Baseline: the same queries through
   `KnowledgeBase.search` in this process (same model, same Milvus server) from as many threads.
Goal: p95 <= 100 ms at 8 clients with 0 errors.
"""

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa

from bench.indexing import WORDS, ClusteredEmbeddings, corpus
from datamate_resources.embeddings import MiniLMOnnxEmbeddings
from datamate_resources.milvus import KnowledgeBase, MilvusResource

REPO = Path(__file__).resolve().parents[1]
DATASET = "bench_serve"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: list[str], port: int, log: Path, env: dict | None = None, timeout: float = 300) -> subprocess.Popen:
    """A server in its own process group, once its port answers."""
    with open(log, "wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
                                   env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{args[0]} exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if time.monotonic() > deadline:
                stop(process)
                raise TimeoutError(f"{args} did not listen on {port} in {timeout}s") from None
            time.sleep(0.3)


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def questions(count: int, seed: int = 7) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"how do I configure the {' '.join(rng.choice(WORDS, 3))} on debian?" for _ in range(count)]


def build(uri: str, rows: int, hybrid: bool) -> float:
    texts = corpus(1_000, seed=1)["text"].to_pylist()
    table = pa.Table.from_pylist([
        {"chunk_id": f"c{i:07d}", "doc_id": f"d{i // 10}", "text": f"{i} {texts[i % len(texts)]}",
         "position": i % 10, "headings": "[]", "source_uri": f"bench://{i // 10}", "recipe_hash": ""}
        for i in range(rows)
    ])
    began = time.perf_counter()
    with MilvusResource(provider="server", uri=uri, timeout_seconds=600).get_client() as client:
        report = KnowledgeBase(client, DATASET, ClusteredEmbeddings(rows), "clustered", timeout=600).sync(
            table, hybrid=hybrid, source_version="bench")
    assert report.vectors == rows, report
    return time.perf_counter() - began


def measure(call, queries: list[str], clients: int) -> dict:
    """`call(query)` -> ok, for every query from `clients` threads; latencies in ms."""
    def timed(query: str) -> tuple[float, bool]:
        began = time.perf_counter()
        try:
            ok = call(query)
        except Exception:  # an error is counted, the run goes on
            ok = False
        return (time.perf_counter() - began) * 1000, ok

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(timed, queries))
    wall = time.perf_counter() - began
    latencies = np.array([ms for ms, _ in results])
    errors = sum(not ok for _, ok in results)
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return {"rps": len(queries) / wall, "p50": p50, "p95": p95, "p99": p99, "errors": errors / len(queries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300, help="requests per client count")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--mode", choices=["hybrid", "dense"], default="hybrid")
    args = parser.parse_args()
    levels = [int(n) for n in args.clients.split(",")]
    key = secrets.token_urlsafe(24)

    with tempfile.TemporaryDirectory() as home:
        home = Path(home)
        milvus_port, api_port = free_port(), free_port()
        uri = f"http://127.0.0.1:{milvus_port}"
        milvus = start([str(Path(sys.executable).parent / "milvus-lite"), "server", "--data-dir", str(home / "m"),
                        "--host", "127.0.0.1", "--port", str(milvus_port), "--max-workers", "32"],
                       milvus_port, home / "milvus.log")
        api = None
        try:
            print(f"building {args.chunks} chunks ({args.mode}) in the Milvus server at {uri}", flush=True)
            seconds = build(uri, args.chunks, hybrid=args.mode == "hybrid")
            print(f"  built in {seconds:.0f} s", flush=True)
            env = {"DATAMATE_MILVUS_URI": uri, "DATAMATE_API_KEYS": f"bench:{key}", "DATAMATE_HOME": str(home)}
            api = start([sys.executable, "-c", "import sys; from datamate_assets.cli import main; sys.exit(main())",
                         "serve", "--port", str(api_port), "--rate", "1e6", "--burst", "1000000",
                         "--milvus-timeout", "120"],
                        api_port, home / "serve.log", env=env)
            url = f"http://127.0.0.1:{api_port}/v1/search"

            def http_call(query: str) -> bool:  # one httpx client (thread-safe, keep-alive pool) for every thread
                response = http.post(url, json={"dataset": DATASET, "query": query, "k": 5, "mode": args.mode},
                                     headers={"Authorization": f"Bearer {key}"})
                return response.status_code == 200 and len(response.json()["hits"]) == 5

            model = MiniLMOnnxEmbeddings()
            with (httpx.Client(timeout=30, limits=httpx.Limits(max_connections=64)) as http,
                  MilvusResource(provider="server", uri=uri).get_client() as client):
                kb = KnowledgeBase(client, DATASET, model, model.model_name)

                def in_process(query: str) -> bool:
                    return len(kb.search([query], 5, mode=args.mode)[0]) == 5

                # Load the model, the collection (the first search after a build waits for it), the connections.
                for warm in questions(10, seed=1):
                    response = http.post(url, json={"dataset": DATASET, "query": warm, "mode": args.mode},
                                         headers={"Authorization": f"Bearer {key}"}, timeout=600)
                    assert response.status_code == 200, response.text
                    assert in_process(warm)
                rows = []
                for clients in levels:
                    queries = questions(args.requests, seed=clients)
                    served = measure(http_call, queries, clients)
                    baseline = measure(in_process, queries, clients)
                    rows.append((clients, served, baseline))
                    print(f"  {clients} clients: service p95 {served['p95']:.1f} ms, in-process p95 "
                          f"{baseline['p95']:.1f} ms", flush=True)
        finally:
            if api is not None:
                stop(api)
            stop(milvus)

    print()
    print(f"{args.chunks} chunks, {args.mode}, k=5, {args.requests} requests per row; Milvus Lite gRPC server and "
          f"`datamate serve` on loopback; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| clients | service req/s | p50 ms | p95 ms | p99 ms | errors | in-process req/s | p50 ms | p95 ms | "
          "p95 ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for clients, served, baseline in rows:
        print(f"| {clients} | {served['rps']:.1f} | {served['p50']:.1f} | {served['p95']:.1f} | {served['p99']:.1f} | "
              f"{served['errors']:.1%} | {baseline['rps']:.1f} | {baseline['p50']:.1f} | {baseline['p95']:.1f} | "
              f"{served['p95'] / baseline['p95']:.2f} |")
    goal = next((served for clients, served, _ in rows if clients == 8), None)
    if goal is not None:
        met = goal["p95"] <= 100 and goal["errors"] == 0
        print(f"goal p95 <= 100 ms at 8 clients, 0 errors: p95 {goal['p95']:.1f} ms, errors {goal['errors']:.1%} "
              f"{'OK' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
