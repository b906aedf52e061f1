"""`datamate clean --recipe RECIPE.yaml INPUT OUTPUT`: run a recipe on a JSONL or Parquet file, outside Dagster."""

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from operators.recipe import Recipe, RecipeError, run_local


def register(subparsers) -> None:
    parser = subparsers.add_parser("clean", help="Run a cleaning recipe (Data-Juicer style YAML) on a file")
    parser.add_argument("--recipe", required=True, type=Path, help="YAML with a `process:` list of operators")
    parser.add_argument("input", type=Path, help=".jsonl or .parquet")
    parser.add_argument("output", type=Path, help=".jsonl or .parquet (kept records)")
    parser.add_argument("--text-key", default=None, help="Field holding the text (default: recipe or 'text')")
    parser.add_argument("--stats", type=Path, default=None, help="Write per-operator stats as JSON here")
    parser.add_argument("--drops", type=Path, default=None, help="Write dropped records with reasons here")
    parser.add_argument("--num-proc", type=int, default=1, help="Worker processes for mappers and filters")
    parser.set_defaults(func=run)


def read_records(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    if path.suffix in (".jsonl", ".json"):
        rows = []
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise RecipeError(f"{path}:{number}: not a JSON object: {error}") from error
        return pa.Table.from_pylist(rows)
    raise RecipeError(f"{path}: unsupported format {path.suffix!r} (use .jsonl or .parquet)")


def write_records(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(table, path)
        return
    with path.open("w", encoding="utf-8") as out:
        for row in table.to_pylist():
            out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def run(args) -> int:
    try:
        recipe = Recipe.load(args.recipe, text_key=args.text_key)  # fails fast, before reading the input
        table = read_records(args.input)
        result = run_local(recipe, table, num_proc=args.num_proc)
    except (RecipeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_records(result.kept, args.output)
    if args.drops:
        write_records(result.drops, args.drops)
    if args.stats:
        args.stats.write_text(json.dumps({"recipe_hash": result.recipe_hash, "input": table.num_rows,
                                          "kept": result.kept.num_rows, "operators": result.stats_json()}, indent=2))
    width = max(len(s.operator) for s in result.stats)
    print(f"{'operator':<{width}}  {'in':>8} {'out':>8} {'changed':>8} {'dropped':>8} {'errors':>6} {'sec':>7}")
    for s in result.stats:
        print(f"{s.operator:<{width}}  {s.docs_in:>8} {s.docs_out:>8} {s.changed:>8} {s.dropped:>8} "
              f"{s.errors:>6} {s.seconds:>7.2f}")
    print(f"kept {result.kept.num_rows} of {table.num_rows} records -> {args.output} (recipe {result.recipe_hash})")
    return 0
