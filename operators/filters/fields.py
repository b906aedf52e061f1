"""Filters on fields other than the text (Data-Juicer's suffix, specified-field and general-field filters)."""

from __future__ import annotations

import ast
import json
import math
import operator
import sys
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlparse

from pydantic import Field, field_validator

from operators.base import OperatorParams, RecordFilter, Stats, field_value, in_range
from operators.registry import register

SUFFIX_FIELD = "__dj__suffix__"  # Data-Juicer's file-suffix field, set by its readers


def _suffix(record: dict[str, Any]) -> str:
    if record.get(SUFFIX_FIELD) is not None:
        return record[SUFFIX_FIELD]
    uri = record.get("source_uri") or ""
    return PurePosixPath(urlparse(uri).path).suffix


@register("suffix_filter")
class SuffixFilter(RecordFilter):
    """Keep records whose file suffix (`__dj__suffix__`, else the suffix of `source_uri`) is one of `suffixes`."""

    class Params(OperatorParams):
        suffixes: str | list[str] = Field([], description="Suffixes to keep, e.g. ['.txt', '.pdf']; empty keeps all.")

    def stat_types(self) -> dict[str, type]:
        return {"suffix": str}

    def compute_stats_record(self, record: dict[str, Any]) -> Stats:
        return {"suffix": _suffix(record)}

    def keep(self, stats: Stats) -> tuple[bool, str]:
        wanted = [self.params.suffixes] if isinstance(self.params.suffixes, str) else self.params.suffixes
        if not wanted or stats["suffix"] in wanted:
            return True, ""
        return False, f"suffix {stats['suffix']!r} not in {wanted}"


@register("specified_field_filter")
class SpecifiedFieldFilter(RecordFilter):
    """Keep records whose field `field_key` (dots go down nested fields) has every value in `target_value`."""

    class Params(OperatorParams):
        field_key: str = Field("", description="Field to check, e.g. 'meta.suffix'; empty keeps all.")
        target_value: list = Field([], description="Accepted values; a list field must have only accepted values.")

    def stat_types(self) -> dict[str, type]:
        return {self.params.field_key: str} if self.params.field_key else {}

    def compute_stats_record(self, record: dict[str, Any]) -> Stats:
        if not self.params.field_key:
            return {}
        # a JSON text, so that lists and numbers fit one string statistic
        return {self.params.field_key: json.dumps(field_value(record, self.params.field_key), ensure_ascii=False)}

    def keep(self, stats: Stats) -> tuple[bool, str]:
        key, targets = self.params.field_key, self.params.target_value
        if not (key and targets):
            return True, ""
        value = json.loads(stats[key])
        values = value if isinstance(value, list) else [value]
        rejected = [v for v in values if v not in targets]
        return (False, f"{key} value {rejected[0]!r} not in {targets}") if rejected else (True, "")


def _number(value: Any) -> float:
    """Data-Juicer's test: a number or a numeric string; anything else (None, '', 'abc') is NaN."""
    if isinstance(value, bool) or not value and value != 0:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


@register("specified_numeric_field_filter")
class SpecifiedNumericFieldFilter(RecordFilter):
    """Keep records whose numeric field `field_key` lies in [min_value, max_value]; non-numeric values are dropped."""

    class Params(OperatorParams):
        field_key: str = Field("", description="Numeric field to check, e.g. 'meta.star'; empty keeps all.")
        min_value: float = Field(-sys.maxsize, description="Smallest value to keep a record.")
        max_value: float = Field(sys.maxsize, description="Largest value to keep a record.")

    def stat_types(self) -> dict[str, type]:
        return {self.params.field_key: float} if self.params.field_key else {}

    def bounds(self) -> dict[str, tuple[float | None, float | None]]:
        return {self.params.field_key: (self.params.min_value, self.params.max_value)} if self.params.field_key else {}

    def compute_stats_record(self, record: dict[str, Any]) -> Stats:
        if not self.params.field_key:
            return {}
        return {self.params.field_key: _number(field_value(record, self.params.field_key))}

    def keep(self, stats: Stats) -> tuple[bool, str]:
        key = self.params.field_key
        if not key:
            return True, ""
        if math.isnan(stats[key]):
            return False, f"{key} is not a number"
        return in_range(key, stats[key], self.params.min_value, self.params.max_value)


_COMPARISONS = {
    ast.Gt: operator.gt, ast.Lt: operator.lt, ast.GtE: operator.ge, ast.LtE: operator.le,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}


def _evaluate(node: ast.AST, record: dict[str, Any]) -> Any:
    """The value of a condition over a record; a missing field is None and any comparison with None is False."""
    if isinstance(node, ast.BoolOp):
        values = (_evaluate(child, record) for child in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, record)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(right_node, record)
            if left is None or right is None or not _COMPARISONS[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Name):
        return record.get(node.id)
    if isinstance(node, ast.Attribute):
        parent = _evaluate(node.value, record)
        return parent.get(node.attr) if isinstance(parent, dict) else None
    if isinstance(node, ast.Constant):
        return node.value
    raise ValueError(f"unsupported expression {ast.unparse(node)!r}")


def _check_supported(node: ast.AST) -> None:
    allowed = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.Compare, ast.Name, ast.Attribute, ast.Constant,
               ast.Load, *_COMPARISONS)
    for child in ast.walk(node):
        if not isinstance(child, allowed):
            raise ValueError(f"unsupported syntax {type(child).__name__} (use and/or, comparisons, fields, constants)")


@register("general_field_filter")
class GeneralFieldFilter(RecordFilter):
    """Keep records meeting a condition on their fields, e.g. "10 < num <= 30 and meta.lang == 'en'"."""

    class Params(OperatorParams):
        filter_condition: str = Field("", description="and/or of (chained) comparisons of fields and constants.")

        @field_validator("filter_condition")
        @classmethod
        def _parses(cls, condition: str) -> str:
            if condition.strip():
                try:
                    _check_supported(ast.parse(condition.strip(), mode="eval"))
                except SyntaxError as error:
                    raise ValueError(f"invalid filter condition {condition!r}: {error.msg}") from error
            return condition

    def stat_types(self) -> dict[str, type]:
        return {"general_field_filter_condition": float}

    def compute_stats_record(self, record: dict[str, Any]) -> Stats:
        condition = self.params.filter_condition.strip()
        if not condition:
            return {"general_field_filter_condition": 1.0}
        tree = ast.parse(condition, mode="eval")
        return {"general_field_filter_condition": float(bool(_evaluate(tree.body, record)))}

    def keep(self, stats: Stats) -> tuple[bool, str]:
        if stats["general_field_filter_condition"]:
            return True, ""
        return False, f"condition not met: {self.params.filter_condition.strip()}"
