"""Datasets of any size: collection -> cleaning -> chunks on 100k, 300k and 1M documents, as a user runs it.

    python -m bench.scale [--sizes 100000,300000,1000000] [--data-juicer 300000]

A seeded synthetic web corpus (English word salad with real word frequencies, HTML and boilerplate noise, planted
exact and near duplicates, junk) is written as JSONL shards to a folder; a dataset spec points a folder source
at it with the web-cleaning recipe (bench/web_recipe.yaml, exact and MinHash dedup, local executor) and a chunks
stage; `dagster asset materialize` runs it in a fresh DAGSTER_HOME. Per size: wall time, docs/s and the peak RSS
and PSS of the whole process tree (sampled every 0.2 s). Printed ratios: peak RSS and time per document at each size
against the smallest size (targets at 1M: memory at most 1.3x, time per document at most 1.2x). With
--data-juicer N, Data-Juicer runs the same recipe on the same N documents in its own venv (as bench.cleaning does)
and the docs/s ratio and both peak memories are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "bench" / "web_recipe.yaml"
SHARD_DOCS = 20_000
NOISE = ["<p>", "</p>", "<div class='x'>", "</div>", "Share this article on Facebook", "contact: info@example.com",
         "https://example.com/page", "All rights reserved."]


def write_corpus(n_docs: int, folder: Path, seed: int = 0) -> dict[str, int]:
    """JSONL shards of `n_docs` documents: ~8% exact and ~10% near duplicates of earlier documents, ~4% junk."""
    from wordfreq import top_n_list

    rng = np.random.default_rng(seed)
    words = np.array(top_n_list("en", 5000))
    cdf = np.cumsum(1.0 / np.arange(1, words.size + 1))
    cdf /= cdf[-1]  # Zipf-like word frequencies

    def draw(k: int) -> np.ndarray:
        return words[np.minimum(np.searchsorted(cdf, rng.random(k)), words.size - 1)]
    folder.mkdir(parents=True, exist_ok=True)
    planted = {"exact": 0, "near": 0, "junk": 0}
    recent: list[str] = []  # earlier documents to copy from (a bounded window keeps memory flat)
    shard, out = -1, None
    for i in range(n_docs):
        if i % SHARD_DOCS == 0:
            if out:
                out.close()
            shard += 1
            out = (folder / f"part-{shard:05d}.jsonl").open("w", encoding="utf-8")
        roll = rng.random()
        if recent and roll < 0.08:
            text = recent[rng.integers(len(recent))]
            text = text.upper() if rng.random() < 0.5 else text  # the exact deduplicator lowercases
            planted["exact"] += 1
        elif recent and roll < 0.18:
            tokens = recent[rng.integers(len(recent))].split(" ")
            swap = rng.random(len(tokens)) < 0.03
            tokens = [str(w) if s else t for t, s, w in zip(tokens, swap, draw(len(tokens)), strict=True)]
            text = " ".join(tokens)
            planted["near"] += 1
        elif roll < 0.22:
            text = "buy now " * int(rng.integers(1, 5))
            planted["junk"] += 1
        else:
            paragraphs = []
            for _ in range(int(rng.integers(2, 5))):
                sentence = " ".join(draw(int(rng.integers(40, 90))))
                paragraphs.append(f"{NOISE[rng.integers(len(NOISE))]} {sentence.capitalize()}.")
            text = "\n\n".join(paragraphs)
            recent.append(text)
            if len(recent) > 2000:
                recent.pop(int(rng.integers(len(recent))))
        out.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    if out:
        out.close()
    return planted


def write_spec(datasets: Path, corpus: Path, name: str) -> None:
    process = yaml.safe_load(RECIPE.read_text())["process"]
    spec = {"name": name, "sources": [{"type": "folder", "path": str(corpus), "include": ["*.jsonl"],
                                       "id_field": "id"}],
            "cleaning": {"process": process, "num_proc": 2}, "index": {"chunk_size": 800, "chunk_overlap": 100}}
    datasets.mkdir(parents=True, exist_ok=True)
    (datasets / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def peak_tree_rss(process: subprocess.Popen) -> tuple[int, float, int]:
    """(peak RSS summed over the process and all its descendants, wall seconds, peak PSS summed likewise),
    sampled until it exits. Summed RSS counts every page a forked process shares with its parent once per
    process (Dagster's step processes fork from a preloaded server); PSS divides shared pages among their
    sharers, so its sum is the memory the tree really holds."""
    started, peak, peak_pss = time.perf_counter(), 0, 0
    root = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            members = [p for p in [root, *root.children(recursive=True)] if p.is_running()]
            peak = max(peak, sum(p.memory_info().rss for p in members))
            peak_pss = max(peak_pss, sum(p.memory_full_info().pss for p in members))
        except psutil.Error:
            pass
        time.sleep(0.2)
    return peak, time.perf_counter() - started, peak_pss


def run_pipeline(n_docs: int, work: Path) -> dict:
    name = "scale"
    corpus, datasets, home = work / "corpus", work / "datasets", work / "home"
    planted = write_corpus(n_docs, corpus)
    write_spec(datasets, corpus, name)
    (home / "dagster_home").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DATAMATE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home"),
           "DATAMATE_DATASETS_DIR": str(datasets)}
    command = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
               "datamate_assets.definitions", "--select",
               f"{name}/collected,{name}/collection_rejects,{name}/cleaned,{name}/cleaning_drops,{name}/chunks"]
    log = (work / "dagster.log").open("w")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    peak, seconds, pss = peak_tree_rss(process)
    if process.returncode != 0:
        kept = REPO / "bench" / "output" / f"scale-{n_docs}-failed.log"
        kept.parent.mkdir(exist_ok=True)
        kept.write_text((work / "dagster.log").read_text())
        raise SystemExit(f"the pipeline failed at {n_docs} documents; its log: {kept}")
    return {"docs": n_docs, "seconds": seconds, "docs_per_s": n_docs / seconds, "peak_rss_gb": peak / 1e9,
            "peak_pss_gb": pss / 1e9, **planted}


def data_juicer(n_docs: int, work: Path) -> dict:
    """Data-Juicer on the same corpus and recipe (less line dedup, which it lacks), in its own venv
    (bench/.venv-dj, installed on first use)."""
    from bench.cleaning import DJ_RECIPE_DROP, DJ_RENAME, DJ_VENV, ensure_data_juicer

    error = ensure_data_juicer()
    if error:
        raise SystemExit(error)
    corpus = work / "dj_corpus"
    write_corpus(n_docs, corpus)
    process = []
    for step in yaml.safe_load(RECIPE.read_text())["process"]:
        (name, params), = step.items()
        if name not in DJ_RECIPE_DROP:
            process.append({name: {k: v for k, v in (params or {}).items() if k not in DJ_RENAME and k != "verify"}})
    config = work / "dj.yaml"
    config.write_text(yaml.safe_dump({
        "project_name": "bench", "dataset_path": str(corpus), "export_path": str(work / "dj_out.jsonl"), "np": 2,
        "text_keys": "text", "open_tracer": False, "use_cache": False, "process": process,
    }))
    process = subprocess.Popen([str(DJ_VENV / "bin" / "dj-process"), "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak, seconds, pss = peak_tree_rss(process)
    if process.returncode != 0:
        raise SystemExit(f"dj-process failed at {n_docs} documents")
    return {"docs": n_docs, "seconds": seconds, "docs_per_s": n_docs / seconds, "peak_rss_gb": peak / 1e9,
            "peak_pss_gb": pss / 1e9}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,300000,1000000")
    parser.add_argument("--data-juicer", type=int, default=0, help="also run Data-Juicer on this many documents")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="datamate-scale-") as work:
            rows.append(run_pipeline(n, Path(work)))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    print(f"\n| documents | wall s | docs/s | peak RSS (tree) GB | peak PSS (tree) GB | RSS vs {base['docs']:,} "
          f"| PSS vs {base['docs']:,} | time/doc vs {base['docs']:,} |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['docs']:,} | {row['seconds']:.0f} | {row['docs_per_s']:.0f} | {row['peak_rss_gb']:.2f} | "
              f"{row['peak_pss_gb']:.2f} | {row['peak_rss_gb'] / base['peak_rss_gb']:.2f}x | "
              f"{row['peak_pss_gb'] / base['peak_pss_gb']:.2f}x | {base['docs_per_s'] / row['docs_per_s']:.2f}x |")
    if args.data_juicer:
        ours = next((r for r in rows if r["docs"] == args.data_juicer), None)
        with tempfile.TemporaryDirectory(prefix="datamate-scale-dj-") as work:
            ours = ours or run_pipeline(args.data_juicer, Path(work) / "ours")
            theirs = data_juicer(args.data_juicer, Path(work))
        print(f"\nData-Juicer at {args.data_juicer:,}: {theirs['docs_per_s']:.0f} docs/s, peak RSS "
              f"{theirs['peak_rss_gb']:.2f} GB, PSS {theirs['peak_pss_gb']:.2f} GB; ours {ours['docs_per_s']:.0f} "
              f"docs/s, peak RSS {ours['peak_rss_gb']:.2f} GB, PSS {ours['peak_pss_gb']:.2f} GB"
              f" -> throughput ratio {ours['docs_per_s'] / theirs['docs_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
