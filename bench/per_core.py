"""Per-core throughput of each heavy stage on one shard, the figures docs/production.md's scale model is built on.

    .venv/bin/python -m bench.per_core [--docs 5000]

One process (ONNX Runtime limited to 1 thread; DuckDB in the dedup steps may use more) on a shard of
bench/corpus.py's synthetic web corpus: the demo dataset's cleaning recipe (whole, then its mappers + filters
alone and each dedup alone on their output), chunking (800/100 characters) and embedding of the chunks
(all-MiniLM-L6-v2 as `MiniLMOnnxEmbeddings` runs it: the packaged file quantized to int8 compute by
`int8_model_path`, one chunk per model run). Each stage's figure is items per CPU-second of this process
(`time.process_time`, all its threads), which a loaded machine changes far less than wall time; the wall figures
and the load average are printed too. The baseline of the ratios is the cleaning recipe measured in the same
run: "x cleaning" says how many times more CPU a document costs in that stage than in cleaning.
"""

import argparse
import json
import os
import time
from pathlib import Path

import yaml

from bench.corpus import load_or_generate
from operators.chunking import ChunkingConfig, chunk_documents
from operators.recipe import Recipe, run_local

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "bench" / ".data"
OUTPUT = REPO / "bench" / "output"


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=5000)
    parser.add_argument("--embed-chunks", type=int, default=500, help="chunks embedded (the slow part)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    table = load_or_generate(args.docs, CORPUS).table
    spec = yaml.safe_load((REPO / "datamate_assets" / "defs" / "debian_docs" / "defs.yaml").read_text())["attributes"]
    recipe = Recipe.from_process(spec["cleaning"]["process"])
    load = os.getloadavg()[0]

    result, wall, cpu = timed(lambda: run_local(recipe, table, num_proc=1))
    figures = {"cleaning recipe": (args.docs, cpu, wall)}
    # Each part on its own, so its CPU time is its own: the per-document steps, then each dedup on their output.
    dedups = {"document_deduplicator": "exact dedup", "document_minhash_deduplicator": "minhash dedup"}
    per_document = Recipe.from_process([s for s in recipe.process if next(iter(s)) not in dedups])
    filtered, wall, cpu = timed(lambda: run_local(per_document, table, num_proc=1))
    figures["mappers + filters"] = (args.docs, cpu, wall)
    for step in recipe.process:
        if next(iter(step)) in dedups:
            alone = Recipe.from_process([step])
            _, wall, cpu = timed(lambda alone=alone: run_local(alone, filtered.kept, num_proc=1))
            figures[dedups[next(iter(step))]] = (filtered.kept.num_rows, cpu, wall)

    documents = result.kept.select(["doc_id", "text"])
    chunked, wall, cpu = timed(lambda: chunk_documents(documents, ChunkingConfig("recursive", 800, 100)))
    figures["chunking (documents)"] = (documents.num_rows, cpu, wall)
    chunks = chunked.chunks.column("text").to_pylist()[: args.embed_chunks]

    from datamate_resources.embeddings import MiniLMOnnxEmbeddings

    model = MiniLMOnnxEmbeddings(threads=1)
    model.embed_array(chunks[:8])  # load the model outside the timing
    _, wall, cpu = timed(lambda: model.embed_array(chunks))
    figures["embedding (chunks)"] = (len(chunks), cpu, wall)

    baseline = args.docs / figures["cleaning recipe"][1]
    rows = {name: {"items": n, "per_cpu_s": round(n / c, 1), "per_wall_s": round(n / w, 1),
                   "x cleaning": round(baseline / (n / c), 2)} for name, (n, c, w) in figures.items()}
    chunks_per_doc = chunked.chunks.num_rows / max(documents.num_rows, 1)
    busy = figures["cleaning recipe"][1] / figures["cleaning recipe"][2]
    print(f"{args.docs} documents, {result.kept.num_rows} kept, {chunks_per_doc:.2f} chunks per kept document, "
          f"load average {load:.1f} on {os.cpu_count()} cores, this process got {busy:.0%} of a core")
    print("| stage | items | per CPU-second | per wall-second | CPU per item vs cleaning (baseline, same run) |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['items']} | {row['per_cpu_s']} | {row['per_wall_s']} | {row['x cleaning']}x |")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "per_core.json").write_text(json.dumps({
        "docs": args.docs, "kept": result.kept.num_rows, "chunks_per_kept_doc": round(chunks_per_doc, 3),
        "load_avg_1m": round(load, 1), "stages": rows}, indent=1))


if __name__ == "__main__":
    main()
