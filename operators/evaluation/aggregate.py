"""Aggregates of judge results with 95% confidence intervals, and agreement with human labels.

- a share (pass rate, win rate): Wilson score interval (scipy), which behaves at 0, 1 and small n;
- a mean score: Student's t interval;
- judge vs human: Cohen's kappa (scikit-learn) over the records both labeled.
"""

import math
from collections.abc import Sequence

CONFIDENCE = 0.95
# scipy and scikit-learn (~70 MB) are imported in the functions that use them: every Dagster process imports this.


def share_interval(successes: int, total: int) -> dict:
    """{value, low, high, n} of successes/total (Wilson); value None when nothing was counted."""
    if total == 0:
        return {"value": None, "low": None, "high": None, "n": 0}
    from scipy import stats

    interval = stats.binomtest(successes, total).proportion_ci(CONFIDENCE, method="wilson")
    return {"value": round(successes / total, 4), "low": round(float(interval.low), 4),
            "high": round(float(interval.high), 4), "n": total}


def mean_interval(values: Sequence[float]) -> dict:
    """{value, low, high, n} of the mean (t interval); low/high None with fewer than two values."""
    n = len(values)
    if n == 0:
        return {"value": None, "low": None, "high": None, "n": 0}
    from scipy import stats

    mean = sum(values) / n
    if n < 2:
        return {"value": round(mean, 4), "low": None, "high": None, "n": 1}
    sem = stats.sem(values)
    if sem == 0 or math.isnan(sem):
        return {"value": round(mean, 4), "low": round(mean, 4), "high": round(mean, 4), "n": n}
    low, high = stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=sem)
    return {"value": round(mean, 4), "low": round(float(low), 4), "high": round(float(high), 4), "n": n}


def cohen_kappa(judge: Sequence[str], human: Sequence[str]) -> float | None:
    """Agreement beyond chance of two raters over the same items; None with fewer than two items or when both
    raters gave a single, identical label (kappa is undefined then)."""
    if len(judge) < 2 or len(judge) != len(human):
        return None
    if len(set(judge) | set(human)) < 2:
        return None
    from sklearn.metrics import cohen_kappa_score

    kappa = cohen_kappa_score(list(judge), list(human))
    return None if math.isnan(kappa) else round(float(kappa), 4)
