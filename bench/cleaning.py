"""Cleaning benchmark: `python -m bench.cleaning [--sizes 10000,100000] [--num-proc 2] [--data-juicer]`.

On a synthetic web corpus with planted exact and near duplicates (bench/corpus.py), in one run:
1. near-dedup: our MinHash + LSH vs datasketch's MinHashLSH with the same num_perm/bands/rows, speed ratio and
   precision/recall of both against exact Jaccard (over planted pairs and every pair either method reports);
2. the web-cleaning recipe (bench/web_recipe.yaml) plus perplexity_filter at each size: docs/s, peak memory
   (each size in its own process; RSS summed over it and its workers, sampled, as for Data-Juicer's
   processes) and perplexity_filter's CPU microseconds per
   document; its KenLM and SentencePiece models are the tiny ones the tests build (tests/language_models.py),
   given to Data-Juicer too (DATA_JUICER_MODELS_CACHE);
3. with --data-juicer: the same recipe with Data-Juicer (bench/.venv-dj, created here) on the same data and the
   same number of processes: docs/s and peak memory of both, and their ratios.
`--near-dedup-docs 0` skips step 1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.scale import peak_tree_rss

BENCH = Path(__file__).resolve().parent
DATA = BENCH / ".data"
RECIPE = BENCH / "web_recipe.yaml"
DJ_VENV = BENCH / ".venv-dj"
THRESHOLD, NUM_PERM = 0.7, 256
MODELS = DATA / "models"
PERPLEXITY = {"perplexity_filter": {"lang": "en", "max_ppl": 1500}}  # Data-Juicer's default bound


def bench_process() -> list[dict]:
    """The web recipe with perplexity_filter after its other filters (before the dedup steps)."""
    import yaml

    process = yaml.safe_load(RECIPE.read_text())["process"]
    first_dedup = next(i for i, step in enumerate(process) if next(iter(step)).endswith("deduplicator"))
    return [*process[:first_dedup], PERPLEXITY, *process[first_dedup:]]


def ensure_models() -> None:
    """Tiny models for perplexity_filter (DATAMATE_MODELS_DIR; Data-Juicer's cache variable too)."""
    from tests.language_models import build_models

    if not (MODELS / "en.arpa.bin").exists():
        build_models(MODELS)
    os.environ["DATAMATE_MODELS_DIR"] = os.environ["DATA_JUICER_MODELS_CACHE"] = str(MODELS)


def shingle_set(text: str, window: int = 5) -> set[bytes]:
    tokens = [t for t in text.lower().split(" ") if t]
    if len(tokens) < window:
        return {" ".join(tokens).encode()}
    return {" ".join(tokens[i:i + window]).encode() for i in range(len(tokens) - window + 1)}


def near_dedup_comparison(n_docs: int) -> dict:
    from datasketch import MinHash, MinHashLSH

    from bench.corpus import load_or_generate
    from operators import build_operator

    corpus = load_or_generate(n_docs, DATA)
    texts = corpus.table.column("text").to_pylist()
    op = build_operator("document_minhash_deduplicator", {"jaccard_threshold": THRESHOLD,
                                                           "num_permutations": NUM_PERM})
    started = time.perf_counter()
    fps = np.concatenate([op.fingerprint_batch(texts[i:i + 5000]) for i in range(0, len(texts), 5000)])
    first, other = op.candidate_pairs(fps, np.arange(len(texts)))
    verified = op.verify(fps[first], fps[other])
    ours_seconds = time.perf_counter() - started
    ours = set(zip(first[verified].tolist(), other[verified].tolist(), strict=True))

    started = time.perf_counter()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, params=(op.bands, op.rows))
    hashes = []
    for i, text in enumerate(texts):
        minhash = MinHash(num_perm=NUM_PERM, seed=42)
        minhash.update_batch(list(shingle_set(text)))
        lsh.insert(i, minhash)
        hashes.append(minhash)
    theirs = {(min(i, j), max(i, j)) for i, m in enumerate(hashes) for j in lsh.query(m) if j != i}
    datasketch_seconds = time.perf_counter() - started

    # Ground truth: exact Jaccard of every planted pair and every pair either method reports. Our pairs link
    # each document to the first of its bucket, so pairs are compared as connected components.
    planted = {tuple(p) for p in corpus.near_pairs.tolist()}
    universe = {p for p in planted | ours | theirs if texts[p[0]] != texts[p[1]]}
    cache: dict[int, set] = {}

    def exact(i: int, j: int) -> float:
        a = cache.setdefault(i, shingle_set(texts[i]))
        b = cache.setdefault(j, shingle_set(texts[j]))
        return len(a & b) / len(a | b)

    truth = {p for p in universe if exact(*p) >= THRESHOLD}
    ours_components = _components(ours)
    ours_says = {p for p in universe if ours_components.get(p[0], -1) == ours_components.get(p[1], -2)}

    def score(predicted: set) -> dict:
        hits = len(predicted & truth)
        return {"precision": round(hits / max(1, len(predicted)), 4), "recall": round(hits / max(1, len(truth)), 4)}

    return {
        "docs": n_docs, "bands": op.bands, "rows": op.rows, "true_pairs": len(truth),
        "ours_seconds": round(ours_seconds, 2), "datasketch_seconds": round(datasketch_seconds, 2),
        "speedup": round(datasketch_seconds / ours_seconds, 1),
        "ours": score(ours_says & universe), "datasketch": score(theirs & universe),
    }


def _components(pairs: set) -> dict[int, int]:
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    return {x: find(x) for x in list(parent)}


def run_recipe(n_docs: int, num_proc: int) -> dict:
    """One size, in this process: prints a JSON line with docs/s and peak RSS."""
    import pyarrow.parquet as pq

    from bench.corpus import load_or_generate
    from operators.recipe import Recipe, run_local

    load_or_generate(n_docs, DATA)
    ensure_models()
    table = pq.read_table(DATA / f"corpus-{n_docs}-0.parquet")
    recipe = Recipe.from_process(bench_process())
    started = time.perf_counter()
    result = run_local(recipe, table, num_proc=num_proc)
    seconds = time.perf_counter() - started
    perplexity = next(s for s in result.stats if s.operator == "perplexity_filter")
    return {"docs": n_docs, "seconds": round(seconds, 1), "docs_per_s": round(n_docs / seconds),
            "kept": result.kept.num_rows, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "operators": len(recipe.operators),
            # summed over worker processes: CPU time per document, not wall time
            "perplexity_us_per_doc": round(perplexity.seconds / max(perplexity.docs_in, 1) * 1e6, 1),
            "perplexity_share": round(perplexity.seconds / sum(s.seconds for s in result.stats), 3)}


DJ_RECIPE_DROP = {"document_line_deduplicator"}  # no Data-Juicer equivalent: left out of both runs for parity
DJ_RENAME = {"collapse_whitespace": None}  # our extra parameters Data-Juicer does not know


def data_juicer_recipe(n_docs: int, num_proc: int, out: Path) -> Path:
    import yaml

    process = []
    for step in bench_process():
        (name, params), = step.items()
        if name in DJ_RECIPE_DROP:
            continue
        params = {k: v for k, v in (params or {}).items() if k not in DJ_RENAME and k != "verify"}
        process.append({name: params})
    source = DATA / f"corpus-{n_docs}-0.jsonl"
    if not source.exists():
        import pyarrow.parquet as pq

        with source.open("w") as handle:
            for row in pq.read_table(DATA / f"corpus-{n_docs}-0.parquet", columns=["doc_id", "text"]).to_pylist():
                handle.write(json.dumps(row) + "\n")
    config = out / f"dj-{n_docs}.yaml"
    config.write_text(yaml.safe_dump({
        "project_name": "bench", "dataset_path": str(source), "export_path": str(out / f"dj-{n_docs}.jsonl"),
        "np": num_proc, "text_keys": "text", "open_tracer": False, "use_cache": False, "process": process,
    }))
    return config


def ensure_data_juicer() -> str | None:
    """Install Data-Juicer into its own venv (bench/.venv-dj) once; the reason it could not be, or None."""
    if not (DJ_VENV / "bin" / "dj-process").exists():
        subprocess.run(["uv", "venv", "-q", "-p", "3.11", str(DJ_VENV)], check=True)
        install = subprocess.run(["uv", "pip", "install", "-p", str(DJ_VENV / "bin" / "python"), "py-data-juicer",
                                  "aiohttp"],
                                 capture_output=True, text=True)
        if install.returncode != 0:
            return "py-data-juicer could not be installed: " + install.stderr[-800:]
    # Installed before the measured run, which would otherwise install them itself: torch (Data-Juicer calls
    # torch.cuda.empty_cache() after every operator; the machine's CPU wheel where there is one, --no-config keeps
    # this project's torch override out), and the `kenlm` module as the kenlm-ex wheel (kenlm compiles for minutes)
    if subprocess.run([str(DJ_VENV / "bin" / "python"), "-c", "import torch, kenlm, sentencepiece"],
                      capture_output=True).returncode != 0:
        wheels = ["--find-links", "/opt/wheels"] if Path("/opt/wheels").is_dir() else []
        subprocess.run(["uv", "pip", "install", "-q", "--no-config", "-p",
                        str(DJ_VENV / "bin" / "python"), *wheels, "torch", "kenlm-ex", "sentencepiece"], check=True)
    return None


def data_juicer(n_docs: int, num_proc: int) -> dict:
    error = ensure_data_juicer()
    if error:
        return {"docs": n_docs, "error": error}
    DATA.mkdir(exist_ok=True)
    ensure_models()
    config = data_juicer_recipe(n_docs, num_proc, DATA)
    log = DATA / f"dj-{n_docs}.log"
    with log.open("w") as handle:
        process = subprocess.Popen([str(DJ_VENV / "bin" / "dj-process"), "--config", str(config)], stdout=handle,
                                   stderr=subprocess.STDOUT)
        peak, seconds, _ = peak_tree_rss(process)
    if process.returncode != 0:
        return {"docs": n_docs, "error": "dj-process failed: " + log.read_text()[-800:]}
    return {"docs": n_docs, "seconds": round(seconds, 1), "docs_per_s": round(n_docs / seconds),
            "peak_tree_rss_mb": peak // 2**20}


def ours_in_subprocess(size: int, num_proc: int) -> dict:
    """One size in a fresh process; peak RSS summed over it and its worker processes (as for Data-Juicer)."""
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen([sys.executable, "-m", "bench.cleaning", "--only-recipe", str(size),
                                    "--num-proc", str(num_proc)], stdout=out, cwd=BENCH.parent)
        peak, _, _ = peak_tree_rss(process)
        if process.returncode != 0:
            raise SystemExit(f"our recipe run failed at {size} documents (exit {process.returncode})")
        out.seek(0)
        return {**json.loads(out.read().strip().splitlines()[-1]), "peak_tree_rss_mb": peak // 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="Corpus sizes for the recipe (comma separated)")
    parser.add_argument("--near-dedup-docs", type=int, default=100000)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--data-juicer", action="store_true", help="Also run Data-Juicer (own venv)")
    parser.add_argument("--only-recipe", type=int, help=argparse.SUPPRESS)  # internal: one size, one process
    args = parser.parse_args(argv)
    if args.only_recipe:
        print(json.dumps(run_recipe(args.only_recipe, args.num_proc)))
        return 0

    report = {}
    if args.near_dedup_docs:  # 0 skips it
        report["near_dedup"] = near_dedup_comparison(args.near_dedup_docs)
        print("near-dedup:", json.dumps(report["near_dedup"]), flush=True)
    report["recipe"] = []
    for size in map(int, args.sizes.split(",")):
        report["recipe"].append(ours_in_subprocess(size, args.num_proc))
        print("recipe:", json.dumps(report["recipe"][-1]), flush=True)
        if args.data_juicer:
            theirs = data_juicer(size, args.num_proc)
            report.setdefault("data_juicer", []).append(theirs)
            ours = report["recipe"][-1]
            ratio = (f", speed ratio {ours['docs_per_s'] / theirs['docs_per_s']:.2f}x, peak memory ratio "
                     f"{ours['peak_tree_rss_mb'] / theirs['peak_tree_rss_mb']:.2f}") if "docs_per_s" in theirs else ""
            print("data-juicer:", json.dumps(theirs) + ratio, flush=True)
    sizes = report["recipe"]
    if len(sizes) > 1:
        per_doc = [s["seconds"] / s["docs"] for s in sizes]
        print(f"linearity: seconds/doc at {sizes[-1]['docs']} vs {sizes[0]['docs']}: {per_doc[-1] / per_doc[0]:.2f}x")
    (DATA / "report.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
