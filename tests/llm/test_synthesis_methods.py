"""The richer synthesis kinds (evol_instruct, self_instruct, multi_turn, preference) against the packaged model
served on loopback: schema-valid records with provenance, or a reason for each request set aside."""

import json

import pyarrow as pa
import pytest

from datamate_resources import tables
from datamate_resources.storage import ObjectStore
from operators.synthesis import SYNTHESIZED_COLUMNS
from operators.synthesis.methods import NoveltyFilter, evol_elimination_reason
from tests.llm.conftest import openai_resource
from tests.llm.test_synthesis_assets import PASSAGES, chunk_table, make_spec, materialize, output_metadata

CRON = ("cron runs commands on a schedule on Debian. Each user has a crontab, edited with crontab -e, where a "
        "line such as 0 3 * * * /usr/local/bin/backup runs the backup script every night at three o'clock; the "
        "system-wide jobs live in /etc/crontab and in the /etc/cron.d directory.")
SEEDS = ["Explain how to list the installed packages.", "Write a short guide to adding a new user account.",
         "Compare two ways of restarting a network service."]


@pytest.fixture
def storage(tmp_path):
    store = ObjectStore(url=f"file://{tmp_path / 'storage'}")
    chunks = chunk_table().to_pylist() + [{**chunk_table().to_pylist()[0], "chunk_id": "chunk-cron",
                                           "doc_id": "doc-cron", "text": CRON, "source_uri": "file:///cron.txt"}]
    tables.write(store, "synth_test", "chunks", pa.Table.from_pylist(chunks))
    return store


# 61 s at load 6 (7 min before synthesis prompts went as one message instead of one per character).
@pytest.mark.timeout(2400)
def test_every_new_kind_gives_schema_valid_records_with_provenance_and_reruns_from_cache(storage, llm_server,
                                                                                          tmp_path):
    seed_file = tmp_path / "seeds.jsonl"
    seed_file.write_text("".join(json.dumps({"instruction": s}) + "\n" for s in SEEDS), encoding="utf-8")
    spec = make_spec(kinds=["evol_instruct", "self_instruct", "multi_turn", "preference"], max_records=4,
                     evol_instruct={"rounds": 1}, multi_turn={"turns": 2}, preference={"candidates": 2},
                     self_instruct={"seed_file": str(seed_file)},
                     export_formats=["openai_chat", "dpo", "sharegpt"])
    llm = openai_resource(llm_server, max_tokens=300)
    first = materialize(spec, storage, llm)
    assert first.success
    meta = output_metadata(first)
    kept = tables.read_stage(storage, "synth_test", "synthesized").to_pylist()
    drops = tables.read_stage(storage, "synth_test", "synthesized_drops").to_pylist()
    print("kept", json.dumps(kept, ensure_ascii=False, indent=1), "\ndrops", [(d["kind"], d["reason"]) for d in drops])
    assert meta["requests"] == 4
    chunk_ids = {f"chunk-{name}" for name in PASSAGES} | {"chunk-cron"}
    for row in kept:
        assert tuple(row) == SYNTHESIZED_COLUMNS and row["question"] and row["answer"]
        assert row["chunk_id"] in chunk_ids and row["chunks_version"] == 0 and len(row["prompt_hash"]) == 16
        assert row["model"] == llm.model_name and row["template_version"]
        if row["kind"] == "evol_instruct":
            assert row["parent_id"] and row["template_version"].startswith(("evol_depth-en-", "evol_breadth-en-"))
        if row["kind"] == "multi_turn":
            messages = json.loads(row["conversation"])
            assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
            assert len(messages) >= 4 and messages[0]["content"] == row["question"]
        if row["kind"] == "preference":
            assert row["rejected"] and row["chosen_rating"] > row["rejected_rating"]
    # Every kind either gave a record or was set aside with the reason (a 135M model may tie its candidates).
    for kind in ("evol_instruct", "self_instruct", "multi_turn", "preference"):
        assert any(r["kind"] == kind for r in kept) or any(d["kind"] == kind and d["reason"] for d in drops), kind
    assert meta["llm_calls"] >= 9 and meta["llm_input_tokens"] > 0 and meta["llm_output_tokens"] > 0

    again = output_metadata(materialize(spec, storage, llm))
    assert again["llm_calls"] == 0 and again["records_kept"] == meta["records_kept"]


def test_evol_instruct_elimination_rules():
    assert "copies the evolving prompt" in evol_elimination_reason(
        "List packages.", "#Rewritten Prompt#: list all packages", "dpkg -l lists them.")
    assert "no information gain" in evol_elimination_reason("List the packages.", "List the packages!", "dpkg -l")
    assert "refusal" in evol_elimination_reason("List packages.", "List packages installed in May 2001 by root.",
                                                "Sorry, I cannot know that.")
    assert "stop words" in evol_elimination_reason("List packages.", "List packages installed by root.", "it is. the")
    assert evol_elimination_reason("List packages.", "List packages installed by root, newest first.",
                                   "Run dpkg-query with --showformat and sort by install time.") is None


def test_self_instruct_novelty_filter_uses_rouge_l_against_everything_kept():
    novelty = NoveltyFilter(SEEDS, max_rouge_l=0.7)
    assert "ROUGE-L" in novelty.reject_reason("Explain how to list all the installed packages.")
    assert novelty.reject_reason("Describe what the cron daemon does every night.") is None
    assert "ROUGE-L" in novelty.reject_reason("Describe what the cron daemon does each night.")  # close to the kept one
    assert novelty.reject_reason("Hi") == "fewer than 3 words"
