import json
import pickle

import pytest
from pydantic import Field

from datamate_assets.cli import main as datamate
from operators import (
    Filter,
    Mapper,
    OperatorConfigError,
    OperatorParams,
    build_operator,
    catalogue,
    get_operator_class,
    register,
    registry,
)
from operators.base import SplitMapper
from operators.registry import registered

TEXT_OPERATORS = sorted(name for name, cls in registered().items() if cls.kind in ("mapper", "filter"))
SAMPLE = (
    "Contact me at jane.doe@example.org or +44 20 7946 0958.  Visit https://example.org/a?b=1 now!\n"
    "Ünïcödé ｆｕｌｌｗｉｄｔｈ text\u200b with emoji 😊 and a tab\tand more words here.\n"
    "The same sentence twice. The same sentence twice."
)


def test_catalogue_has_at_least_32_text_operators_with_described_parameters():
    entries = [entry for entry in catalogue() if entry["kind"] in ("mapper", "filter")]
    assert len(entries) >= 32
    for entry in entries:
        assert entry["description"], entry["name"]
        for param in entry["params"]:
            assert param["description"], (entry["name"], param["name"])
            assert param["type"]


@pytest.mark.parametrize("name", TEXT_OPERATORS)
def test_every_operator_builds_with_defaults_handles_edge_cases_and_pickles(name):
    op = build_operator(name)
    clone = pickle.loads(pickle.dumps(op))
    for text in ("", " ", "😊", "中文文本。", SAMPLE):
        if isinstance(op, SplitMapper):  # one text in, a list out
            pieces = op.split_text(text)
            assert all(isinstance(piece, str) for piece in pieces) and clone.split_text(text) == pieces
            assert op.process({"text": text, "doc_id": "d1"}) == [{"text": p, "doc_id": "d1"} for p in pieces]
        elif op.kind == "mapper":
            result = op.process_text(text)
            assert isinstance(result, str)
            assert clone.process_text(text) == result
            assert op.process({"text": text, "doc_id": "d1"}) == {"text": result, "doc_id": "d1"}
        else:
            stats = op.compute_stats(text)
            kept, reason = op.keep(stats)
            assert kept == (reason == "")
            assert clone.compute_stats(text) == stats
            assert op.compute_stats_batch([text, text]) == [stats, stats]


def test_unknown_operator_lists_close_names():
    with pytest.raises(OperatorConfigError, match="clean_email_mapper") as error:
        build_operator("clean_emial_mapper")
    assert error.value.operator == "clean_emial_mapper" and error.value.parameter is None


def test_bad_parameters_fail_fast_naming_operator_parameter_and_reason():
    with pytest.raises(OperatorConfigError) as error:
        build_operator("text_length_filter", {"min_length": 5})
    assert error.value.parameter == "min_length"
    assert "did you mean min_len" in error.value.reason
    with pytest.raises(OperatorConfigError, match="parameter 'min_len'.*integer"):
        build_operator("text_length_filter", {"min_len": "ten"})
    with pytest.raises(OperatorConfigError, match="parameter 'pattern'.*invalid regular expression"):
        build_operator("clean_email_mapper", {"pattern": "[a-"})
    with pytest.raises(OperatorConfigError, match="2 pattern.*1 replacement"):
        build_operator("replace_content_mapper", {"pattern": ["a", "b"], "repl": ["x"]})
    with pytest.raises(OperatorConfigError, match="parameter 'lang'"):
        build_operator("language_id_score_filter", {"lang": "xx"})
    with pytest.raises(OperatorConfigError, match="mapping"):
        build_operator("text_length_filter", ["min_len", 3])


def test_text_key_is_configurable_per_operator():
    op = build_operator("clean_email_mapper", {"text_key": "content"})
    assert op.process({"content": "a@b.com x"}) == {"content": " x"}
    assert build_operator("text_length_filter", text_key="body").check({"body": "short"}).reason == "text_len 5 < 10"


def test_register_a_new_operator_and_use_it_from_a_recipe_entry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # keep the test operator out of others

    @register("test_upper_mapper")
    class UpperMapper(Mapper):
        """Upper-case the text."""

        class Params(OperatorParams):
            only_first: bool = Field(False, description="Upper-case the first character only.")

        def process_text(self, text):
            return text[:1].upper() + text[1:] if self.params.only_first else text.upper()

    assert get_operator_class("test_upper_mapper") is UpperMapper
    assert build_operator("test_upper_mapper", {"only_first": True}).process_text("abc") == "Abc"
    with pytest.raises(ValueError, match="already registered"):
        register("test_upper_mapper")(type("Other", (UpperMapper,), {}))
    with pytest.raises(TypeError):
        register("not_an_operator")(dict)


def test_filter_check_reports_reason_and_stats():
    op = build_operator("words_num_filter", {"min_num": 3})
    assert op.check({"text": "two words"}).reason == "num_words 2 < 3"
    result = op.check({"text": "now three words"})
    assert result.keep and result.stats == {"num_words": 3}
    assert issubclass(type(op), Filter)


def test_cli_ops_list_prints_catalogue(capsys):
    assert datamate(["ops", "list"]) == 0
    text = capsys.readouterr().out
    assert "clean_email_mapper  [mapper]" in text
    assert "min_len: int (default 10)" in text
    assert datamate(["ops", "list", "--json", "--kind", "filter"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert {entry["kind"] for entry in entries} == {"filter"}
    text_length = next(entry for entry in entries if entry["name"] == "text_length_filter")
    assert text_length["params"][0] == {
        "name": "min_len", "type": "int", "default": 10, "required": False,
        "description": "Fewest characters to keep a text.",
    }
