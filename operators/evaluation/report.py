"""Report pieces for the UI: Markdown tables (tabulate) and PNG plots (matplotlib, headless Agg backend)."""

import base64
import io
from collections.abc import Mapping, Sequence

from tabulate import tabulate


def markdown_table(rows: Sequence[Mapping], floatfmt: str = ".3g") -> str:
    if not rows:
        return "_(none)_"
    return tabulate(
        [{k: _cell(v) for k, v in row.items()} for row in rows], headers="keys", tablefmt="github", floatfmt=floatfmt
    )


def _cell(value):
    # Pipes and newlines would break a Markdown table row.
    return " ".join(value.split()).replace("|", "\\|") if isinstance(value, str) else value


def markdown_image(png: bytes, alt: str) -> str:
    """Inline PNG for Markdown metadata (the Dagster UI renders data: URIs)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def _pyplot():
    """matplotlib on its headless Agg backend (no display on servers and workers), imported only to plot: every
    Dagster process loads this module."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    _pyplot().close(figure)
    return buffer.getvalue()


def histograms_png(series: Mapping[str, Sequence[float]], xlabel: str) -> bytes:
    """One histogram per named series, side by side."""
    figure, axes = _pyplot().subplots(1, max(1, len(series)), figsize=(4 * max(1, len(series)), 3), squeeze=False)
    for axis, (name, values) in zip(axes[0], series.items(), strict=False):
        axis.hist(values, bins=20, color="#4f7cac")
        axis.set_title(name)
        axis.set_xlabel(xlabel)
    axes[0][0].set_ylabel("count")
    return _png(figure)


def bars_png(values: Mapping[str, float], title: str, ylabel: str, ylim: tuple[float, float] | None = None) -> bytes:
    figure, axis = _pyplot().subplots(figsize=(max(4, 1.2 * len(values)), 3))
    axis.bar(list(values), list(values.values()), color="#4f7cac")
    axis.set_title(title)
    axis.set_ylabel(ylabel)
    if ylim:
        axis.set_ylim(*ylim)
    axis.tick_params(axis="x", labelrotation=20)
    return _png(figure)
