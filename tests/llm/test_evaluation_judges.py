"""Rubric grading, pairwise A/B with position swap, confidence intervals, checks on aggregates, judge-vs-human
kappa and benchmark decontamination in `<dataset>/evaluation`."""

import json
import sys

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import cohen_kappa_score

from datamate_assets import evaluation
from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec
from datamate_resources import tables
from datamate_resources.io_manager import DeltaIOManager
from datamate_resources.llm import LLMResource
from datamate_resources.storage import ObjectStore
from operators.evaluation.judge import pairwise_outcome
from operators.synthesis import make_record
from tests.llm import scripted_llm
from tests.llm.conftest import REPO, openai_resource
from tests.servers import free_port, server_process

DATASET = "judge_test"
CHUNK = "APT installs, upgrades and removes software on Debian; apt update downloads the package lists."
RUBRIC = {1: "wrong", 2: "mostly wrong", 3: "partly right", 4: "right", 5: "right and complete"}
BENCHMARK_QUESTION = ("Which command downloads the package lists from the repositories configured in the "
                      "sources list file on a Debian system")


def preference(i: int) -> dict:
    return make_record("preference", f"What does apt do ({i})?", f"APT installs and removes software ({i}).",
                       doc_id="d1", chunk_id="c1", model="m", template_version="t", prompt=str(i),
                       rejected=f"It is a tool ({i}).", chosen_rating=5, rejected_rating=2)


def planted() -> dict:
    # Shares 13+ consecutive words with the benchmark question: contaminated.
    return make_record("qa", "Which tool fetches package lists?",
                       f"Answer: {BENCHMARK_QUESTION.lower()} is apt update.", doc_id="d2", chunk_id="c1",
                       model="m", template_version="t", prompt="p")


@pytest.fixture
def storage(tmp_path) -> ObjectStore:
    store = ObjectStore(url=f"file://{tmp_path / 'storage'}")
    tables.write(store, DATASET, "synthesized", pa.Table.from_pylist([preference(i) for i in range(4)] + [planted()]))
    tables.write(store, DATASET, "chunks",
                 pa.Table.from_pylist([{"chunk_id": "c1", "doc_id": "d1", "text": CHUNK, "position": 0}]))
    return store


@dg.asset(key=key(DATASET, "published"), deps=[key(DATASET, "evaluation")])
def published() -> None:
    """Stands for whatever consumes the evaluated data."""


def make_spec(**section) -> DatasetSpec:
    return DatasetSpec.model_validate({
        "name": DATASET, "sources": [{"type": "folder", "path": "unused"}], "index": {},
        "synthesis": {"kinds": ["preference"]},
        "evaluation": {"judge_dimensions": [{"name": "helpful", "description": "The answer helps", "rubric": RUBRIC}],
                       **section},
    })


def materialize(spec, storage, llm, extra=()) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [dg.AssetSpec(key(spec, "synthesized")), dg.AssetSpec(key(spec, "chunks")),
         *evaluation.build_defs(spec).assets, *extra],
        resources={"llm": llm, "storage": storage, "io_manager": DeltaIOManager(storage=storage)},
        raise_on_error=False,
    )


def metadata_of(result) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == key(DATASET, "evaluation")]
    return {name: value.value for name, value in event.materialization.metadata.items()}


@pytest.fixture
def scripted(tmp_path):
    port, journal = free_port(), tmp_path / "journal.jsonl"
    args = [sys.executable, "-m", "tests.llm.scripted_llm", "--port", str(port), "--journal", str(journal)]
    with server_process(args, port, tmp_path / "scripted.log", timeout=60, cwd=REPO):
        yield f"http://127.0.0.1:{port}/v1", journal


def test_pairwise_asks_both_orders_and_a_position_biased_judge_wins_nothing(storage, scripted):
    base_url, journal = scripted
    spec = make_spec(max_judged=4, pairwise=True, checks={"min": {"pairwise/position_consistency": 0.5,
                                                                  "score/helpful": 1}})
    llm = openai_resource(base_url, model=scripted_llm.MODEL)
    result = materialize(spec, storage, llm, extra=[published])
    meta = metadata_of(result)
    asked = [json.loads(line) for line in journal.read_text().splitlines()]
    pairwise = [a["prompt"] for a in asked if a["schema"] == "PairwiseVerdict"]
    judged = tables.read_stage(storage, DATASET, "evaluation").to_pylist()
    preferences = [row for row in judged if row["kind"] == "preference"]
    assert len(pairwise) == 2 * len(preferences) > 0
    # Each pair is asked as (chosen, rejected) and as (rejected, chosen).
    for row in tables.read_stage(storage, DATASET, "synthesized").to_pylist():
        if row["record_id"] in {p["record_id"] for p in preferences}:
            orders = [p for p in pairwise if row["question"] in p]
            assert any(p.index(row["answer"]) < p.index(row["rejected"]) for p in orders)
            assert any(p.index(row["rejected"]) < p.index(row["answer"]) for p in orders)
    # The scripted judge always answers "A": every verdict followed the position, so none counts as a win.
    assert {row["pairwise"] for row in preferences} == {"inconsistent"}
    aggregates = meta["aggregates"]
    assert aggregates["pairwise/position_consistency"]["value"] == 0.0
    assert aggregates["pairwise/chosen_win_rate"]["high"] > 0  # a Wilson interval, not a bare 0
    assert 3 <= aggregates["score/helpful"]["value"] <= 4 and aggregates["score/helpful"]["low"] is not None
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"min_pairwise_position_consistency": False, "min_score_helpful": True}
    assert key(DATASET, "published") not in {e.asset_key for e in result.get_asset_materialization_events()}

    # Label Studio labels for judged records: the report shows Cohen's kappa of judge vs humans.
    scores = {row["record_id"]: json.loads(row["rubric_scores"])["helpful"] for row in judged}
    humans = {rid: str(score if i % 2 == 0 else 5) for i, (rid, score) in enumerate(sorted(scores.items()))}
    tables.write(storage, DATASET, "human_labels", pa.Table.from_pylist([
        {"doc_id": rid, "field": "helpful", "value": value, "annotator": "a@example.org", "annotated_at": "2026"}
        for rid, value in humans.items()]))
    again = metadata_of(materialize(spec, storage, llm))
    expected = cohen_kappa_score([str(scores[r]) for r in sorted(humans)], [humans[r] for r in sorted(humans)])
    assert again["aggregates"]["kappa/helpful"]["value"] == pytest.approx(round(expected, 4))
    assert again["aggregates"]["kappa/helpful"]["n"] == len(humans)
    assert again["judge_llm_calls"] == 0  # judged again from the cache


def test_pairwise_outcome_cancels_position_bias():
    assert pairwise_outcome("A", "B") == "first"  # X won as A and as B
    assert pairwise_outcome("B", "A") == "second"
    assert pairwise_outcome("A", "A") == "inconsistent"
    assert pairwise_outcome("tie", "tie") == "tie"


def test_a_planted_contaminated_record_is_found_and_blocks(storage, tmp_path):
    jsonl = tmp_path / "bench_qa.jsonl"
    jsonl.write_text(json.dumps({"question": BENCHMARK_QUESTION, "answer": "apt update"}) + "\n"
                     + json.dumps({"question": "Unrelated question about the weather in Paris", "answer": "Sunny"})
                     + "\n", encoding="utf-8")
    pq.write_table(pa.table({"question": ["What is the capital of France, the country in western Europe?"],
                             "answer": ["Paris"]}), tmp_path / "other.parquet")
    spec = make_spec(max_judged=0, decontamination={"benchmarks": [str(jsonl), str(tmp_path / "other.parquet")]},
                     checks={"max_contaminated": 0})
    result = materialize(spec, storage, LLMResource(), extra=[published])
    contamination = metadata_of(result)["contamination"]
    assert contamination["checked"] == 5 and contamination["contaminated"] == 1
    assert contamination["benchmarks"]["bench_qa"]["contaminated"] == 1
    assert contamination["benchmarks"]["other"]["contaminated"] == 0
    [drop] = tables.read_stage(storage, DATASET, "contamination_drops").to_pylist()
    assert (drop["stage"], drop["id"], drop["benchmark"]) == ("synthesized", planted()["record_id"], "bench_qa")
    assert len(drop["ngram"].split()) == 13 and drop["ngram"] in BENCHMARK_QUESTION.lower()
    assert drop["position"] == 6  # token offset in "Which tool fetches package lists? Answer: which command ..."
    assert [c.passed for c in result.get_asset_check_evaluations()] == [False]
    assert key(DATASET, "published") not in {e.asset_key for e in result.get_asset_materialization_events()}


def test_bad_rubric_fails_when_definitions_load():
    with pytest.raises(ValueError, match="consecutive"):
        evaluation.build_defs(make_spec(
            judge_dimensions=[{"name": "x", "description": "y", "rubric": {1: "a", 3: "b"}}]))
