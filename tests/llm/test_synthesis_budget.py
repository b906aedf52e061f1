"""Token and cost budgets: a stage stops cleanly at its budget, commits what it has, says so, and the next
materialization resumes from the cache without paying again. Against a scripted endpoint, because the point
is the arithmetic: every call costs exactly 100 prompt + 20 completion tokens."""

import json

import dagster as dg
import pytest

from datamate_assets import evaluation, synthesis
from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec
from datamate_resources import tables
from datamate_resources.io_manager import DeltaIOManager
from datamate_resources.storage import ObjectStore
from tests.llm import scripted_llm
from tests.llm.conftest import Scripted, openai_resource
from tests.llm.test_synthesis_assets import chunk_table, make_spec, materialize, output_metadata

PRICES = {scripted_llm.MODEL: {"input_per_million": 1000.0, "output_per_million": 2000.0}}
RUBRIC = {1: "useless", 2: "weak", 3: "partial", 4: "good", 5: "complete"}
CALL_COST = (100 * 1000.0 + 20 * 2000.0) / 1e6  # 0.14 USD


@pytest.fixture
def storage(tmp_path) -> ObjectStore:
    store = ObjectStore(url=f"file://{tmp_path / 'storage'}")
    tables.write(store, "synth_test", "chunks", chunk_table())
    return store


def resource(scripted: Scripted):
    # One request in flight, so the budget is checked between calls and the count is exact.
    return openai_resource(scripted.base_url, model=scripted_llm.MODEL, max_concurrency=1, prices=PRICES)


@pytest.mark.parametrize("budget", [{"max_tokens": 150}, {"max_cost": 0.2}])
def test_budget_stops_cleanly_and_the_next_run_resumes_from_the_cache(storage, scripted, budget):
    spec = make_spec(kinds=["qa"], max_records=3, budget=budget)
    llm = resource(scripted)
    first = materialize(spec, storage, llm)
    assert first.success
    meta = output_metadata(first)
    # The first call (120 tokens, 0.14 USD) is under the budget, so a second is made; then the budget is spent.
    assert (meta["llm_calls"], meta["llm_budget_stopped"], meta["records_kept"]) == (2, 1, 2)
    assert (meta["llm_input_tokens"], meta["llm_output_tokens"]) == (200, 40)
    assert meta["llm_cost_usd"] == pytest.approx(2 * CALL_COST)
    assert "Budget reached" in meta["llm_budget_reached"] and "1 requests were not sent" in meta["llm_budget_reached"]
    drops = tables.read_stage(storage, "synth_test", "synthesized_drops").to_pylist()
    assert [d["reason"] for d in drops] == ["budget reached"]
    assert tables.read_stage(storage, "synth_test", "synthesized").num_rows == 2  # committed what it had

    # Without the budget, the next materialization pays only for the request it did not send.
    resumed = output_metadata(materialize(make_spec(kinds=["qa"], max_records=3), storage, llm))
    assert (resumed["llm_calls"], resumed["llm_cache_hits"], resumed["records_kept"]) == (1, 2, 3)
    assert resumed["llm_cost_usd"] == pytest.approx(CALL_COST) and "llm_budget_reached" not in resumed
    assert scripted.calls() == 3
    # Each prompt went as one user message (a bare string once became one message per character).
    prompts = [json.loads(line)["prompt"] for line in scripted.journal.read_text().splitlines()]
    assert all(p.startswith("Read the passage below") and "Passage:" in p for p in prompts), prompts[0][:80]

    # Every materialization's usage is a row of the table the dbt reports read.
    usage = sorted(tables.read_stage(storage, "synth_test", "llm_usage").to_pylist(), key=lambda u: u["recorded_at"])
    assert [(u["stage"], u["calls"], u["cache_hits"], u["budget_stopped"]) for u in usage] == [
        ("synthesized", 2, 0, 1), ("synthesized", 1, 2, 0)]
    assert sum(u["cost_usd"] for u in usage) == pytest.approx(3 * CALL_COST)
    assert sum(u["input_tokens"] + u["output_tokens"] for u in usage) == 3 * 120


@pytest.mark.parametrize("budget", [{"max_tokens": 400}, {"max_cost": 0.5}])
def test_a_run_budget_spans_the_llm_stages_of_one_run(storage, scripted, budget):
    """The dataset's `budget` bounds one run: synthesis spends 3 calls (360 tokens, 0.42 USD), so evaluation, later
    in the same run, has 40 tokens (0.08 USD) left: its first call is made, then the run's budget is spent."""
    spec = DatasetSpec.model_validate({
        "name": "synth_test", "sources": [{"type": "folder", "path": "unused"}], "index": {}, "budget": budget,
        "synthesis": {"kinds": ["qa"], "max_records": 3},
        "evaluation": {"max_judged": 3, "judge_dimensions": [{"name": "helpful", "description": "It helps",
                                                              "rubric": RUBRIC}]},
    })
    llm = resource(scripted)

    def run() -> tuple[dg.ExecuteInProcessResult, dict, dict]:
        result = dg.materialize(
            [dg.AssetSpec(key(spec, "chunks")), *synthesis.build_defs(spec).assets,
             *evaluation.build_defs(spec).assets],
            selection=[key(spec, "synthesized"), key(spec, "evaluation")],
            resources={"llm": llm, "storage": storage, "io_manager": DeltaIOManager(storage=storage)},
        )
        assert result.success
        meta = {e.asset_key.path[-1]: {n: v.value for n, v in e.materialization.metadata.items()}
                for e in result.get_asset_materialization_events()}
        return result, meta["synthesized"], meta["evaluation"]

    first, synthesized, evaluated = run()
    assert (synthesized["llm_calls"], synthesized["llm_budget_stopped"], synthesized["records_kept"]) == (3, 0, 3)
    assert synthesized["llm_run_tokens"] == 360 and "llm_budget_reached" not in synthesized
    assert (evaluated["judge_llm_calls"], evaluated["judge_llm_budget_stopped"], evaluated["judged"]) == (1, 2, 1)
    assert evaluated["judge_llm_run_tokens"] == 480
    assert evaluated["judge_llm_run_cost_usd"] == pytest.approx(4 * CALL_COST)
    note = evaluated["judge_llm_budget_reached"]
    assert "the run's" in note and "earlier stages of this run spent 360 tokens / 0.4200 USD" in note
    assert "the stage's" not in note and "2 requests were not sent" in note
    judged = tables.read_stage(storage, "synth_test", "evaluation").to_pylist()
    assert sorted(str(row["error"]) for row in judged) == ["None", "rubric helpful: budget reached",
                                                           "rubric helpful: budget reached"]  # committed, says why
    usage = tables.read_stage(storage, "synth_test", "llm_usage").to_pylist()
    assert {(u["stage"], u["run_id"], u["calls"]) for u in usage} == {
        ("synthesized", first.run_id, 3), ("evaluation", first.run_id, 1)}

    # A new run has a budget of its own: synthesis is all cache hits, the judge pays for the two it did not send.
    second, synthesized, evaluated = run()
    assert (synthesized["llm_calls"], synthesized["llm_cache_hits"], synthesized["llm_run_tokens"]) == (0, 3, 0)
    assert (evaluated["judge_llm_calls"], evaluated["judge_llm_cache_hits"], evaluated["judged"]) == (2, 1, 3)
    assert evaluated["judge_llm_run_tokens"] == 240 and "judge_llm_budget_reached" not in evaluated
    assert scripted.calls() == 3 + 1 + 2


def test_the_run_spend_counts_only_this_runs_rows(storage):
    from datamate_resources.llm import LLMUsage, record_usage, run_spend

    for run_id, tokens in (("run-a", 100), ("run-b", 7), ("run-a", 20)):
        record_usage(storage, "synth_test", "synthesized", run_id,
                     LLMUsage(model="m", input_tokens=tokens, output_tokens=1, cost_usd=tokens / 1000))
    spend = run_spend(storage, "synth_test", "run-a")
    assert (spend.tokens, spend.cost_usd) == (122, pytest.approx(0.12))
    assert run_spend(storage, "synth_test", "run-c").tokens == 0
    assert run_spend(storage, "no_such_dataset", "run-a").tokens == 0
