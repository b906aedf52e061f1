"""Statistics to tune a recipe by, as Data-Juicer's analyzer computes them: every filter's per-document stats
without dropping anything, then per statistic a histogram with the configured bounds drawn on it, the share of
documents outside them, and a table of quantiles.

Batches stream through `stats_of_batches`; only the stats (a few numbers per document) are kept, and
`sample_batches` bounds even those for big corpora.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from operators.base import Filter, RecordFilter
from operators.recipe import STATS, Recipe, stats_type

DEFAULT_PERCENTILES = (0.25, 0.5, 0.75)


def stats_of_batch(recipe: Recipe, batch: pa.Table) -> pa.Table:
    """The `stats` struct column of every filter of the recipe on the batch's original texts (nothing dropped)."""
    kind = stats_type(recipe.operators)
    if kind is None:
        raise ValueError("the recipe has no filter, so there are no statistics to analyse")
    texts = batch.column(recipe.text_key).cast(pa.large_string()).fill_null("").to_pylist()
    records = None
    rows: list[dict] = [{} for _ in texts]
    for op in recipe.operators:
        if not isinstance(op, Filter):
            continue
        if isinstance(op, RecordFilter):
            records = records if records is not None else batch.to_pylist()
            values = []
            for record in records:
                try:
                    values.append(op.compute_stats_record(record))
                except Exception:  # noqa: BLE001 - a record the filter cannot read has no stat, like a drop
                    values.append({})
        else:
            values = op.compute_stats_batch(texts)
        for row, stats in zip(rows, values, strict=True):
            row.update(stats)
    columns = {}
    for stat in kind:
        raw = [row.get(stat.name) for row in rows]
        columns[stat.name] = pa.array([None if v is None else (str(v) if pa.types.is_string(stat.type) else float(v))
                                       for v in raw], stat.type)
    return pa.table({STATS: pa.StructArray.from_arrays(list(columns.values()), fields=list(kind))})


def stats_of_batches(recipe: Recipe, batches: Iterable[pa.Table]) -> pa.Table:
    tables = [stats_of_batch(recipe, batch) for batch in batches if batch.num_rows]
    return pa.concat_tables(tables) if tables else pa.table({STATS: pa.array([], stats_type(recipe.operators))})


def sample_batches(batches: Iterable[pa.Table], size: int, seed: int = 0) -> Iterator[pa.Table]:
    """A uniform sample of `size` rows of a stream of batches: each row draws a random key and the `size`
    smallest keys win (bottom-k sampling), so memory stays at `size` rows plus one batch."""
    rng = np.random.default_rng(seed)
    kept: pa.Table | None = None
    keys = np.zeros(0)
    for batch in batches:
        table = batch if kept is None else pa.concat_tables([kept, batch], promote_options="permissive")
        keys = np.concatenate([keys, rng.random(batch.num_rows)])
        if table.num_rows > size:
            chosen = np.sort(np.argpartition(keys, size)[:size])
            table, keys = table.take(chosen), keys[chosen]
        kept = table
    if kept is not None:
        yield kept


@dataclass
class StatSummary:
    name: str
    count: int  # documents with a value
    quantiles: dict[float, float]
    low: float | None
    high: float | None
    outside: float  # share of documents outside [low, high]
    png: bytes  # the histogram with the bounds drawn


def bounds_of(recipe: Recipe) -> dict[str, tuple[float | None, float | None]]:
    found: dict[str, tuple[float | None, float | None]] = {}
    for op in recipe.operators:
        if isinstance(op, Filter):
            for name, (low, high) in op.bounds().items():
                found.setdefault(name, (low, high))
    return found


def _finite(bound: float | None) -> float | None:
    # Data-Juicer's "no bound" defaults are sys.maxsize / -sys.maxsize: nothing to draw
    return bound if bound is not None and math.isfinite(bound) and abs(bound) < 1e15 else None


def histogram(name: str, values: np.ndarray, low: float | None, high: float | None, outside: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # headless: servers and workers have no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.2), dpi=100)
    axes.hist(values, bins=min(50, max(5, int(np.sqrt(values.size)))), color="#4C72B0")
    for bound, label in ((low, "min"), (high, "max")):
        if bound is not None:
            axes.axvline(bound, color="#C44E52", linestyle="--", linewidth=1.5, label=f"{label} {bound:g}")
    axes.set_title(f"{name}: {values.size} documents, {outside:.1%} outside the bounds", fontsize=10)
    axes.set_xlabel(name)
    axes.set_ylabel("documents")
    if low is not None or high is not None:
        axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def summarize(recipe: Recipe, stats: pa.Table, percentiles: Sequence[float] = DEFAULT_PERCENTILES
              ) -> list[StatSummary]:
    """Per numeric statistic: quantiles, the configured bounds, the share outside them and the histogram."""
    return summarize_stats(stats, bounds_of(recipe), percentiles)


def summarize_stats(stats: pa.Table, bounds: dict[str, tuple[float | None, float | None]],
                    percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> list[StatSummary]:
    """`summarize` for any `stats` struct column (a published table's), with the bounds known (or none)."""
    if STATS not in stats.column_names or not stats.num_rows:
        return []
    column = stats.column(STATS).combine_chunks()
    summaries = []
    for stat, field_values in zip(column.type, column.flatten(), strict=True):  # flatten: a null row has no value
        if not (pa.types.is_floating(stat.type) or pa.types.is_integer(stat.type)):
            continue
        values = field_values.drop_null().to_numpy(zero_copy_only=False).astype(float)
        values = values[~np.isnan(values)]
        if not values.size:
            continue
        low, high = (_finite(b) for b in bounds.get(stat.name, (None, None)))
        out = np.zeros(values.size, bool)
        if low is not None:
            out |= values < low
        if high is not None:
            out |= values > high
        share = float(out.mean())
        quantiles = {q: float(np.quantile(values, q)) for q in percentiles}
        summaries.append(StatSummary(stat.name, int(values.size), quantiles, low, high, share,
                                     histogram(stat.name, values, low, high, share)))
    return summaries


def quantile_table(summaries: Sequence[StatSummary]) -> str:
    """A Markdown table: one row per statistic, its quantiles, bounds and the share outside them."""
    if not summaries:
        return "_no numeric statistic_"
    percentiles = list(summaries[0].quantiles)
    header = ["stat", "documents", *(f"p{q * 100:g}" for q in percentiles), "min bound", "max bound", "outside"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        cells = [s.name, str(s.count), *(f"{s.quantiles[q]:.4g}" for q in percentiles),
                 "" if s.low is None else f"{s.low:g}", "" if s.high is None else f"{s.high:g}", f"{s.outside:.1%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
