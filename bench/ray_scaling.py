"""The cleaning recipe on a Ray cluster with 1 and with 2 worker nodes (one CPU each): the speed-up ratio.

    .venv/bin/python -m bench.ray_scaling [--docs 100000]

Both clusters are real multi-process Ray clusters on this machine (`ray start --head` with no CPUs + N
`ray start --address` workers, from tests/deploy/topology.py), the corpus is bench/corpus.py's synthetic web
corpus, the recipe is the demo dataset's cleaning section. The 1-worker time is the baseline measured in the
same run; the printed ratio is baseline / 2-worker time (2.0 would be perfect scaling).
"""

import argparse
import time
from pathlib import Path

import ray
import yaml

from bench.corpus import load_or_generate
from operators.recipe import Recipe, run_ray
from tests.deploy.topology import RAY_ENV, ray_cluster

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "bench" / "output"


def demo_recipe() -> Recipe:
    spec = yaml.safe_load((REPO / "datasets" / "debian_docs.yaml").read_text())
    return Recipe.from_process(spec["cleaning"]["process"])


def timed_run(workers: int, recipe: Recipe, table) -> tuple[float, int]:
    logs = OUTPUT / f"ray-scaling-{workers}"
    logs.mkdir(parents=True, exist_ok=True)
    with ray_cluster(workers=workers, cpus_per_worker=1, logs=logs, object_store_mb=2000) as cluster:
        ray.init(address=cluster.address, runtime_env={"env_vars": RAY_ENV}, log_to_driver=False)
        try:
            started = time.perf_counter()
            result = run_ray(recipe, table)
            seconds = time.perf_counter() - started
        finally:
            ray.shutdown()
    return seconds, result.table.num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    args = parser.parse_args()
    table = load_or_generate(args.docs, OUTPUT / "corpus").table
    recipe = demo_recipe()
    print(f"{args.docs} documents, recipe: {', '.join(recipe.names)}")
    timings = {}
    for workers in (1, 2):
        seconds, kept = timed_run(workers, recipe, table)
        timings[workers] = seconds
        print(f"{workers} worker(s): {seconds:.1f}s, {kept} documents kept, {args.docs / seconds:,.0f} docs/s")
    print(f"speed-up 2 workers vs 1 (baseline measured in this run): {timings[1] / timings[2]:.2f}x")


if __name__ == "__main__":
    main()
