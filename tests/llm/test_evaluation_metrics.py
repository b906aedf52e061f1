"""Heuristic metrics and the judge's prompt/schema (no model involved)."""

import pytest
from pydantic import ValidationError

from operators.evaluation import (
    DEFAULT_DIMENSIONS,
    DEFAULT_JUDGE_TEMPLATES,
    JudgeDimension,
    distinct_n,
    duplicate_rate,
    flagged_word_rate,
    funnel,
    judge_schema,
    judge_template_version,
    label_distribution,
    language_mix,
    length_stats,
    pass_rates,
    render_judge_prompt,
    verdict_rows,
)
from operators.evaluation.metrics import tokens


def test_funnel_shares_follow_the_stage_order():
    rows = funnel({"collected": 10, "cleaned": 8, "chunks": 40, "synthesized": 0})
    assert [r["stage"] for r in rows] == ["collected", "cleaned", "chunks", "synthesized"]
    assert rows[0]["kept_from_previous"] is None
    assert rows[1]["kept_from_previous"] == 0.8
    assert rows[2]["kept_from_first"] == 4.0
    assert rows[3]["kept_from_previous"] == 0.0


def test_tokens_are_words_for_latin_and_characters_for_cjk():
    assert tokens("Install apt-get, 安装软件!") == ["install", "apt", "get", "安", "装", "软", "件"]


def test_length_stats():
    stats = length_stats(["one two three", "one", "a b c d e"])
    assert (stats["count"], stats["min"], stats["max"], stats["p50"]) == (3, 1, 5, 3.0)
    assert length_stats([]) == {"count": 0}


def test_distinct_n():
    assert distinct_n(["a b a b"], 1) == 0.5
    assert distinct_n(["a b c", "a b d"], 2) == 3 / 4
    assert distinct_n(["a"], 2) == 0.0


def test_duplicate_rate_ignores_case_width_and_spacing():
    assert duplicate_rate(["Hello  world", "hello world", "ＨＥＬＬＯ world", "other"]) == 0.5
    assert duplicate_rate([]) == 0.0


def test_language_mix_and_label_distribution():
    mix = language_mix([
        "The package manager installs software and resolves dependencies automatically.",
        "Le gestionnaire de paquets installe les logiciels et résout les dépendances.",
        "软件包管理器会自动安装软件并解决依赖关系。",
    ])
    assert mix == {"en": 1, "fr": 1, "zh": 1}
    assert label_distribution(["a", "b", "a", None]) == {"a": 2, "b": 1, "(none)": 1}


def test_flagged_word_rate_matches_whole_words_and_phrases():
    rate, hits = flagged_word_rate(
        ["You IDIOT.", "idiotic is not the word", "this is a scam site", "这是赌博网站", "clean"],
        ["idiot", "scam site", "赌博"],
    )
    assert rate == 3 / 5
    assert hits == {"idiot": 1, "scam site": 1, "赌博": 1}
    assert flagged_word_rate(["x"], []) == (0.0, {})


def test_judge_schema_requires_every_user_dimension_under_its_own_name():
    dimensions = [JudgeDimension(name="faithful", description="Supported by the passage"),
                  JudgeDimension(name="问题是否独立", description="问题脱离原文也能看懂")]
    schema = judge_schema(dimensions)
    json_schema = schema.model_json_schema()
    assert set(json_schema["required"]) == {"faithful", "问题是否独立", "score"}
    assert json_schema["properties"]["faithful"]["description"] == "Supported by the passage"

    result = schema.model_validate({
        "faithful": {"verdict": "yes", "reason": "It is in the text."},
        "问题是否独立": {"verdict": "N", "reason": "说了“根据文本”"},
        "score": 3,
    })
    assert verdict_rows(result, dimensions) == [
        {"dimension": "faithful", "verdict": "Y", "reason": "It is in the text."},
        {"dimension": "问题是否独立", "verdict": "N", "reason": "说了“根据文本”"},
    ]
    with pytest.raises(ValidationError):  # a dimension left out is not a pass
        schema.model_validate({"faithful": {"verdict": "Y", "reason": ""}, "score": 3})
    with pytest.raises(ValidationError):
        schema.model_validate({**result.model_dump(by_alias=True), "score": 6})
    with pytest.raises(ValueError, match="unique"):
        judge_schema([dimensions[0], dimensions[0]])


def test_judge_prompt_lists_dimensions_and_the_record_with_its_source():
    dimensions = DEFAULT_DIMENSIONS["en"]
    record = {"question": "What is {apt}?", "answer": "A tool.", "reasoning": "Step 1."}
    prompt = render_judge_prompt(DEFAULT_JUDGE_TEMPLATES["en"], dimensions, record, source="apt is a tool")
    for dimension in dimensions:
        assert f"- {dimension.name}: {dimension.description}" in prompt
    assert "Source passage: apt is a tool" in prompt and "What is {apt}?" in prompt and "Step 1." in prompt
    edited = [*dimensions[:-1], JudgeDimension(name="fluent", description="Reads well to a native speaker.")]
    assert judge_template_version(DEFAULT_JUDGE_TEMPLATES["en"], edited) != judge_template_version(
        DEFAULT_JUDGE_TEMPLATES["en"], dimensions
    )


def test_pass_rates_per_dimension():
    rows = [{"dimension": "a", "verdict": "Y"}, {"dimension": "a", "verdict": "N"}, {"dimension": "b", "verdict": "Y"}]
    assert pass_rates(rows) == {"a": 0.5, "b": 1.0}
