"""Base kinds of cleaning operators: mappers, filters and deduplicators.

How to add an operator
----------------------
1. Write one small class in ``operators/mappers/``, ``operators/filters/`` or ``operators/selectors/`` (any
   module there is imported by the registry), subclassing :class:`Mapper`, :class:`Filter`,
   :class:`Deduplicator` or :class:`Selector` (:class:`RecordMapper` / :class:`RecordFilter` when the
   operator reads fields other than the text, :class:`SplitMapper` when one text becomes several).
   Operators outside this package register the same way from a module named in a recipe's
   ``custom_operator_paths`` or in a ``datamate.operators`` entry point.
2. Declare its parameters as a nested pydantic model named ``Params`` (subclass of
   :class:`OperatorParams`): types, defaults and a one-line ``Field(description=...)`` each.
   Reuse Data-Juicer's operator and parameter names and defaults when the operator exists there.
3. Register it by name with ``@register("my_name_mapper")`` (from ``operators.registry``).
4. Use it in a recipe: ``process: [{my_name_mapper: {param: value}}]``.
5. Test it by calling it on a document::

       op = build_operator("clean_email_mapper", {"repl": "<EMAIL>"})
       assert op.process_text("write to a@b.org") == "write to <EMAIL>"

Example::

    @register("remove_digits_mapper")
    class RemoveDigitsMapper(Mapper):
        \"\"\"Remove every decimal digit.\"\"\"

        class Params(OperatorParams):
            keep_years: bool = Field(False, description="Keep four-digit numbers.")

        def process_text(self, text: str) -> str:
            return re.sub(r"\\d", "", text)

Operators must be picklable (they are shipped to Ray workers): keep heavy objects (models,
detectors) out of instance state, e.g. in a module-level ``functools.cache`` keyed by parameters.
The first line of the class docstring is the operator's description in ``datamate ops list``.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

DEFAULT_TEXT_KEY = "text"

# Filter stats: numbers, or a short label such as a language code.
Stats: TypeAlias = dict[str, float | str]


_SCIENTIFIC = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


class OperatorParams(BaseModel):
    """Parameters of an operator. Unknown parameters are rejected (typos fail fast)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _yaml_scientific_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML 1.1 (PyYAML) reads `2e5` as a string; Data-Juicer's published recipes use it for numbers
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            annotation = str(cls.model_fields[info.field_name].annotation)
            if "str" not in annotation and ("int" in annotation or "float" in annotation):
                number = float(value)
                return int(number) if number.is_integer() else number
        return value


class Operator:
    """Common part of every operator: its registered name, kind, validated parameters and text key."""

    name: ClassVar[str] = ""  # set by @register
    kind: ClassVar[str] = ""
    Params: ClassVar[type[OperatorParams]] = OperatorParams

    def __init__(self, params: OperatorParams | None = None, text_key: str = DEFAULT_TEXT_KEY, **kwargs: Any):
        if params is not None and kwargs:
            raise TypeError("pass either a Params instance or keyword parameters, not both")
        self.params = params if params is not None else self.Params(**kwargs)
        self.text_key = text_key

    @classmethod
    def description(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


class Mapper(Operator, ABC):
    """Text in, text out. A mapper that changes nothing returns its input unchanged."""

    kind: ClassVar[str] = "mapper"

    @abstractmethod
    def process_text(self, text: str) -> str: ...

    def process_batch(self, texts: Sequence[str]) -> list[str]:
        return [self.process_text(text) for text in texts]

    def process(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Return a copy of ``doc`` with its text mapped."""
        return {**doc, self.text_key: self.process_text(doc[self.text_key])}


class RecordMapper(Mapper):
    """A mapper that sees the whole record (every column) and returns the fields it sets, not only the text.

    The runner writes the returned fields back; a field the table does not have is an error for that record
    (the table's columns are fixed before data is read).
    """

    @abstractmethod
    def process_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """The fields to set on this record (a subset of its fields, or all of them)."""

    def process_records(self, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.process_record(dict(record)) for record in records]

    def process_text(self, text: str) -> str:
        return self.process_record({self.text_key: text}).get(self.text_key, text)

    def process(self, doc: dict[str, Any]) -> dict[str, Any]:
        return {**doc, **self.process_record(dict(doc))}


class SplitMapper(Operator):
    """One text in, any number of texts out (Data-Juicer's mappers that change the row count: text_chunk_mapper).

    Each piece becomes a record of its own with the other fields (and statistics) copied, in order; a text
    that gives no piece is dropped with a reason. The runners give the pieces row ids derived from their
    document's (``operators/recipe.py``, ``split_rows``), so order and the link to the document survive.
    """

    kind: ClassVar[str] = "mapper"

    @abstractmethod
    def split_text(self, text: str) -> list[str]: ...

    def split_batch(self, texts: Sequence[str]) -> list[list[str]]:
        return [self.split_text(text) for text in texts]

    def process(self, doc: dict[str, Any]) -> list[dict[str, Any]]:
        """The records ``doc`` becomes."""
        return [{**doc, self.text_key: piece} for piece in self.split_text(doc[self.text_key])]


@dataclass(frozen=True)
class FilterResult:
    keep: bool
    reason: str  # empty when kept
    stats: Stats = field(default_factory=dict)


class Filter(Operator, ABC):
    """Compute stats of a text, then keep or drop it with a reason.

    Stats are a side channel: the cleaning stage records them per document, so a recipe's thresholds
    can be tuned from the distribution without recomputing.
    """

    kind: ClassVar[str] = "filter"

    @abstractmethod
    def compute_stats(self, text: str) -> Stats: ...

    def stat_types(self) -> dict[str, type]:
        """The stats this filter records, by name: ``float`` (numbers) or ``str`` (labels).

        Known before any data is read, so the recipe's ``stats`` column has one fixed schema. Filters
        override it; the fallback reads the names off the stats of an empty text.
        """
        return {name: str if isinstance(value, str) else float for name, value in self.compute_stats("").items()}

    @abstractmethod
    def keep(self, stats: Stats) -> tuple[bool, str]:
        """Decide from the stats alone; the reason names the stat, its value and the bound it broke."""

    def bounds(self) -> dict[str, tuple[float | None, float | None]]:
        """The configured [low, high] of each numeric stat this filter keeps within (drawn on its histogram)."""
        return {}

    def compute_stats_batch(self, texts: Sequence[str]) -> list[Stats]:
        return [self.compute_stats(text) for text in texts]

    def check(self, doc: dict[str, Any]) -> FilterResult:
        stats = self.compute_stats(doc[self.text_key])
        kept, reason = self.keep(stats)
        return FilterResult(kept, "" if kept else reason, stats)


class RecordFilter(Filter):
    """A filter that decides from fields of the record (e.g. ``meta.suffix``), not only from the text.

    Field names follow Data-Juicer: dots go down nested fields (``meta.key1.key2``); a field stored as a
    JSON string (the collected table's ``metadata``) is parsed on the way down.
    """

    @abstractmethod
    def compute_stats_record(self, record: dict[str, Any]) -> Stats: ...

    def compute_stats(self, text: str) -> Stats:
        return self.compute_stats_record({self.text_key: text})

    def check(self, doc: dict[str, Any]) -> FilterResult:
        stats = self.compute_stats_record(doc)
        kept, reason = self.keep(stats)
        return FilterResult(kept, "" if kept else reason, stats)


class Deduplicator(Operator, ABC):
    """Dataset-level: fingerprint each document, then decide which ones duplicate an earlier one.

    ``fingerprint`` runs per document (in parallel, anywhere); ``find_duplicates`` sees only the
    fingerprints, so a distributed implementation can replace it without touching the texts.
    """

    kind: ClassVar[str] = "deduplicator"

    @abstractmethod
    def fingerprint(self, text: str) -> Hashable | Any: ...

    @abstractmethod
    def find_duplicates(self, fingerprints: Sequence[Any]) -> dict[int, int]:
        """Map the index of every duplicate document to the index of the kept document it duplicates."""

    def deduplicate(self, docs: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[dict, str]]]:
        """In-process convenience: (kept docs, [(dropped doc, reason)]) in input order."""
        docs = list(docs)
        duplicates = self.find_duplicates([self.fingerprint(doc[self.text_key]) for doc in docs])
        kept = [doc for i, doc in enumerate(docs) if i not in duplicates]
        dropped = [(docs[i], f"duplicate of document #{j}") for i, j in sorted(duplicates.items())]
        return kept, dropped


class Selector(Operator, ABC):
    """Dataset-level: choose which records to keep from the values of fields across all records.

    Data-Juicer's selectors (top-k, range, frequency, tags, random sample). ``select`` sees the live records
    (only the fields it asks for in ``fields()``) and returns, for each record it drops, the reason.
    """

    kind: ClassVar[str] = "selector"

    def fields(self) -> list[str]:
        """Top-level columns ``select`` needs; empty means none (e.g. a random sample)."""
        return []

    @abstractmethod
    def select(self, records: Sequence[dict[str, Any]]) -> dict[int, str]:
        """Map the position of every dropped record to the reason it was not selected."""


def field_value(record: dict[str, Any], key: str) -> Any:
    """The value at a Data-Juicer field key (``a.b.c``); a missing key raises KeyError naming the key."""
    value: Any = record
    for part in key.split("."):
        if isinstance(value, str) and value[:1] == "{":
            value = json.loads(value)
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"field {key!r}: no {part!r} in the record")
        value = value[part]
    return value


def in_range(stat: str, value: float, low: float | None, high: float | None) -> tuple[bool, str]:
    """Closed-interval check shared by filters: (kept, reason naming stat, value and bound)."""
    if low is not None and value < low:
        return False, f"{stat} {value:.4g} < {low:.4g}"
    if high is not None and value > high:
        return False, f"{stat} {value:.4g} > {high:.4g}"
    return True, ""
