"""dbt reports over real stage outputs (Delta tables, read by DuckDB's packaged `delta` extension), on a local
folder and on S3 (moto's server), run through Dagster."""

import json
from datetime import UTC, datetime

import dagster as dg
import duckdb
import pyarrow as pa
import pytest

from datamate_assets import collection
from datamate_assets.keys import key
from datamate_assets.reporting import stage_tables, with_reporting
from datamate_assets.spec import DatasetSpec
from datamate_resources import build_resources, tables
from datamate_resources.llm import LLMUsage, record_usage
from datamate_resources.settings import Settings
from datamate_resources.storage import ObjectStore
from tests.conftest import S3_KEYS

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def spec_for(folder) -> DatasetSpec:
    return DatasetSpec.model_validate({"name": "report_demo", "sources": [{"type": "folder", "path": str(folder)}]})


def later_stages() -> dict[str, pa.Table]:
    """Outputs of the later stages, shaped by the column contracts in docs/architecture.md."""
    return {
        "cleaned": pa.table({"doc_id": ["a", "b"], "text": ["alpha text", "beta text"], "recipe_hash": ["r", "r"]}),
        "cleaning_drops": pa.table({"doc_id": ["c"], "source_uri": ["file:///c"], "operator": ["text_length_filter"],
                                    "reason": ["too_short"], "text": ["c"]}),
        "annotated": pa.table({"doc_id": ["a", "b"], "language": ["en", "en"], "language_confidence": [0.9, 0.7],
                               "topic": ["networking", "security"], "topic_confidence": [0.6, 0.8]}),
        "chunks": pa.table({"chunk_id": ["a1", "a2", "b1"], "doc_id": ["a", "a", "b"], "text": ["al", "pha", "beta"]}),
        "synthesized": pa.table({"record_id": ["q1", "q2"], "kind": ["qa", "instruction"], "question": ["?", "?"],
                                 "answer": ["yes", "no"], "doc_id": ["a", "b"], "model": ["m", "m"]}),
    }


def plain_store(settings: Settings) -> ObjectStore:
    """The storage with the keys by value: outside a Dagster run nothing resolves the resource's EnvVars."""
    return ObjectStore(
        url=settings.storage_url, endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
    )


def build(tmp_path, monkeypatch, storage_url: str, endpoint: str | None = None):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("one", "two", "three"):
        (inbox / f"{name}.txt").write_text(f"The {name} document about Debian packages. " * 5)
    (inbox / "empty.txt").write_text("")
    monkeypatch.setenv("DATAMATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DATAMATE_STORAGE_URL", storage_url)
    if endpoint:
        monkeypatch.setenv("DATAMATE_S3_ENDPOINT_URL", endpoint)
    settings = Settings.from_env()
    spec = spec_for(inbox)
    defs = dg.Definitions.merge(dg.Definitions(resources=build_resources(settings)), collection.build_defs(spec))
    # The stages after collection as their owners write them: Delta tables through the table API.
    for stage, table in later_stages().items():
        defs = dg.Definitions.merge(defs, dg.Definitions(assets=[dg.AssetSpec(key(spec, stage))]))
        if stage == "chunks":  # an earlier version, which the reports must not read
            tables.write(plain_store(settings), spec.name, stage, table.slice(0, 1))
        tables.write(plain_store(settings), spec.name, stage, table)
    # LLM usage as the synthesis stage logs it: two materializations in run-1, one (all cache hits) in run-2.
    for run_id, usage in (("run-1", LLMUsage("m", requests=2, calls=2, input_tokens=200, output_tokens=40,
                                             cost_usd=0.28, call_seconds=4.0)),
                          ("run-1", LLMUsage("m", requests=2, calls=1, cache_hits=1, budget_stopped=0,
                                             input_tokens=100, output_tokens=20, cost_usd=0.14, call_seconds=2.0)),
                          ("run-2", LLMUsage("m", requests=3, cache_hits=3))):
        record_usage(plain_store(settings), spec.name, "synthesized", run_id, usage)
    return settings, spec, with_reporting(defs, settings)


def run_reports(settings, spec, defs) -> dict:
    assert defs.resolve_implicit_global_asset_job_def().execute_in_process(
        asset_selection=[key(spec, "collected"), key(spec, "collection_rejects")]
    ).success
    reporting = [k for k in defs.resolve_all_asset_keys() if k.path[0] == "reporting"]
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(asset_selection=reporting)
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks), [c.check_name for c in checks if not c.passed]
    with duckdb.connect(str(settings.home / "reporting.duckdb"), read_only=True) as db:
        return {
            "funnel": db.sql("select stage, documents_in, documents_out from stage_funnel order by step").fetchall(),
            "drops": db.sql("select stage, operator, reason, documents from drop_reasons order by 1, 2").fetchall(),
            "labels": db.sql("select label, value, documents from label_distribution order by 1, 2").fetchall(),
            "synthesis": db.sql("select kind, records from synthesis_scores order by kind").fetchall(),
            "kb": db.sql("select dataset, chunks, documents from knowledge_base_size").fetchall(),
            "cost": db.sql("select run_id, stage, model, materializations, requests, calls, cache_hits, total_tokens, "
                           "round(cost_usd, 6), output_tokens_per_second from llm_cost order by run_id").fetchall(),
        }


def check_reports(reports: dict) -> None:
    assert reports["funnel"] == [
        ("collected", None, 3), ("cleaned", 3, 2), ("annotated", 2, 2), ("chunks", 2, 2), ("synthesized", 2, 2)
    ]
    assert reports["drops"] == [
        ("cleaning", "text_length_filter", "too_short", 1), ("collection", "reader", "empty", 1)
    ]
    assert reports["labels"] == [("language", "en", 2), ("topic", "networking", 1), ("topic", "security", 1)]
    assert reports["synthesis"] == [("instruction", 1), ("qa", 1)]
    assert reports["kb"] == [("report_demo", 3, 2)]
    assert reports["cost"] == [("run-1", "synthesized", "m", 2, 4, 3, 1, 360, 0.42, 10.0),
                               ("run-2", "synthesized", "m", 1, 3, 0, 3, 0, 0.0, None)]


def test_lineage_runs_from_collection_to_reports(tmp_path, monkeypatch):
    settings, spec, defs = build(tmp_path, monkeypatch, f"file://{tmp_path / 'storage'}")
    graph = defs.resolve_asset_graph()
    funnel = graph.get(dg.AssetKey(["reporting", "stage_funnel"]))
    assert {key(spec, s) for s in ("collected", "cleaned", "annotated", "chunks", "synthesized")} <= funnel.parent_keys
    assert funnel.automation_condition is not None
    assert graph.get(dg.AssetKey(["reporting", "drop_reasons"])).parent_keys == {
        key(spec, "collection_rejects"), key(spec, "cleaning_drops")
    }
    # llm_usage is no asset: the cost model depends on the stages that append to it.
    assert graph.get(dg.AssetKey(["reporting", "llm_cost"])).parent_keys == {key(spec, "synthesized"),
                                                                              key(spec, "annotated")}
    # dbt tests are asset checks of their models.
    assert {c.name for c in funnel.check_keys} >= {"not_null_stage_funnel_dataset", "cleaning_never_adds_documents"}


def test_reports_on_local_storage(tmp_path, monkeypatch):
    check_reports(run_reports(*build(tmp_path, monkeypatch, f"file://{tmp_path / 'storage'}")))


def test_reports_on_s3_with_packaged_httpfs(tmp_path, monkeypatch, s3_endpoint, s3_bucket):
    settings, spec, defs = build(tmp_path, monkeypatch, f"s3://{s3_bucket}/datamate", s3_endpoint)
    profile = (settings.home / "dbt" / "profiles.yml").read_text()
    assert "testing-secret-key" not in profile  # the secret is an env_var() reference, not a value
    check_reports(run_reports(settings, spec, defs))


@pytest.mark.parametrize("stage", ["evaluation", "collected"])
def test_a_stage_nobody_produced_yet_reads_as_empty(tmp_path, stage):
    settings = Settings.from_env({"DATAMATE_HOME": str(tmp_path), "DATAMATE_STORAGE_URL": f"file://{tmp_path}/s"})
    storage = plain_store(settings)
    assert stage_tables(storage, [key("nothing_yet", stage)]) == {}
    assert json.dumps(stage_tables(storage, [])) == "{}"


def test_a_run_starts_the_dbt_step_after_the_stages_it_reads():
    """The dbt models depend on every dataset's stage assets, and a run orders its steps by them (an earlier
    version only set the lineage, and automation ran the dbt step beside cleaning)."""
    from datamate_assets.definitions import defs

    job = defs.resolve_implicit_global_asset_job_def()
    upstream = {handle.node_name for handle in job.graph.dependency_structure.all_upstream_outputs_from_node(
        "reporting_dbt")}
    assert {"debian_docs_collection", "debian_docs_cleaning", "debian_docs__annotated", "debian_docs__chunks",
            "debian_docs__synthesized", "debian_docs__evaluation"} <= upstream, upstream
    reporting = next(a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and a.op.name == "reporting_dbt")
    funnel = reporting.specs_by_key[dg.AssetKey(["reporting", "stage_funnel"])]
    assert dg.AssetKey(["debian_docs", "cleaned"]) in {dep.asset_key for dep in funnel.deps}
