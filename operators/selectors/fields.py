"""Data-Juicer's selectors: keep a subset of the records chosen from a field's values across the dataset.

Selected records keep their input order (Data-Juicer returns top-k selections sorted by the field); every
record not selected is dropped with the reason.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from pydantic import Field, PositiveInt

from operators.base import OperatorParams, Selector, field_value
from operators.registry import register


class _FieldSelector(Selector):
    def fields(self) -> list[str]:
        return [self.params.field_key.split(".")[0]] if self.params.field_key else []

    def values(self, records: Sequence[dict[str, Any]]) -> list[Any]:
        return [field_value(record, self.params.field_key) for record in records]


def _count(ratio: float | None, number: int | None, total: int) -> int | None:
    """Data-Juicer's rule: the ratio of `total`, capped by the number; None when neither is set."""
    if not ratio:
        return number
    count = int(ratio * total)
    return min(count, number) if number else count


def _as_number(value: Any, missing: float) -> float:
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    try:
        return float(value) if value not in (None, "") else missing
    except (TypeError, ValueError):
        return missing


def _not_selected(total: int, chosen: set[int], reason: str) -> dict[int, str]:
    return {i: reason for i in range(total) if i not in chosen}


@register("random_selector")
class RandomSelector(Selector):
    """Keep a random sample of select_num records or select_ratio of them (the smaller when both are set)."""

    class Params(OperatorParams):
        select_ratio: float | None = Field(None, ge=0, le=1, description="Share of the records to keep.")
        select_num: PositiveInt | None = Field(None, description="Number of records to keep.")
        seed: int = Field(42, description="Seed of the sample, so a run can be repeated.")

    def select(self, records: Sequence[dict[str, Any]]) -> dict[int, str]:
        n = len(records)
        count = _count(self.params.select_ratio, self.params.select_num, n)
        if n <= 1 or count is None or count >= n:
            return {}
        chosen = set(random.Random(self.params.seed).sample(range(n), count))
        return _not_selected(n, chosen, f"not in the random sample of {count}")


class _TopParams(OperatorParams):
    field_key: str = Field("", description="Field to select on ('a.b' for nested fields); empty keeps all.")
    top_ratio: float | None = Field(None, ge=0, le=1, description="Share to keep (the smaller of the two applies).")
    topk: PositiveInt | None = Field(None, description="Number to keep (the smaller of the two applies).")
    reverse: bool = Field(True, description="True: the largest first; False: the smallest first.")


@register("topk_specified_field_selector")
class TopkSpecifiedFieldSelector(_FieldSelector):
    """Keep the topk (or top_ratio) records with the largest (reverse: false, smallest) value of field_key."""

    Params = _TopParams

    def select(self, records: Sequence[dict[str, Any]]) -> dict[int, str]:
        n, p = len(records), self.params
        count = _count(p.top_ratio, p.topk, n)
        if n <= 1 or not p.field_key or count is None:
            return {}
        missing = -math.inf if p.reverse else math.inf
        values = [_as_number(v, missing) for v in self.values(records)]
        pick = heapq.nlargest if p.reverse else heapq.nsmallest
        chosen = set(pick(count, range(n), key=values.__getitem__))
        return _not_selected(n, chosen, f"{p.field_key} not in the {'top' if p.reverse else 'bottom'} {count}")


@register("frequency_specified_field_selector")
class FrequencySpecifiedFieldSelector(_FieldSelector):
    """Keep the records whose field_key value is among the topk (or top_ratio) most (reverse: false, least) frequent."""

    Params = _TopParams

    def select(self, records: Sequence[dict[str, Any]]) -> dict[int, str]:
        n, p = len(records), self.params
        if n <= 1 or not p.field_key:
            return {}
        groups: dict[Any, list[int]] = defaultdict(list)
        for i, value in enumerate(self.values(records)):
            if not (value is None or isinstance(value, str | int | float)):
                raise ValueError(f"record {i}: {p.field_key} must be a string, number or null, got {value!r}")
            groups[value].append(i)
        count = _count(p.top_ratio, p.topk, len(groups))
        if count is None:
            return {}
        ranked = sorted(groups.values(), key=len, reverse=p.reverse)[:count]
        chosen = {i for group in ranked for i in group}
        return _not_selected(n, chosen, f"{p.field_key} value not among the {count} "
                                        f"{'most' if p.reverse else 'least'} frequent")


@register("range_specified_field_selector")
class RangeSpecifiedFieldSelector(_FieldSelector):
    """Keep the records ranked between the lower and upper bound (percentile or rank) by the value of field_key."""

    class Params(OperatorParams):
        field_key: str = Field("", description="Field to rank on ('a.b' for nested fields); empty keeps all.")
        lower_percentile: float | None = Field(None, ge=0, le=1, description="Lower bound as a share of the records.")
        upper_percentile: float | None = Field(None, ge=0, le=1, description="Upper bound as a share of the records.")
        lower_rank: PositiveInt | None = Field(None, description="Lower bound as a rank (the larger bound applies).")
        upper_rank: PositiveInt | None = Field(None, description="Upper bound as a rank (the smaller bound applies).")

    def select(self, records: Sequence[dict[str, Any]]) -> dict[int, str]:
        n, p = len(records), self.params
        if n <= 1 or not p.field_key:
            return {}
        no_lower = p.lower_percentile is None and p.lower_rank is None
        if no_lower or (p.upper_percentile is None and p.upper_rank is None):
            return {}
        lower = int(p.lower_percentile * n) if p.lower_percentile is not None else 0
        lower = max(lower, p.lower_rank) if p.lower_rank is not None else lower
        upper = int(p.upper_percentile * n) if p.upper_percentile is not None else n
        upper = min(upper, p.upper_rank) if p.upper_rank is not None else upper
        upper = max(lower, upper)
        values = [_as_number(v, -math.inf) for v in self.values(records)]
        smallest = heapq.nsmallest(upper, range(n), key=values.__getitem__)
        chosen = set(heapq.nlargest(upper - lower, smallest, key=values.__getitem__))
        return _not_selected(n, chosen, f"{p.field_key} rank outside ({lower}, {upper}]")


@register("tags_specified_field_selector")
class TagsSpecifiedFieldSelector(_FieldSelector):
    """Keep the records whose field_key value is one of target_tags."""

    class Params(OperatorParams):
        field_key: str = Field("", description="Field holding the tag ('a.b' for nested fields); empty keeps all.")
        target_tags: list[str] | None = Field(None, description="Tags to keep.")

    def select(self, records: Sequence[dict[str, Any]]) -> dict[int, str]:
        n, p = len(records), self.params
        if n <= 1 or not p.field_key:
            return {}
        tags = set(p.target_tags or [])
        chosen = {i for i, value in enumerate(self.values(records)) if value in tags}
        return _not_selected(n, chosen, f"{p.field_key} not in {sorted(tags)}")
