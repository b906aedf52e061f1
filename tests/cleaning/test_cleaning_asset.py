"""`<dataset>/cleaned` and `<dataset>/cleaning_drops` materialized by Dagster on a local storage dir."""

import dagster as dg
import pyarrow as pa

from bench.corpus import generate
from datamate_assets import cleaning
from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec
from datamate_resources import tables
from datamate_resources.io_manager import DeltaIOManager
from datamate_resources.storage import ObjectStore

PROCESS = [
    {"clean_html_mapper": {}},
    {"text_length_filter": {"min_len": 100}},
    {"document_deduplicator": {"lowercase": True}},
    {"document_minhash_deduplicator": {}},
]


def make_spec(process) -> DatasetSpec:
    return DatasetSpec.model_validate({
        "name": "web", "sources": [{"type": "folder", "path": "unused"}],
        "cleaning": {"executor": "local", "process": process},
    })


def materialize(spec: DatasetSpec, storage: ObjectStore, collected: pa.Table) -> dg.ExecuteInProcessResult:
    tables.write(storage, spec.name, "collected", collected)
    defs = cleaning.build_defs(spec)
    collected_source = dg.SourceAsset(key(spec, "collected"))
    return dg.materialize([*defs.assets, collected_source], resources={"storage": storage,
                                                        "io_manager": DeltaIOManager(storage=storage)})


def outputs(storage: ObjectStore, spec: DatasetSpec) -> tuple[pa.Table, pa.Table]:
    return (tables.read_stage(storage, spec.name, "cleaned"),
            tables.read_stage(storage, spec.name, "cleaning_drops"))


def test_cleaning_asset_metadata_and_incremental_runs(tmp_path):
    storage = ObjectStore(url=f"file://{tmp_path}")
    spec = make_spec(PROCESS)
    corpus = generate(400, seed=5).table
    first = corpus.slice(0, 300)

    result = materialize(spec, storage, first)
    assert result.success
    cleaned, drops = outputs(storage, spec)
    assert cleaned.num_rows + drops.num_rows == 300
    assert set(cleaned.column("recipe_hash").to_pylist()) == {cleaning.Recipe.from_process(PROCESS).hash}
    assert drops.column_names == ["doc_id", "source_uri", "operator", "reason", "text", "stats"]
    # every filter's statistics are kept per document, in both tables, and plotted in the metadata
    assert "text_len" in cleaned.schema.field("stats").type.names
    assert cleaned.column("stats").combine_chunks().field("text_len").null_count == 0
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert "| 3 | `document_minhash_deduplicator` |" in metadata["operator_stats"].value
    assert "| before | after |" in metadata["examples"].value
    assert "data:image/png;base64," in metadata["statistics_plots"].value and "text_len" in metadata["statistics"].value
    assert metadata["processed"].value == 300
    # the signature index holds each kept document's fingerprint once per dedup step (two in this recipe)
    index = tables.read_stage(storage, spec.name, "dedup_index")
    assert index.num_rows == 2 * cleaned.num_rows and set(index.column("step").to_pylist()) == {2, 3}

    # more documents arrive: only they are processed, deduplicated against what was kept
    result = materialize(spec, storage, corpus)
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["processed"].value == 100 and metadata["reused"].value == 300
    incremental = outputs(storage, spec)

    # the same from scratch gives the same documents
    fresh = ObjectStore(url=f"file://{tmp_path / 'fresh'}")
    materialize(spec, fresh, corpus)
    full = outputs(fresh, spec)
    assert sorted(incremental[0].column("doc_id").to_pylist()) == sorted(full[0].column("doc_id").to_pylist())
    assert sorted(incremental[1].column("doc_id").to_pylist()) == sorted(full[1].column("doc_id").to_pylist())

    # a recipe change reprocesses everything
    changed = make_spec([*PROCESS[:-1], {"document_minhash_deduplicator": {"jaccard_threshold": 0.9}}])
    result = materialize(changed, storage, corpus)
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["processed"].value == 400


def test_code_version_is_the_recipe_hash():
    spec = make_spec(PROCESS)
    asset = next(iter(cleaning.build_defs(spec).assets))
    versions = set(asset.code_versions_by_key.values())
    assert versions == {cleaning.Recipe.from_process(PROCESS).hash}
    assert cleaning.build_defs(DatasetSpec.model_validate(
        {"name": "x", "sources": [{"type": "folder", "path": "p"}]})).assets in (None, [], ())


def test_a_selection_of_cleaned_alone_runs(tmp_path):
    """`--select '*mydocs/indexed'` selects `cleaned` without `cleaning_drops`: the multi-asset can be subset."""
    storage = ObjectStore(url=f"file://{tmp_path}")
    spec = make_spec(PROCESS)
    tables.write(storage, spec.name, "collected", generate(50, seed=2).table)
    result = dg.materialize([*cleaning.build_defs(spec).assets, dg.SourceAsset(key(spec, "collected"))],
                            selection=[key(spec, "cleaned")],
                            resources={"storage": storage, "io_manager": DeltaIOManager(storage=storage)})
    assert result.success
    assert [e.asset_key for e in result.get_asset_materialization_events()] == [key(spec, "cleaned")]
    cleaned, drops = outputs(storage, spec)
    assert cleaned.num_rows + drops.num_rows == 50  # the drops table is kept in step with the cleaned one


def test_a_recipe_that_splits_documents_publishes_the_pieces_and_runs_incrementally(tmp_path):
    """text_chunk_mapper: several cleaned rows per document (doc_id and source copied); an incremental run keeps
    the earlier pieces and gives what a run from scratch gives."""
    process = [{"document_deduplicator": {}}, {"text_chunk_mapper": {"max_len": 400, "split_pattern": r"\n"}},
               {"text_length_filter": {"min_len": 50}}, {"document_deduplicator": {}}]
    spec, storage = make_spec(process), ObjectStore(url=f"file://{tmp_path / 'a'}")
    corpus = generate(400, seed=5).table
    result = materialize(spec, storage, corpus.slice(0, 300))
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    split = metadata["operator_stats_json"].value[1]
    assert split["added"] > 0 and split["docs_out"] == split["docs_in"] - split["dropped"] + split["added"]
    cleaned, drops = outputs(storage, spec)
    assert cleaned.num_rows > len(set(cleaned.column("doc_id").to_pylist()))  # several pieces per document
    assert metadata["kept_this_run"].value == cleaned.num_rows

    materialize(spec, storage, corpus)
    fresh = ObjectStore(url=f"file://{tmp_path / 'b'}")
    materialize(spec, fresh, corpus)

    def rows(store):
        # drops by document: one whose duplicate was dropped later (not in the signature index) goes through
        # and is dropped piece by piece instead, as an unsplit document would be by a later step
        cleaned, drops = outputs(store, spec)
        return (sorted(zip(cleaned.column("doc_id").to_pylist(), cleaned.column("text").to_pylist(), strict=True)),
                sorted(set(drops.column("doc_id").to_pylist())))

    assert rows(storage) == rows(fresh)


def test_cleaning_ray_section_sets_the_ray_resources_and_needs_executor_ray():
    import pytest

    from datamate_assets.ray_stages import stage_resources
    from datamate_assets.spec import SpecFileError, validate_spec

    base = {"name": "web", "sources": [{"type": "folder", "path": "unused"}]}
    ray = {"actors": 8, "cpus_per_actor": 2, "memory_mb": 1024, "rows_per_shard": 1000}
    spec = validate_spec({**base, "cleaning": {"executor": "ray", "process": PROCESS, "ray": ray}}, "web.yaml")
    resources = stage_resources(spec.cleaning.ray)
    assert (resources.actors, resources.cpus_per_actor, resources.memory_mb, resources.rows_per_shard) == \
        (8, 2, 1024, 1000)
    assert validate_spec({**base, "cleaning": {"executor": "ray"}}, "web.yaml").cleaning.ray.actors is None
    problems = [
        ("cleaning", "`ray:` sets the Ray resources of `executor: ray`", {"process": PROCESS, "ray": {"actors": 2}}),
        ("cleaning.ray.memory_mb", "greater than or equal to 64", {"executor": "ray", "ray": {"memory_mb": 1}}),
        ("cleaning.ray.actor", "Extra inputs are not permitted", {"executor": "ray", "ray": {"actor": 2}}),
    ]
    for field, reason, section in problems:
        with pytest.raises(SpecFileError) as error:
            validate_spec({**base, "cleaning": section}, "web.yaml")
        assert f"web.yaml: {field}: " in str(error.value) and reason in str(error.value)

    from operators.ray_exec import task_options

    cluster = {"CPU": 4.0, "memory": 8 * 2**30}
    assert task_options(resources, cluster) == ({"num_cpus": 2, "memory": 1024 * 2**20}, {"batch_size": 1000})
    assert task_options(None, cluster) == ({}, {})  # Ray's defaults
    with pytest.raises(ValueError, match=r"cleaning: one actor needs 2.0 CPU and 16384 MB .* 8192 MB"):
        task_options(stage_resources(spec.cleaning.ray.model_copy(update={"memory_mb": 16384})), cluster)
