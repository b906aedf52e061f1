"""DataMate operators: plain Python (no Dagster) shared by the CLI, Dagster assets, Ray workers and tests."""

from operators.base import Deduplicator, Filter, FilterResult, Mapper, Operator, OperatorParams
from operators.registry import OperatorConfigError, build_operator, catalogue, get_operator_class, register

__all__ = [
    "Deduplicator", "Filter", "FilterResult", "Mapper", "Operator", "OperatorConfigError", "OperatorParams",
    "build_operator", "catalogue", "get_operator_class", "register",
]
