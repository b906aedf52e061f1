"""The cleaning recipe on a Ray cluster with 1 and with 2 worker nodes (one CPU each): the speed-up ratio.

    .venv/bin/python -m bench.ray_scaling [--docs 100000] [--recipe bench/web_recipe.yaml]

Both clusters are real multi-process Ray clusters on this machine (`ray start --head` with no CPUs + N
`ray start --address` workers, on loopback, from tests/deploy/topology.py), the corpus is bench/corpus.py's
synthetic web corpus (cached in bench/.data, shared with bench/cleaning.py), the recipe is the demo dataset's
cleaning section unless --recipe names a recipe file. The recipe runs through `operators.recipe.run_ray`, the
executor the cleaning asset uses with `cleaning.executor: ray`. The 1-worker time is the baseline measured in
the same invocation; the ratio is baseline / 2-worker time (2.0 would be perfect scaling). The time excludes
cluster start-up and starts after `ray.init`, so it is the recipe's time on the cluster (moving the table
into the object store, every step, gathering the kept and dropped tables back in the driver).
"""

import argparse
import json
import os
import time
from pathlib import Path

import ray
import yaml

from bench.corpus import load_or_generate
from operators.recipe import Recipe, run_ray
from tests.deploy.topology import RAY_ENV, ray_cluster

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "bench" / "output"
CORPUS = REPO / "bench" / ".data"


def load_recipe(path: Path | None) -> Recipe:
    if path is not None:
        return Recipe.load(path)
    spec = yaml.safe_load((REPO / "datamate_assets" / "defs" / "debian_docs" / "defs.yaml").read_text())["attributes"]
    return Recipe.from_process(spec["cleaning"]["process"])


def timed_run(workers: int, recipe: Recipe, table) -> dict:
    logs = OUTPUT / f"ray-scaling-{workers}"
    logs.mkdir(parents=True, exist_ok=True)
    with ray_cluster(workers=workers, cpus_per_worker=1, logs=logs, object_store_mb=2000) as cluster:
        ray.init(address=cluster.address, runtime_env={"env_vars": RAY_ENV}, log_to_driver=False)
        try:
            load = os.getloadavg()[0]
            started = time.perf_counter()
            result = run_ray(recipe, table)
            seconds = time.perf_counter() - started
        finally:
            ray.shutdown()
    steps = {f"{s.step}:{s.operator}": round(s.seconds, 1) for s in result.stats if s.kind == "deduplicator"}
    return {"workers": workers, "seconds": round(seconds, 1), "kept": result.kept.num_rows,
            "dropped": result.drops.num_rows, "docs_per_s": round(table.num_rows / seconds),
            "dedup_seconds": steps, "load_avg_1m_at_start": round(load, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--recipe", type=Path, default=None, help="a recipe file (default: the demo's)")
    args = parser.parse_args()
    table = load_or_generate(args.docs, CORPUS).table
    recipe = load_recipe(args.recipe)
    print(f"{args.docs} documents, {os.cpu_count()} cores, recipe: {', '.join(recipe.names)}", flush=True)
    runs = {}
    for workers in (1, 2):
        runs[workers] = timed_run(workers, recipe, table)
        print(json.dumps(runs[workers]), flush=True)
    assert runs[1]["kept"] == runs[2]["kept"], "the two clusters must keep the same documents"
    ratio = runs[1]["seconds"] / runs[2]["seconds"]
    print(f"speed-up 2 workers vs 1 (baseline measured in this run): {ratio:.2f}x")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "ray_scaling.json").write_text(json.dumps({"docs": args.docs, "runs": runs,
                                                         "ratio": round(ratio, 2)}, indent=1))


if __name__ == "__main__":
    main()
