"""Plain-Python parts of synthesis: templates, output schemas -> rows, JSONL exports."""

import json
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from operators.synthesis import (
    DEFAULT_TEMPLATES,
    SYNTHESIZED_COLUMNS,
    MethodSettings,
    SynthesisRequest,
    Synthesizer,
    alpaca_jsonl,
    chat_jsonl,
    output_schema,
    plan_requests,
    resolve_template,
    to_records,
)


@pytest.mark.parametrize("language", ["en", "zh"])
@pytest.mark.parametrize("kind", ["qa", "cot_qa", "instruction"])
def test_default_templates_render_the_chunk_and_count(kind, language):
    template = resolve_template(kind, language)
    prompt = template.render(text="Debian uses {braces} in apt.", count=3)
    assert "Debian uses {braces} in apt." in prompt
    assert "3" in prompt
    assert template.version.startswith(f"{kind}-{language}-")


def test_overriding_a_template_changes_its_version():
    default = resolve_template("qa", "en")
    custom = resolve_template("qa", "en", override="Write {count} questions about:\n{text}")
    assert custom.version != default.version
    assert custom.render(text="T", count=2) == "Write 2 questions about:\nT"
    assert DEFAULT_TEMPLATES["en"]["qa"] == default.text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("no chunk here {count}", "must use {text}"),
        ("{text} and {unknown}", "'unknown'"),
        ("{text} and {", "not a valid f-string"),
    ],
)
def test_bad_template_overrides_are_rejected_with_the_kind(override, message):
    with pytest.raises(ValueError, match="'qa'") as error:
        resolve_template("qa", "en", override=override)
    assert message in str(error.value)


def test_unknown_kind_and_language_are_rejected():
    with pytest.raises(ValueError, match="kind 'summary'"):
        resolve_template("summary")
    with pytest.raises(ValueError, match="language 'fr'"):
        resolve_template("qa", "fr")


def _rows(kind, payload):
    output = output_schema(kind, 10).model_validate(payload)
    return to_records(kind, output, doc_id="d1", chunk_id="c1", model="m", template_version="v1")


def test_records_keep_lineage_and_map_every_kind_onto_one_table():
    qa = _rows("qa", {"items": [{"question": " Q1 ", "answer": "A1"}, {"question": "Q2", "answer": "A2"}]})
    cot = _rows("cot_qa", {"items": [{"question": "Q", "reasoning": "R", "answer": "A"}]})
    instruction = _rows("instruction", {"items": [{"instruction": "Explain apt", "response": "apt is..."}]})
    for row in qa + cot + instruction:
        assert tuple(row) == SYNTHESIZED_COLUMNS
        assert (row["doc_id"], row["chunk_id"], row["model"], row["template_version"]) == ("d1", "c1", "m", "v1")
    assert [r["question"] for r in qa] == ["Q1", "Q2"]
    assert cot[0]["reasoning"] == "R"
    assert (instruction[0]["question"], instruction[0]["answer"], instruction[0]["reasoning"]) == (
        "Explain apt", "apt is...", "",
    )
    # Same content, same id: re-runs are idempotent; different content, different id.
    assert qa[0]["record_id"] == _rows("qa", {"items": [{"question": "Q1", "answer": "A1"}]})[0]["record_id"]
    assert qa[0]["record_id"] != qa[1]["record_id"]


def test_output_schema_bounds_the_number_of_items():
    schema = output_schema("qa", 2)
    assert schema.model_json_schema()["properties"]["items"]["maxItems"] == 2
    with pytest.raises(ValidationError):
        schema.model_validate({"items": []})
    with pytest.raises(ValidationError):
        schema.model_validate({"items": [{"question": "Q", "answer": "A"}] * 3})


def test_records_skip_items_with_an_empty_field():
    payload = {"items": [{"question": " ", "answer": "A0"}, {"question": "Q1", "answer": "A1"}]}
    assert [r["question"] for r in _rows("qa", payload)] == ["Q1"]


def test_an_item_left_empty_is_set_aside_with_the_reason():
    schema = output_schema("qa", 2)
    answer = SimpleNamespace(ok=True, error=None, value=schema.model_validate(
        {"items": [{"question": " ", "answer": "A0"}, {"question": "Q1", "answer": "A1"}]}))
    synthesizer = Synthesizer(generate=lambda prompts, _: [answer] * len(prompts),
                              templates={"qa": resolve_template("qa")}, model="m",
                              settings=MethodSettings(per_chunk=2))
    synthesizer.run("qa", [SynthesisRequest("qa", "c1", "d1", "A passage.")])
    assert [r["question"] for r in synthesizer.rows] == ["Q1"]
    assert [(d["operator"], d["chunk_id"]) for d in synthesizer.drops] == [("empty_field", "c1")]


def test_exports_are_jsonl_in_alpaca_and_openai_chat_shapes():
    rows = [
        {"question": "Q", "answer": "A", "reasoning": ""},
        {"question": "为什么?", "answer": "因为", "reasoning": "先想一想"},
    ]
    alpaca = [json.loads(line) for line in alpaca_jsonl(rows).decode().splitlines()]
    assert alpaca == [
        {"instruction": "Q", "input": "", "output": "A"},
        {"instruction": "为什么?", "input": "", "output": "先想一想\n\n因为"},
    ]
    chat_lines = chat_jsonl(rows, system_prompt="Be brief.").decode().splitlines()
    assert "为什么" in chat_lines[1]  # UTF-8, not \u escapes
    chat = [json.loads(line) for line in chat_lines]
    assert chat[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
    ]
    assert [m["role"] for m in json.loads(chat_jsonl(rows[:1]))["messages"]] == ["user", "assistant"]


def _chunk(doc, position, text="some text"):
    return {"chunk_id": f"{doc}-{position}", "doc_id": doc, "position": position, "text": text}


def test_plan_covers_first_chunks_of_every_document_and_alternates_kinds():
    chunks = [_chunk(doc, position) for doc in ("a", "b", "c") for position in range(3)]
    requests, skipped = plan_requests(chunks, ["qa", "instruction"], per_chunk=2, max_records=7)
    assert len(requests) == 4  # ceil(7 / 2)
    assert [(r.chunk_id, r.kind) for r in requests] == [
        ("a-0", "qa"), ("b-0", "instruction"), ("c-0", "qa"), ("a-1", "instruction"),
    ]
    assert not skipped


def test_plan_asks_a_chunk_for_another_kind_only_when_chunks_run_out_and_counts_skips():
    chunks = [_chunk("a", 0), _chunk("a", 1, text=""), _chunk("b", 0)]
    requests, skipped = plan_requests(
        chunks, ["qa", "cot_qa"], per_chunk=1, max_records=10,
        skip_reason=lambda chunk: "empty" if not chunk["text"] else None,
    )
    assert [(r.chunk_id, r.kind) for r in requests] == [
        ("a-0", "qa"), ("b-0", "cot_qa"), ("a-0", "cot_qa"), ("b-0", "qa"),
    ]
    assert skipped == {"empty": 1}
