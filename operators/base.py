"""Base kinds of cleaning operators: mappers, filters and deduplicators.

How to add an operator
----------------------
1. Write one small class in ``operators/mappers/`` or ``operators/filters/`` (any module there is
   imported by the registry), subclassing :class:`Mapper`, :class:`Filter` or :class:`Deduplicator`.
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

from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

from pydantic import BaseModel, ConfigDict

DEFAULT_TEXT_KEY = "text"

# Filter stats: numbers, or a short label such as a language code.
Stats: TypeAlias = dict[str, float | str]


class OperatorParams(BaseModel):
    """Parameters of an operator. Unknown parameters are rejected (typos fail fast)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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

    @abstractmethod
    def keep(self, stats: Stats) -> tuple[bool, str]:
        """Decide from the stats alone; the reason names the stat, its value and the bound it broke."""

    def compute_stats_batch(self, texts: Sequence[str]) -> list[Stats]:
        return [self.compute_stats(text) for text in texts]

    def check(self, doc: dict[str, Any]) -> FilterResult:
        stats = self.compute_stats(doc[self.text_key])
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


def in_range(stat: str, value: float, low: float | None, high: float | None) -> tuple[bool, str]:
    """Closed-interval check shared by filters: (kept, reason naming stat, value and bound)."""
    if low is not None and value < low:
        return False, f"{stat} {value:.4g} < {low:.4g}"
    if high is not None and value > high:
        return False, f"{stat} {value:.4g} > {high:.4g}"
    return True, ""
