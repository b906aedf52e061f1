"""The cleaning recipe on a Ray cluster with 1 and with 2 worker nodes (one CPU each): the speed-up ratio.

    .venv/bin/python -m bench.ray_scaling [--docs 100000] [--recipe bench/web_recipe.yaml]

Both clusters are real multi-process Ray clusters on this machine (`ray start --head` with no CPUs + N
`ray start --address` workers, on loopback, from tests/deploy/topology.py), the corpus is bench/corpus.py's
synthetic web corpus (cached in bench/.data, shared with bench/cleaning.py), the recipe is the demo dataset's
cleaning section unless --recipe names a recipe file. Cleaning runs through `operators.ray_exec.run_ray_tables`,
the executor the cleaning asset uses with `cleaning.executor: ray`: workers read the `collected` Delta table and
write kept rows and drops as Parquet parts that the run process commits (each run in a child process, so its peak
RSS is the run process's own). Measured: end to end (the recipe) and near dedup alone
(document_minhash_deduplicator), 1 vs 2 workers; the run process's peak RSS at --small-docs and --docs; near-dedup
precision/recall against exact Jaccard over the planted pairs (as bench.cleaning). The 1-worker time is the
baseline measured in the same invocation; the ratio is baseline / 2-worker time (2.0 would be perfect scaling).
Times exclude cluster start-up and start after `ray.init`.

Embedding (`--embedding-chunks N`, first; `--only-embedding` to skip cleaning): N chunks of the same corpus
embedded by one packaged-model actor per worker node, as `index.executor: ray` does (`operators.ray_shards`:
actors read shards of the chunks table, write the vectors table). Chunks/s excludes actor start-up (model load),
also given with it; actor utilisation = busy time / wall time per actor.
"""

import argparse
import json
import os
import time
from pathlib import Path

import ray
import yaml

from bench.corpus import load_or_generate
from operators.recipe import Recipe
from tests.deploy.topology import RAY_ENV, ray_cluster

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "bench" / "output"
CORPUS = REPO / "bench" / ".data"


def load_recipe(path: Path | None) -> Recipe:
    if path is not None:
        return Recipe.load(path)
    spec = yaml.safe_load((REPO / "datamate_assets" / "defs" / "debian_docs" / "defs.yaml").read_text())["attributes"]
    return Recipe.from_process(spec["cleaning"]["process"])


# --- cleaning: workers read and write the tables (operators/ray_exec.py) -----------------------------------------
def cleaning_table(docs: int, folder: Path):
    """The corpus as the `collected` Delta table the cleaning workers read (`n`: the row, for the planted pairs)."""
    import pyarrow as pa

    from datamate_resources import tables
    from datamate_resources.storage import ObjectStore

    store = ObjectStore(url=f"file://{folder}")
    name = f"docs{docs}"
    existing = tables.current(store, name, "collected")
    if existing is not None:
        return store, existing
    table = load_or_generate(docs, CORPUS).table
    return store, tables.write(store, name, "collected", table.append_column("n", pa.array(range(table.num_rows))))


def peak_rss_mb() -> int:
    """This process's peak RSS (VmHWM). Not `ru_maxrss`: Linux carries that over `exec` from the forking
    parent, so every child would report the benchmark's own peak."""
    status = Path("/proc/self/status").read_text()
    return round(int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024)


def cleaning_child(request: dict) -> dict:
    """One cleaning run in a fresh process (its peak RSS is the run process's): connect, run, commit."""
    from datamate_resources import tables
    from operators.ray_exec import Destination, Outputs, Source, run_ray_tables

    store, ref = cleaning_table(request["docs"], Path(request["folder"]))
    recipe = Recipe.from_process(request["process"])
    ray.init(address=request["address"], runtime_env={"env_vars": RAY_ENV}, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        load = os.getloadavg()[0]
        started = time.perf_counter()
        source = Source.of(ref.uri, ref.version)
        kept_schema = source.schema
        drops_schema = source.schema.append(pa_field("operator")).append(pa_field("reason"))
        stage = request["stage"]
        outputs = Outputs(Destination(tables.table_uri(store, "out", f"{stage}_kept"), kept_schema),
                          Destination(tables.table_uri(store, "out", f"{stage}_drops"), drops_schema))
        run = run_ray_tables(recipe, source, outputs)
        tables.commit_parts(store, "out", f"{stage}_kept", [(p.name, p.rows, p.bytes) for p in run.kept], kept_schema)
        drops = tables.commit_parts(store, "out", f"{stage}_drops", [(p.name, p.rows, p.bytes) for p in run.drops],
                                    drops_schema)
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    result = {"seconds": round(seconds, 1), "kept": run.kept_rows, "dropped": run.dropped_rows,
              "docs_per_s": round(request["docs"] / seconds), "load_avg_1m_at_start": round(load, 1),
              "dedup_seconds": {f"{s.step}:{s.operator}": round(s.seconds, 1) for s in run.stats
                                if s.kind == "deduplicator"},
              "peak_rss_mb": peak_rss_mb()}
    if request.get("score"):
        result["near_dedup"] = near_dedup_scores(request["docs"], drops.read(["n", "reason", "operator"]),
                                                 ref.read(["n", "source_uri"]))
    return result


def pa_field(name: str):
    import pyarrow as pa

    return pa.field(name, pa.string())


def near_dedup_scores(docs: int, drops, sources) -> dict:
    """Precision/recall of the near-dedup decisions against exact Jaccard, over the planted pairs and every pair the
    run links (a dropped document and the one its reason names), compared as components (as bench.cleaning)."""
    from bench.cleaning import THRESHOLD, _components, shingle_set

    corpus = load_or_generate(docs, CORPUS)
    texts = corpus.table.column("text").to_pylist()
    row_of = dict(zip(sources.column("source_uri").to_pylist(), sources.column("n").to_pylist(), strict=True))
    linked = set()
    for row in drops.to_pylist():
        if "near-duplicate" in (row["reason"] or ""):
            kept = row_of.get(row["reason"].rsplit(" of ", 1)[-1])
            if kept is not None:
                linked.add((min(kept, row["n"]), max(kept, row["n"])))
    planted = {tuple(p) for p in corpus.near_pairs.tolist()}
    universe = {p for p in planted | linked if texts[p[0]] != texts[p[1]]}

    def exact(i: int, j: int) -> float:
        a, b = shingle_set(texts[i]), shingle_set(texts[j])
        return len(a & b) / len(a | b)

    truth = {p for p in universe if exact(*p) >= THRESHOLD}
    components = _components(linked)
    said = {p for p in universe if components.get(p[0], -1) == components.get(p[1], -2)}
    hits = len(said & truth)
    return {"true_pairs": len(truth), "precision": round(hits / max(1, len(said)), 4),
            "recall": round(hits / max(1, len(truth)), 4)}


def in_child(request: dict) -> dict:
    import subprocess
    import sys

    output = subprocess.run([sys.executable, "-m", "bench.ray_scaling", "--cleaning-child", json.dumps(request)],
                            check=True, capture_output=True, text=True, cwd=REPO).stdout
    return json.loads(output.strip().splitlines()[-1])


def cleaning_main(docs: int, recipe: Recipe, small: int) -> dict:
    """1 vs 2 worker nodes, end to end (the whole recipe) and near dedup alone; the run process's peak RSS at
    `small` and `docs` documents; near-dedup precision/recall."""
    import tempfile

    from bench.cleaning import THRESHOLD

    dedup_only = [{"document_minhash_deduplicator": {"jaccard_threshold": THRESHOLD}}]
    runs: dict = {}
    with tempfile.TemporaryDirectory(prefix="dm-clean-bench-") as folder:
        for size in {small, docs}:
            cleaning_table(size, Path(folder))  # generated here, outside the timed runs
        for workers in (1, 2):
            logs = OUTPUT / f"ray-scaling-{workers}"
            logs.mkdir(parents=True, exist_ok=True)
            with ray_cluster(workers=workers, cpus_per_worker=1, logs=logs, object_store_mb=1000) as cluster:
                base = {"address": cluster.address, "folder": folder}
                runs[workers] = {
                    "end_to_end": in_child({**base, "docs": docs, "process": recipe.process, "stage": f"e{workers}"}),
                    "dedup_alone": in_child({**base, "docs": docs, "process": dedup_only, "stage": f"d{workers}",
                                             "score": workers == 2}),
                }
                if workers == 2 and small != docs:
                    runs["rss_small"] = in_child({**base, "docs": small, "process": recipe.process, "stage": "s"})
                print(json.dumps({"workers": workers, **runs[workers]}), flush=True)
    end_to_end = runs[1]["end_to_end"]["seconds"] / runs[2]["end_to_end"]["seconds"]
    dedup = runs[1]["dedup_alone"]["seconds"] / runs[2]["dedup_alone"]["seconds"]
    assert runs[1]["end_to_end"]["kept"] == runs[2]["end_to_end"]["kept"], "both clusters keep the same documents"
    result = {"docs": docs, "runs": runs, "ratio_end_to_end": round(end_to_end, 2), "ratio_dedup": round(dedup, 2)}
    print(f"speed-up 2 workers vs 1 (baseline measured in this run): end to end {end_to_end:.2f}x, "
          f"near dedup alone {dedup:.2f}x")
    if "rss_small" in runs:
        rss = runs[2]["end_to_end"]["peak_rss_mb"] / runs["rss_small"]["peak_rss_mb"]
        result["rss_ratio"] = round(rss, 2)
        print(f"run-process peak RSS: {runs['rss_small']['peak_rss_mb']} MB at {small} docs, "
              f"{runs[2]['end_to_end']['peak_rss_mb']} MB at {docs} docs ({rss:.2f}x)")
    print(f"near dedup (2 workers): {runs[2]['dedup_alone']['near_dedup']}")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "ray_scaling.json").write_text(json.dumps(result, indent=1))
    return result


# --- embedding: chunks/s and actor utilisation with 1 and 2 workers ---------------------------------------------
EMBEDDING_SHARD_ROWS = 32  # ~1.5 s of model work per shard on one CPU: many shards per actor even at small sizes
def embedding_chunks(chunks: int, folder: Path):
    """A chunks table of `chunks` rows (bench/corpus.py documents split as the demo splits them), as a Delta table."""
    import pyarrow as pa

    from datamate_resources import tables
    from datamate_resources.storage import ObjectStore
    from operators.chunking import ChunkingConfig, chunk_documents

    store = ObjectStore(url=f"file://{folder}")
    existing = tables.current(store, "bench", "chunks")
    if existing is not None and existing.num_rows == chunks:
        return store, existing
    documents = load_or_generate(max(100, chunks), CORPUS).table.select(["doc_id", "text"])
    parts, count = [], 0
    for batch in documents.to_batches(max_chunksize=200):
        part = chunk_documents(batch, ChunkingConfig("recursive", 800, 100)).chunks
        parts.append(part.slice(0, chunks - count))
        count += parts[-1].num_rows
        if count >= chunks:
            break
    return store, tables.write(store, "bench", "chunks", pa.concat_tables(parts))


def timed_embedding_run(workers: int, chunks: int, folder: Path) -> dict:
    """Embed every chunk on a loopback cluster of `workers` 1-CPU nodes (one model actor each), as
    `index.executor: ray` does: actors read shards of the chunks table and write the vectors table."""
    from functools import partial

    import pyarrow as pa

    from datamate_assets.indexing import vectors_schema
    from datamate_resources import tables
    from datamate_resources.embeddings import EmbeddingsResource, NewChunkEmbedder
    from operators.ray_shards import RayStageResources, map_shards

    store, source = embedding_chunks(chunks, folder)
    logs = OUTPUT / f"ray-embedding-{workers}"
    logs.mkdir(parents=True, exist_ok=True)
    with ray_cluster(workers=workers, cpus_per_worker=1, logs=logs, object_store_mb=500) as cluster:
        ray.init(address=cluster.address, runtime_env={"env_vars": RAY_ENV}, log_to_driver=False)
        try:
            load = os.getloadavg()[0]
            started = time.perf_counter()
            embedder = partial(NewChunkEmbedder, EmbeddingsResource().model_factory(),
                               ray.put(pa.array([], pa.string())))
            run = map_shards(source, None, embedder, tables.table_uri(store, "bench", "vectors"), {},
                             vectors_schema(source.schema), RayStageResources(rows_per_shard=EMBEDDING_SHARD_ROWS),
                             "bench/vectors")
            ref = tables.commit_parts(store, "bench", "vectors", run.parts, vectors_schema(source.schema))
            seconds = time.perf_counter() - started
        finally:
            ray.shutdown()
    assert ref.num_rows == source.num_rows, "every chunk must come back embedded"
    return {"workers": workers, "chunks": source.num_rows, "actors": len(run.actors),
            "chunks_per_s": round(source.num_rows / run.seconds, 1),
            "chunks_per_s_with_startup": round(source.num_rows / seconds, 1),
            "actor_startup_s": round(run.startup_seconds, 1), "embedding_s": round(run.seconds, 1),
            "actor_utilisation": [a["utilisation"] for a in run.actors], "load_avg_1m_at_start": round(load, 1)}


def embedding_main(chunks: int) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dm-embed-bench-") as folder:
        runs = {}
        for workers in (1, 2):
            runs[workers] = timed_embedding_run(workers, chunks, Path(folder))
            print(json.dumps(runs[workers]), flush=True)
    ratio = runs[2]["chunks_per_s"] / runs[1]["chunks_per_s"]
    print(f"embedding speed-up 2 workers vs 1 (baseline measured in this run): {ratio:.2f}x")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    result = {"chunks": chunks, "runs": runs, "ratio": round(ratio, 2)}
    (OUTPUT / "ray_scaling_embedding.json").write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--recipe", type=Path, default=None, help="a recipe file (default: the demo's)")
    parser.add_argument("--embedding-chunks", type=int, default=2000,
                        help="chunks embedded with 1 and 2 workers (0: skip the embedding part)")
    parser.add_argument("--only-embedding", action="store_true", help="run the embedding part only")
    parser.add_argument("--small-docs", type=int, default=None,
                        help="second size for the run process's peak RSS (default: --docs / 10)")
    parser.add_argument("--cleaning-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cleaning_child:
        print(json.dumps(cleaning_child(json.loads(args.cleaning_child))), flush=True)
        return
    if args.embedding_chunks:
        embedding_main(args.embedding_chunks)
    if args.only_embedding:
        return
    recipe = load_recipe(args.recipe)
    print(f"{args.docs} documents, {os.cpu_count()} cores, recipe: {', '.join(recipe.names)}", flush=True)
    cleaning_main(args.docs, recipe, args.small_docs or max(1, args.docs // 10))


if __name__ == "__main__":
    main()
