"""Cleaning on Ray with no driver in the data path (operators/ray_exec.py): workers read the collected table, write
kept rows, drops and the signature index; the local and Ray executors publish the same tables, for a first and an
incremental run, on the planted-duplicate corpus of tests/operators/test_stream_dedup.py."""

import pyarrow as pa
import pytest

from bench.corpus import generate
from datamate_resources import tables
from datamate_resources.storage import ObjectStore
from operators.ray_exec import Destination, Outputs, Source, parts_dataset, run_ray_tables
from operators.recipe import Recipe, run_local
from tests.conftest import S3_KEYS

PROCESS = [
    {"clean_html_mapper": {}},
    {"text_length_filter": {"min_len": 100}},
    {"document_deduplicator": {"lowercase": True, "collapse_whitespace": True}},
    {"ray_bts_minhash_deduplicator": {"jaccard_threshold": 0.7, "union_find_parallel_num": 3}},
    {"document_simhash_deduplicator": {}},
    {"document_line_deduplicator": {}},
]
ORDER = [("source_uri", "ascending"), ("doc_id", "ascending")]


@pytest.fixture(scope="module")
def corpus() -> pa.Table:
    return generate(400, seed=11).table


def test_workers_write_what_the_local_executor_keeps_and_drops(local_ray, corpus, tmp_path):
    storage = ObjectStore(url=f"file://{tmp_path}")
    table = corpus.append_column("n", pa.array(range(corpus.num_rows)))
    ref = tables.write(storage, "d", "collected", table)
    recipe = Recipe.from_process(PROCESS)
    local = run_local(recipe, ref.read())
    outputs = Outputs(Destination(str(tmp_path / "kept"), local.kept.schema),
                      Destination(str(tmp_path / "drops"), local.drops.schema))
    run = run_ray_tables(recipe, Source.of(ref.uri, ref.version), outputs)
    kept, drops = parts_dataset(run.kept, {}).to_table(), parts_dataset(run.drops, {}).to_table()
    assert kept.sort_by("n").equals(local.kept.sort_by("n"))
    assert drops.sort_by("n").to_pylist() == local.drops.sort_by("n").to_pylist()  # same operator and reason
    assert [(s.docs_in, s.docs_out, s.dropped, s.changed, s.errors) for s in run.stats] == \
        [(s.docs_in, s.docs_out, s.dropped, s.changed, s.errors) for s in local.stats]
    dropped_by = set(drops.column("operator").to_pylist())
    assert {"document_deduplicator", "ray_bts_minhash_deduplicator"} <= dropped_by
    assert run.stats[3].examples and "near-duplicate" in run.stats[3].examples[0]["reason"]
    assert run.kept_rows + run.dropped_rows == corpus.num_rows


def _materialize(executor: str, storage: ObjectStore, collected: pa.Table):
    import dagster as dg

    from datamate_assets import cleaning
    from datamate_assets.keys import key
    from datamate_assets.spec import DatasetSpec
    from datamate_resources.io_manager import DeltaIOManager
    from datamate_resources.ray import DatamateRay

    spec = DatasetSpec.model_validate({"name": "docs", "sources": [{"type": "folder", "path": "unused"}],
                                       "cleaning": {"executor": executor, "process": PROCESS}})
    tables.write(storage, spec.name, "collected", collected)
    defs = cleaning.build_defs(spec)
    resources = {"storage": storage, "io_manager": DeltaIOManager(storage=storage)}
    if executor == "ray":
        resources["ray"] = DatamateRay()
    result = dg.materialize([*defs.assets, dg.SourceAsset(key(spec, "collected"))], resources=resources)
    assert result.success
    metadata = result.asset_materializations_for_node("docs_cleaning")[0].metadata
    logs = " ".join(e.message or "" for e in result.all_events)
    return {name: value.value for name, value in metadata.items() if name in ("processed", "removed", "reused",
                                                                              "kept_this_run",
                                                                              "dropped_this_run")}, logs


@pytest.mark.e2e  # ~4 min on 2 cores; CI keeps the one-run and S3 cases of this file
def test_first_and_incremental_runs_on_ray_publish_what_the_local_executor_publishes(local_ray, corpus, tmp_path):
    first = corpus.slice(0, 300)
    second = pa.concat_tables([corpus.slice(0, 280), corpus.slice(300)])  # 20 removed, 100 new
    published, counts = {}, {}
    for executor in ("local", "ray"):
        storage = ObjectStore(url=f"file://{tmp_path / executor}")
        counts[executor] = [_materialize(executor, storage, first)[0]]
        second_counts, logs = _materialize(executor, storage, second)
        counts[executor].append(second_counts)
        assert "local executor" not in logs
        published[executor] = {stage: tables.read_stage(storage, "docs", stage) for stage in
                               ("cleaned", "cleaning_drops", "dedup_index")}
        versions = {stage: tables.current(storage, "docs", stage).version for stage in published[executor]}
        assert versions == {"cleaned": 1, "cleaning_drops": 1, "dedup_index": 1}
    assert counts["ray"] == counts["local"]
    assert counts["ray"][1]["processed"] == 100 and counts["ray"][1]["removed"] == 20
    local, ray = published["local"], published["ray"]
    assert ray["cleaned"].schema == local["cleaned"].schema
    assert ray["cleaned"].sort_by(ORDER).equals(local["cleaned"].sort_by(ORDER))
    assert ray["cleaning_drops"].sort_by(ORDER).to_pylist() == local["cleaning_drops"].sort_by(ORDER).to_pylist()
    index_order = [("step", "ascending"), ("identity", "ascending")]
    assert ray["dedup_index"].sort_by(index_order).to_pylist() == local["dedup_index"].sort_by(index_order).to_pylist()
    assert ray["cleaned"].num_rows + ray["cleaning_drops"].num_rows == second.num_rows


def test_a_splitting_mapper_before_dedup_gives_the_local_pieces(local_ray, corpus, tmp_path):
    storage = ObjectStore(url=f"file://{tmp_path}")
    ref = tables.write(storage, "d", "collected", corpus.slice(0, 150).select(["doc_id", "source_uri", "text"]))
    recipe = Recipe.from_process([{"text_chunk_mapper": {"max_len": 300, "split_pattern": r"\n"}},
                                  {"text_length_filter": {"min_len": 20}}, {"document_deduplicator": {}}])
    local = run_local(recipe, ref.read())
    outputs = Outputs(Destination(str(tmp_path / "kept"), local.kept.schema),
                      Destination(str(tmp_path / "drops"), local.drops.schema))
    run = run_ray_tables(recipe, Source.of(ref.uri, ref.version), outputs)
    assert local.stats[0].added > 0
    assert parts_dataset(run.kept, {}).to_table().equals(local.kept)  # the parts in order: input order
    assert [(s.docs_in, s.docs_out, s.added, s.dropped) for s in run.stats] == \
        [(s.docs_in, s.docs_out, s.added, s.dropped) for s in local.stats]


def test_on_s3_the_workers_read_and_write_the_bucket_with_the_tables_storage_options(local_ray, corpus, tmp_path,
                                                                                       s3_bucket, s3_endpoint):
    first, second = corpus.slice(0, 120), corpus.slice(0, 160)
    stores = {"local": ObjectStore(url=f"file://{tmp_path}"),
              # the keys in the resource: they travel to the workers in the tables' storage options (a worker
              # without them uses its own credential chain: environment, instance role)
              "ray": ObjectStore(url=f"s3://{s3_bucket}/root", endpoint_url=s3_endpoint,
                                 aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                                 aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"])}
    published = {}
    for executor, storage in stores.items():
        for collected in (first, second):
            _materialize(executor, storage, collected)
        published[executor] = [tables.read_stage(storage, "docs", stage).sort_by(ORDER).to_pylist()
                               for stage in ("cleaned", "cleaning_drops")]
    assert published["ray"] == published["local"]
    stores["ray"].fs.invalidate_cache()
    assert not stores["ray"].fs.exists(stores["ray"].path("docs", "_ray_scratch"))  # merged, then removed


def test_record_filters_and_a_selector_on_the_workers_match_the_local_executor(local_ray, corpus, tmp_path):
    storage = ObjectStore(url=f"file://{tmp_path}")
    table = corpus.slice(0, 300).select(["doc_id", "text"])
    table = table.append_column("meta", pa.array([{"n": i} for i in range(table.num_rows)]))
    ref = tables.write(storage, "d", "collected", table)
    recipe = Recipe.from_process([{"clean_html_mapper": {}}, {"text_length_filter": {"min_len": 100}},
                                  {"specified_numeric_field_filter": {"field_key": "meta.n", "max_value": 250}},
                                  {"document_deduplicator": {"lowercase": True}},
                                  {"topk_specified_field_selector": {"field_key": "meta.n", "topk": 100}}])
    local = run_local(recipe, ref.read())
    outputs = Outputs(Destination(str(tmp_path / "kept"), local.kept.schema),
                      Destination(str(tmp_path / "drops"), local.drops.schema))
    run = run_ray_tables(recipe, Source.of(ref.uri, ref.version), outputs)
    assert local.kept.num_rows == 100
    assert parts_dataset(run.kept, {}).to_table().equals(local.kept)

    def by_row(rows: pa.Table) -> list:
        return sorted(rows.to_pylist(), key=lambda row: row["meta"]["n"])

    assert by_row(parts_dataset(run.drops, {}).to_table()) == by_row(local.drops)
