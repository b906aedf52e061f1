"""`datamate clean --config CONFIG.yaml | --recipe RECIPE.yaml IN OUT`: clean a file or folder outside Dagster.

`--config` runs a Data-Juicer config the way `dj-process --config` does: `dataset_path` in, `export_path` out
(`export_shard_size` honoured), `np` processes, `text_keys`, `executor_type: ray`; `--dataset_path`,
`--export_path` and `--np` override the file. `--recipe IN OUT` reads only the file's `process:` list.

The input is read in batches and the kept records are exported as they come: locally through the streaming
runner (`operators.stream.run_stream`), with `executor_type: ray` through the Ray executor
(`operators.ray_exec.run_ray_batches`), whose workers read and write a scratch folder beside the export.
"""

import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("clean", help="Run a Data-Juicer config or cleaning recipe on a file or folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="Data-Juicer config file (global keys and `process:`)")
    source.add_argument("--recipe", type=Path, help="YAML with a `process:` list of operators (needs INPUT OUTPUT)")
    parser.add_argument("input", type=Path, nargs="?", help="with --recipe: .jsonl, .json, .parquet, .csv or .txt")
    parser.add_argument("output", type=Path, nargs="?", help="with --recipe: .jsonl, .json or .parquet (kept records)")
    parser.add_argument("--dataset_path", "--dataset-path", type=Path, help="with --config: override dataset_path")
    parser.add_argument("--export_path", "--export-path", type=Path, help="with --config: override export_path")
    parser.add_argument("--np", type=int, help="with --config: override np (worker processes)")
    parser.add_argument("--text-key", default=None, help="Field holding the text (default: the file's or 'text')")
    parser.add_argument("--stats", type=Path, default=None, help="Write per-operator stats as JSON here")
    parser.add_argument("--drops", type=Path, default=None, help="Write dropped records with reasons here")
    parser.add_argument("--num-proc", type=int, default=None,
                        help="Processes for mappers, filters and fingerprints: this one and NUM_PROC - 1 workers")
    parser.set_defaults(func=run)


def log(message: str) -> None:
    print(message, file=sys.stderr)


class _Counted:
    """The input batches, counted as they pass."""

    def __init__(self, batches):
        self.batches, self.rows = batches, 0

    def __iter__(self) -> Iterator:
        for batch in self.batches:
            self.rows += batch.num_rows
            yield batch


def _clean(recipe, batches, kept, drops, executor: str, num_proc: int, ray_address: str | None, target: Path):
    """Run the recipe over the batches into the `kept` and `drops` sinks; spill files go to a temporary folder
    (on Ray beside `target`: the nodes of a cluster must see it, as they see the export)."""
    from operators.stream import run_stream

    work = Path(tempfile.mkdtemp(prefix=".datamate-clean-", dir=target.parent if executor == "ray" else None))
    try:
        if executor != "ray":
            return run_stream(recipe, batches, work, kept, drops, num_proc=num_proc)
        import ray

        from operators.ray_exec import run_ray_batches

        started = not ray.is_initialized()  # a caller's Ray (a test, a notebook) stays up
        if started:
            ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
        try:
            return run_ray_batches(recipe, batches, work, kept, drops)
        finally:
            if started:
                ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args) -> int:
    from operators.dj_config import DJConfig, Exporter, InputDataset, load_config
    from operators.recipe import Recipe, RecipeError
    from operators.stream import output_schemas

    try:
        if args.config:
            if args.input or args.output:
                raise RecipeError("--config takes no INPUT OUTPUT; use --dataset_path / --export_path")
            config: DJConfig = load_config(args.config, {
                "dataset_path": args.dataset_path, "export_path": args.export_path, "np": args.np,
                "text_keys": args.text_key})
            for key, instead in config.ignored.items():
                log(f"{args.config}: `{key}` is ignored here: {instead}")
            if config.dataset_path is None or config.export_path is None:
                raise RecipeError(f"{args.config}: needs dataset_path and export_path (in the file or as options)")
            recipe, source, target = config.recipe, config.dataset_path, config.export_path
            num_proc, executor = args.num_proc or config.np, config.executor
        else:
            if not (args.input and args.output):
                raise RecipeError("--recipe needs INPUT and OUTPUT")
            recipe = Recipe.load(args.recipe, text_key=args.text_key)  # fails fast, before reading the input
            source, target, num_proc, executor = args.input, args.output, args.num_proc or 1, "local"
            config = None
        dataset = InputDataset.open(source, config.suffixes if config else None)
        kept_schema, drops_schema = output_schemas(dataset.schema, recipe)
        kept = Exporter(target, kept_schema, config.export_shard_size if config else 0,
                        keep_stats=config.keep_stats_in_res_ds if config else True)
        drops = Exporter(args.drops, drops_schema, keep_stats=True) if args.drops else _Discard()
        batches = _Counted(dataset.batches())
        result = _clean(recipe, batches, kept, drops, executor, num_proc, config.ray_address if config else None,
                        target)
        files = kept.close()
        if args.drops:
            drops.close()
    except (RecipeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.stats:
        args.stats.write_text(json.dumps({"recipe_hash": result.recipe_hash, "input": batches.rows,
                                          "kept": result.kept, "operators": [asdict(s) for s in result.stats]},
                                         indent=2))
    width = max(len(s.operator) for s in result.stats)
    print(f"{'operator':<{width}}  {'in':>8} {'out':>8} {'changed':>8} {'dropped':>8} {'errors':>6} {'sec':>7}")
    for s in result.stats:
        print(f"{s.operator:<{width}}  {s.docs_in:>8} {s.docs_out:>8} {s.changed:>8} {s.dropped:>8} "
              f"{s.errors:>6} {s.seconds:>7.2f}")
    shown = target if len(files) == 1 or files[0] == target else f"{len(files)} files next to {target}"
    added = sum(step.added for step in result.stats)  # records a splitting mapper made from one
    split = f" (+{added} made by splitting)" if added else ""
    print(f"kept {result.kept} of {batches.rows} records{split} -> {shown} (recipe {result.recipe_hash})")
    return 0


class _Discard:
    """Drops nobody asked for (no --drops)."""

    rows = 0

    def write(self, batch) -> None:
        self.rows += batch.num_rows
