"""`datamate analyze DATASET | --config CONFIG.yaml`: filter statistics as histograms and quantiles.

    datamate analyze --config dj.yaml [--sample N]                    # compute the stats of a Data-Juicer config
    datamate analyze DATASET [--stage cleaned|cleaning_drops] [--version N] [--sample N]   # the published ones

Like Data-Juicer's analyzer: per statistic a PNG histogram with the configured bounds drawn and the share of
documents outside them, and a table of quantiles. With `--config`, each filter computes its stats on the input
texts (`percentiles` from the config). With a dataset, the `stats` column the cleaning stage kept is read from
the published table (any version), in batches, and the bounds come from the dataset's recipe. `--sample N`
analyses a uniform sample of N documents (a dataset: 1,000,000 by default), so memory stays bounded.
"""

import sys
from argparse import RawDescriptionHelpFormatter as RawText
from pathlib import Path

DATASET_SAMPLE = 1_000_000  # documents' statistics held at once (a few numbers each)


def register(subparsers) -> None:
    parser = subparsers.add_parser("analyze", help="Histograms and quantiles of a recipe's filter statistics",
                                   description=__doc__.split("\n\n", 1)[1], formatter_class=RawText)
    parser.add_argument("dataset", nargs="?", help="A dataset whose published statistics to analyse")
    parser.add_argument("--stage", default="cleaned", help="With a dataset: the table (cleaned or cleaning_drops)")
    parser.add_argument("--version", type=int, help="With a dataset: the Delta version (default: the latest)")
    parser.add_argument("--config", type=Path, help="Data-Juicer config file (instead of a dataset)")
    parser.add_argument("--dataset_path", "--dataset-path", type=Path, help="Override dataset_path")
    parser.add_argument("--output", type=Path, help="Folder for the plots and tables (default: beside export_path, "
                                                     "or ./analysis[/DATASET-STAGE-vN])")
    parser.add_argument("--sample", type=int, default=None, help="Analyse a uniform sample of this many documents")
    parser.set_defaults(func=run)


def run(args) -> int:
    if (args.dataset is None) == (args.config is None):
        print("error: name a dataset or give --config CONFIG.yaml (one of them)", file=sys.stderr)
        return 2
    if args.dataset is not None:
        return run_dataset(args)
    return run_config(args)


def run_config(args) -> int:
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


def run_dataset(args) -> int:
    """The published `stats` column of a dataset's stage, streamed in batches (only that column is read)."""
    from datamate_assets.cli.project import find_project, published_table

    project = find_project()
    settings = project.activate()

    from datamate_resources import tables
    from operators.analysis import quantile_table, sample_batches, summarize_stats
    from operators.recipe import STATS

    ref = published_table(settings, args.dataset, args.stage, args.version)
    try:
        if STATS not in ref.schema.names:
            print(f"error: {ref.uri} (version {ref.version}) has no `{STATS}` column: its recipe has no filter, or "
                  "it is not a cleaning table (cleaned, cleaning_drops)", file=sys.stderr)
            return 1
        batches = (batch for batch in ref.batches(columns=[STATS]) if batch.num_rows)
        sample = sample_batches((_table(batch) for batch in batches), args.sample or DATASET_SAMPLE)
        stats = next(sample, None)
    except tables.TableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    bounds, note = _recipe_bounds(project, args.dataset, ref)
    summaries = summarize_stats(stats, bounds) if stats is not None else []
    output = args.output or Path("analysis") / f"{args.dataset}-{args.stage}-v{ref.version}"
    output.mkdir(parents=True, exist_ok=True)
    for summary in summaries:
        (output / f"{summary.name}.png").write_bytes(summary.png)
    table_md = quantile_table(summaries)
    (output / "quantiles.md").write_text(table_md + "\n", encoding="utf-8")
    print(table_md)
    analysed = 0 if stats is None else stats.num_rows
    scope = f"a uniform sample of {analysed:,}" if analysed < ref.num_rows else f"all {analysed:,}"
    print(f"\n{args.dataset}/{args.stage} version {ref.version}: {scope} of {ref.num_rows:,} documents analysed"
          f"{note}; {len(summaries)} histograms and quantiles.md in {output.resolve()}")
    return 0


def _table(batch):
    import pyarrow as pa

    return pa.Table.from_batches([batch])


def _recipe_bounds(project, dataset: str, ref) -> tuple[dict, str]:
    """The filters' bounds from the dataset's recipe as the spec has it now (drawn on the histograms), and a note
    when there are none to draw or the table was cleaned by another recipe."""
    from datamate_assets.cli.run import dataset_spec
    from operators.analysis import bounds_of
    from operators.dj_config import load_config
    from operators.recipe import Recipe, RecipeError

    spec, _ = dataset_spec(project, dataset)
    if spec is None or spec.cleaning is None:
        return {}, " (no spec with a cleaning recipe found: no bounds drawn)"
    section = spec.cleaning
    try:
        if section.config:
            base = spec.spec_path.parent if spec.spec_path else Path.cwd()
            recipe = load_config(base / section.config).recipe
        else:
            recipe = Recipe.from_process(section.process, section.text_key)
    except (RecipeError, OSError, ValueError) as error:
        return {}, f" (the recipe does not load here, no bounds drawn: {error})"
    if "recipe_hash" in ref.schema.names and ref.num_rows:
        used = ref.head(1, columns=["recipe_hash"]).column("recipe_hash")[0].as_py()
        if used != recipe.hash:
            return bounds_of(recipe), f" (cleaned by recipe {used}; the bounds drawn are the spec's now, {recipe.hash})"
    return bounds_of(recipe), ""
