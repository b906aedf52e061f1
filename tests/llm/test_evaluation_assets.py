"""`<dataset>/evaluation`: report metadata, the LLM judge on the served packaged model, blocking checks."""

import json

import dagster as dg
import pyarrow as pa
import pytest

from datamate_assets import evaluation
from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec
from datamate_resources import tables
from datamate_resources.io_manager import DeltaIOManager
from datamate_resources.llm import LLMResource
from datamate_resources.storage import ObjectStore
from operators.synthesis.schemas import make_record
from tests.llm.conftest import openai_resource

DATASET = "eval_test"
CHUNK = ("APT installs, upgrades and removes software on Debian. apt update downloads the package lists named in "
         "/etc/apt/sources.list; apt upgrade installs newer versions of the installed packages.")
RECORDS = [
    ("qa", "What does apt update download?", "The package lists named in /etc/apt/sources.list."),
    ("qa", "What does apt update download?", "The package lists."),  # a repeated question
    ("instruction", "Explain what apt upgrade does.", "It installs newer versions of the installed packages."),
    ("qa", "Which tool removes software on Debian?", "APT removes software on Debian."),
]
DIMENSIONS = [
    {"name": "self_contained", "description": "The question can be understood without the document"},
    {"name": "faithful", "description": "The answer is supported by the document"},
]


def make_spec(**evaluation_section) -> DatasetSpec:
    return DatasetSpec.model_validate({
        "name": DATASET,
        "sources": [{"type": "folder", "path": "unused"}],
        "index": {},
        "synthesis": {"kinds": ["qa", "instruction"]},
        "evaluation": {"judge_dimensions": DIMENSIONS, **evaluation_section},
    })


@pytest.fixture
def storage(tmp_path) -> ObjectStore:
    store = ObjectStore(url=f"file://{tmp_path / 'storage'}")
    rows = [make_record(kind, q, a, doc_id="d1", chunk_id="c1", model="m", template_version=f"{kind}-en-test",
                        prompt=q) for kind, q, a in RECORDS]
    tables.write(store, DATASET, "synthesized", pa.Table.from_pylist(rows))
    tables.write(store, DATASET, "chunks",
                 pa.Table.from_pylist([{"chunk_id": "c1", "doc_id": "d1", "text": CHUNK, "position": 0}]))
    return store


@dg.asset(key=key(DATASET, "published"), deps=[key(DATASET, "evaluation")])
def published() -> None:
    """Stands for whatever consumes the evaluated data (fine-tuning export, dbt models)."""


def materialize(spec, storage, llm, extra=()) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [dg.AssetSpec(key(spec, "synthesized")), dg.AssetSpec(key(spec, "chunks")),
         *evaluation.build_defs(spec).assets, *extra],
        resources={"llm": llm, "storage": storage, "io_manager": DeltaIOManager(storage=storage)},
        raise_on_error=False,
    )


def materialized(result) -> set[dg.AssetKey]:
    return {event.asset_key for event in result.get_asset_materialization_events()}


def metadata_of(result, stage="evaluation") -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key == key(DATASET, stage)]
    return {name: value.value for name, value in events[0].materialization.metadata.items()} if events else {}


def test_failing_checks_block_downstream_assets_and_the_report_shows_the_metrics(storage):
    spec = make_spec(max_judged=0, checks={"min_judge_pass_rate": 0.5, "max_duplicate_rate": 0.2})
    # max_judged=0: no model call is made, so the local resource is never loaded.
    result = materialize(spec, storage, LLMResource(), extra=[published])

    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["duplicate_rate"].passed is False  # 1 question of 4 repeats an earlier one
    assert checks["duplicate_rate"].metadata["question_duplicate_rate"].value == 0.25
    assert checks["judge_pass_rate"].passed is False  # nothing judged is not a pass
    assert key(DATASET, "published") not in materialized(result)  # blocked

    meta = metadata_of(result)
    assert meta["question_duplicate_rate"] == 0.25 and meta["record_duplicate_rate"] == 0.0
    for heading in ("### Funnel", "### Lengths", "### Kinds", "### Language mix", "### Judge pass rate"):
        assert heading in meta["report"]
    assert "| qa " in meta["report"] and "| en " in meta["report"]
    assert meta["plot_lengths"].startswith("![length distributions](data:image/png;base64,")
    assert meta["plot_judge"].startswith("![judge pass rate per dimension](data:image/png;base64,")


def test_passing_checks_let_downstream_run(storage):
    spec = make_spec(max_judged=0, checks={"max_duplicate_rate": 0.3})
    result = materialize(spec, storage, LLMResource(), extra=[published])
    assert result.success
    assert [c.passed for c in result.get_asset_check_evaluations()] == [True]
    assert key(DATASET, "published") in materialized(result)


@pytest.mark.timeout(1800)  # three model calls, which take minutes each on the shared 2-core CI machine
def test_judge_gives_every_dimension_a_verdict_and_reruns_from_cache(storage, llm_server):
    spec = make_spec(max_judged=3, checks={"min_judge_pass_rate": 0.0})
    llm = openai_resource(llm_server, max_tokens=160)
    first = materialize(spec, storage, llm)
    assert first.success
    table = tables.read_stage(storage, DATASET, "evaluation").to_pylist()
    meta = metadata_of(first)
    assert len(table) == 3 and meta["judged"] + meta["judge_failures"] == 3
    for row in table:
        if row["error"] is None:
            verdicts = json.loads(row["verdicts"])
            assert [v["dimension"] for v in verdicts] == ["self_contained", "faithful"]
            assert {v["verdict"] for v in verdicts} <= {"Y", "N"}
            assert 1 <= row["score"] <= 5
            assert row["passed"] == all(v["verdict"] == "Y" for v in verdicts)
    for name in ("self_contained", "faithful"):
        assert 0.0 <= meta[f"pass_rate/{name}"] <= 1.0
    assert meta["judge_llm_calls"] >= meta["judged"]

    again = metadata_of(materialize(spec, storage, llm))
    assert (again["judge_llm_calls"], again["judge_llm_cache_hits"]) == (0, meta["judged"])
