"""`datamate analyze --config CONFIG.yaml`: every filter's statistics without dropping, as histograms and quantiles.

Like Data-Juicer's analyzer: each filter computes its stats on the input texts; per statistic a PNG histogram
with the configured bounds drawn and the share of documents outside them, and a table of quantiles
(`percentiles` from the config). `--sample N` analyses a uniform sample of N documents of a big corpus.
"""

import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("analyze", help="Histograms and quantiles of a recipe's filter statistics")
    parser.add_argument("--config", type=Path, required=True, help="Data-Juicer config file")
    parser.add_argument("--dataset_path", "--dataset-path", type=Path, help="Override dataset_path")
    parser.add_argument("--output", type=Path, help="Folder for the plots and tables (default: beside export_path, "
                                                     "or ./analysis)")
    parser.add_argument("--sample", type=int, default=None, help="Analyse a uniform sample of this many documents")
    parser.set_defaults(func=run)


def run(args) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from operators.analysis import quantile_table, sample_batches, stats_of_batches, summarize
    from operators.dj_config import load_config, read_dataset
    from operators.recipe import BATCH_ROWS, RecipeError

    try:
        config = load_config(args.config, {"dataset_path": args.dataset_path})
        if config.dataset_path is None:
            raise RecipeError(f"{args.config}: needs dataset_path (in the file or --dataset_path)")
        table = read_dataset(config.dataset_path, config.suffixes)
        batches = (table.slice(start, BATCH_ROWS) for start in range(0, table.num_rows, BATCH_ROWS))
        if args.sample:
            batches = sample_batches(batches, args.sample)
        stats = stats_of_batches(config.recipe, batches)
        summaries = summarize(config.recipe, stats, config.percentiles)
    except (RecipeError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    output = args.output or (config.export_path.parent / "analysis" if config.export_path else Path("analysis"))
    output.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"stats": stats.column("stats")}), output / "stats.parquet")
    for summary in summaries:
        (output / f"{summary.name}.png").write_bytes(summary.png)
    table_md = quantile_table(summaries)
    (output / "quantiles.md").write_text(table_md + "\n", encoding="utf-8")
    print(table_md)
    print(f"\n{stats.num_rows} documents analysed; {len(summaries)} histograms, quantiles.md and stats.parquet "
          f"in {output}")
    return 0
