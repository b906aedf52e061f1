"""The LLM topic labeler under budgets, like synthesis and evaluation (`test_synthesis_budget.py`): its usage goes
to the metadata and to `llm_usage` (stage `annotated`), a stage or run budget stops it cleanly with the topics it
did not ask for left null, and the next materialization labels them, paying only for those. Against the scripted
endpoint: every call costs exactly 100 prompt + 20 completion tokens, 0.14 USD."""

import json

import dagster as dg
import pyarrow as pa
import pytest
from pydantic import ValidationError

from datamate_assets import annotation, evaluation, synthesis
from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec
from datamate_resources import tables
from datamate_resources.embeddings import EmbeddingsResource
from datamate_resources.io_manager import DeltaIOManager
from datamate_resources.storage import ObjectStore
from tests.llm.test_annotation_assets import DOCS, TOPICS
from tests.llm.test_synthesis_assets import chunk_table
from tests.llm.test_synthesis_budget import CALL_COST, RUBRIC, resource

DATASET = "synth_test"


@pytest.fixture
def storage(tmp_path) -> ObjectStore:
    store = ObjectStore(url=f"file://{tmp_path / 'storage'}")
    tables.write(store, DATASET, "cleaned", pa.table({"doc_id": list(DOCS), "text": list(DOCS.values())}))
    tables.write(store, DATASET, "chunks", chunk_table())
    return store


def make_spec(annotation_budget: dict | None = None, run_budget: dict | None = None, **sections) -> DatasetSpec:
    return DatasetSpec.model_validate({
        "name": DATASET, "sources": [{"type": "folder", "path": "unused"}], "budget": run_budget,
        "annotation": {"labels": TOPICS, "labeler": "llm", "budget": annotation_budget}, **sections,
    })


def materialize(spec: DatasetSpec, storage: ObjectStore, llm, stages: list[str]) -> tuple[str, dict[str, dict]]:
    """Materialize `stages` in one run; (run id, stage → its metadata values)."""
    assets = [dg.AssetSpec(key(spec, "cleaned")), dg.AssetSpec(key(spec, "chunks")),
              *annotation.build_defs(spec).assets]
    if spec.evaluation:
        assets += [*synthesis.build_defs(spec).assets, *evaluation.build_defs(spec).assets]
    result = dg.materialize(assets, selection=[key(spec, s) for s in stages], resources={
        "llm": llm, "storage": storage, "io_manager": DeltaIOManager(storage=storage),
        "embeddings": EmbeddingsResource()})
    assert result.success
    return result.run_id, {e.asset_key.path[-1]: {n: v.value for n, v in e.materialization.metadata.items()}
                           for e in result.get_asset_materialization_events()}


@pytest.mark.parametrize("budget", [{"max_tokens": 150}, {"max_cost": 0.2}])
def test_a_stage_budget_leaves_topics_null_and_the_next_run_labels_them_from_the_cache(storage, scripted, budget):
    llm = resource(scripted)
    first_run, meta = materialize(make_spec(annotation_budget=budget), storage, llm, ["annotated"])
    meta = meta["annotated"]
    # The first call (120 tokens, 0.14 USD) is under the budget, so a second is made; then the budget is spent.
    assert (meta["llm_calls"], meta["llm_budget_stopped"], meta["topic_budget_stopped"]) == (2, 1, 1)
    assert (meta["documents"], meta["topic_failed"]) == (3, 0)  # held back is not failed
    assert (meta["llm_input_tokens"], meta["llm_output_tokens"]) == (200, 40)
    assert meta["llm_cost_usd"] == pytest.approx(2 * CALL_COST)
    note = meta["llm_budget_reached"]
    assert "the stage's" in note and "the run's" not in note and "1 requests were not sent" in note
    rows = tables.read_stage(storage, DATASET, "annotated").to_pylist()
    assert sorted(str(r["topic"]) for r in rows) == ["None", "sports", "sports"]  # all committed
    unlabeled = next(r for r in rows if r["topic"] is None)
    assert json.loads(unlabeled["labels"])["topic"]["error"] == "budget reached"
    assert unlabeled["language"] is not None  # the other labels do not wait for the LLM

    # Without the budget, the next materialization pays only for the topic it did not ask for.
    second_run, meta = materialize(make_spec(), storage, llm, ["annotated"])
    meta = meta["annotated"]
    assert (meta["llm_calls"], meta["llm_cache_hits"], meta["topic_budget_stopped"]) == (1, 2, 0)
    assert "llm_budget_reached" not in meta and meta["llm_cost_usd"] == pytest.approx(CALL_COST)
    assert tables.read_stage(storage, DATASET, "annotated").column("topic").to_pylist() == ["sports"] * 3
    assert scripted.calls() == 3

    usage = sorted(tables.read_stage(storage, DATASET, "llm_usage").to_pylist(), key=lambda u: u["recorded_at"])
    assert [(u["stage"], u["run_id"], u["calls"], u["cache_hits"], u["budget_stopped"]) for u in usage] == [
        ("annotated", first_run, 2, 0, 1), ("annotated", second_run, 1, 2, 0)]
    assert sum(u["cost_usd"] for u in usage) == pytest.approx(3 * CALL_COST)
    assert sum(u["input_tokens"] + u["output_tokens"] for u in usage) == 3 * 120


def test_the_labeler_counts_toward_the_run_budget(storage, scripted):
    """The dataset's `budget` bounds one run: the labeler spends 3 calls (360 tokens), so the judge, later in the
    same run (evaluation reads `annotated`), has 40 tokens left: one call, then the run's budget is spent."""
    spec = make_spec(run_budget={"max_tokens": 400}, index={},
                     synthesis={"kinds": ["qa"], "max_records": 3},
                     evaluation={"max_judged": 3, "judge_dimensions": [
                         {"name": "helpful", "description": "It helps", "rubric": RUBRIC}]})
    llm = resource(scripted)
    materialize(spec, storage, llm, ["synthesized"])  # a run of its own: 3 calls
    run_id, meta = materialize(spec, storage, llm, ["annotated", "evaluation"])
    assert (meta["annotated"]["llm_calls"], meta["annotated"]["llm_run_tokens"]) == (3, 360)
    assert "llm_budget_reached" not in meta["annotated"]
    judged = meta["evaluation"]
    assert (judged["judge_llm_calls"], judged["judge_llm_budget_stopped"]) == (1, 2)
    assert "earlier stages of this run spent 360 tokens / 0.4200 USD" in judged["judge_llm_budget_reached"]
    usage = tables.read_stage(storage, DATASET, "llm_usage").to_pylist()
    assert {(u["stage"], u["calls"]) for u in usage if u["run_id"] == run_id} == {("annotated", 3), ("evaluation", 1)}
    assert scripted.calls() == 3 + 3 + 1


def test_an_annotation_budget_needs_the_llm_labeler():
    with pytest.raises(ValidationError, match="limits the LLM labeler; this section's labeler is 'embeddings'"):
        DatasetSpec.model_validate({"name": DATASET, "sources": [{"type": "folder", "path": "unused"}],
                                    "annotation": {"labels": TOPICS, "budget": {"max_tokens": 10}}})
