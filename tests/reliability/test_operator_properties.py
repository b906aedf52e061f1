"""Property tests on every registered operator: arbitrary Unicode in, no exception, valid text out.

Mappers must return a `str` that encodes as UTF-8 (Parquet stores nothing else); filters must decide from
stats alone and never touch the document; deduplicators must account for every document. Hostile shapes that
make regexes backtrack (long runs of one character, of '@', '.', digits, '<') run once per operator: a hang is
caught by the suite's timeout, not by a timed assertion.
"""

import copy
import math

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.base import Deduplicator, Filter, Mapper
from operators.recipe import Recipe, run_local
from operators.registry import build_operator, registered

OPERATORS = registered()
MAPPERS = sorted(name for name, cls in OPERATORS.items() if issubclass(cls, Mapper))
FILTERS = sorted(name for name, cls in OPERATORS.items() if issubclass(cls, Filter))
DEDUPLICATORS = sorted(name for name, cls in OPERATORS.items() if issubclass(cls, Deduplicator))

# Any code point that UTF-8 can carry (no lone surrogates: no reader can produce them).
ANY_CHAR = st.characters(codec="utf-8")
# Pieces that trigger the operators' patterns: PII, markup, URLs, CJK, emoji, controls, odd whitespace.
PIECES = st.sampled_from([
    "jane.doe@example.org", "+44 20 7946 0958", "4111 1111 1111 1111", "192.168.0.1", "fe80::1",
    "https://example.org/a?b=1", "www.x.cn", "<p>", "</div>", "&amp;", "<!-- c -->", "/* Copyright */",
    "\\section{A}", "$x^2$", "中文。", "ｆｕｌｌ", "😊", "👨\u200d👩\u200d👧", "\u200b", "\ufeff", "\x00", "\r\n",
    "\n\n", "\t", "\u2028", "lorem ipsum", "{", "。", "…", "  ", "References\n[1] A.", "·", "e\u0301", "\u202e",
])
TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=300),
    st.lists(st.one_of(PIECES, st.text(ANY_CHAR, max_size=12)), max_size=40).map("".join),
)
PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow],
)
# ~20 K characters each: a linear operator handles them in well under a second; a backtracking regex
# (quadratic or worse) does not finish, and the timeout below names the operator.
PATHOLOGICAL = [
    "a" * 20_000, "1" * 20_000, "1 " * 10_000, "@" * 20_000, "a@" * 10_000, "." * 20_000, "a." * 10_000,
    "<" * 20_000, "<a " * 7_000, "http://" + "a" * 20_000 + ".", "http://" + "a(" * 10_000, "www." + "a." * 10_000,
    "-" * 20_000, "\n" * 20_000, " " * 20_000, "😊" * 10_000, "中" * 20_000, "a-" * 10_000, "1-" * 10_000,
    "1." * 10_000, ("word " * 5 + "\n") * 1_000, "+1 (" * 5_000, "[1]" * 7_000, "$" * 20_000, "\\" * 20_000,
    "/*" * 10_000, "a_b." * 5_000, "x@y." * 5_000, "1:" * 10_000, "ab:" * 7_000,
]


def utf8_text(value: object) -> bool:
    if not isinstance(value, str):
        return False
    value.encode("utf-8")  # raises on a lone surrogate
    return True


@pytest.mark.parametrize("name", MAPPERS)
@PROPERTY_SETTINGS
@given(text=TEXT)
def test_mapper_returns_valid_text_for_any_unicode(name, text):
    op = build_operator(name)
    result = op.process_text(text)
    assert utf8_text(result), f"{name} returned {type(result).__name__}"
    assert op.process_text(text) == result, f"{name} is not deterministic"
    doc = {"text": text, "doc_id": "d"}
    assert op.process(doc) == {"text": result, "doc_id": "d"}
    assert doc == {"text": text, "doc_id": "d"}, f"{name} changed its input document"


@pytest.mark.parametrize("name", FILTERS)
@PROPERTY_SETTINGS
@given(text=TEXT)
def test_filter_never_changes_text_and_explains_drops(name, text):
    op = build_operator(name)
    doc = {"text": text, "doc_id": "d", "meta": {"k": [1]}}
    before = copy.deepcopy(doc)
    result = op.check(doc)
    assert doc == before, f"{name} changed the document it checked"
    assert isinstance(result.keep, bool)
    assert result.keep == (result.reason == ""), f"{name}: a drop needs a reason, a keep has none"
    for stat, value in result.stats.items():
        assert isinstance(value, str) or (isinstance(value, int | float) and not math.isnan(value)), (name, stat)
    assert op.compute_stats_batch([text]) == [result.stats]


@pytest.mark.parametrize("name", DEDUPLICATORS)
@PROPERTY_SETTINGS
@given(texts=st.lists(TEXT, max_size=8))
def test_deduplicator_accounts_for_every_document(name, texts):
    op = build_operator(name)
    docs = [{"text": text, "n": i} for i, text in enumerate(texts + texts[:2])]  # some exact repeats
    kept, dropped = op.deduplicate(copy.deepcopy(docs))
    assert len(kept) + len(dropped) == len(docs)
    assert sorted(d["n"] for d in kept) + sorted(d["n"] for d, _ in dropped) != [] or not docs
    assert sorted([d["n"] for d in kept] + [d["n"] for d, _ in dropped]) == list(range(len(docs)))
    assert all(reason for _, reason in dropped)
    for doc in kept:
        assert doc == docs[doc["n"]], f"{name} changed a kept document"


@pytest.mark.parametrize("name", [*MAPPERS, *FILTERS, *DEDUPLICATORS])
@pytest.mark.timeout(120)
def test_operator_survives_pathological_inputs(name):
    op = build_operator(name)
    for text in PATHOLOGICAL:
        if isinstance(op, Mapper):
            assert utf8_text(op.process_text(text))
        elif isinstance(op, Filter):
            stats = op.compute_stats(text)
            assert isinstance(op.keep(stats)[0], bool)
        else:
            op.fingerprint(text)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(st.one_of(TEXT, st.none()), min_size=1, max_size=12))
def test_recipe_of_every_operator_keeps_or_drops_each_document_once(texts):
    # Lenient thresholds so documents survive long enough to meet every operator.
    recipe = Recipe.from_process([{name: {}} for name in MAPPERS] + [{"document_deduplicator": {}}])
    table = pa.table({"doc_id": [f"d{i}" for i in range(len(texts))], "text": pa.array(texts, pa.string())})
    result = run_local(recipe, table)
    assert result.kept.num_rows + result.drops.num_rows == len(texts)
    ids = result.kept.column("doc_id").to_pylist() + result.drops.column("doc_id").to_pylist()
    assert sorted(ids) == sorted(table.column("doc_id").to_pylist())
    assert all(utf8_text(t) for t in result.kept.column("text").to_pylist())
    assert all(result.drops.column("reason").to_pylist())
