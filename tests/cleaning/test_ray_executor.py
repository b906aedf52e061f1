"""The Ray executor (local Ray started in-process) gives exactly the local executor's output."""

import pyarrow as pa
import pytest

from bench.corpus import generate
from datamate_resources.ray import DatamateRay, RayUnreachableError
from operators.recipe import Recipe, run_local, run_ray

PROCESS = [
    {"clean_html_mapper": {}},
    {"clean_email_mapper": {}},
    {"text_length_filter": {"min_len": 100}},
    {"document_deduplicator": {"lowercase": True, "collapse_whitespace": True}},
    {"document_minhash_deduplicator": {"jaccard_threshold": 0.7}},
    {"document_simhash_deduplicator": {}},
    {"document_line_deduplicator": {}},
]


def test_unreachable_cluster_is_a_clear_error():
    """Runs before the local Ray fixture starts (an initialized Ray would be reused)."""
    import dagster as dg

    resource = DatamateRay(address="ray://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(RayUnreachableError, match=r"127\.0\.0\.1:9.*DATAMATE_RAY_ADDRESS"):
        resource.connect(dg.build_init_resource_context())
    import ray

    ray.shutdown()  # a failed client connect leaves half-initialized state behind that breaks the next ray.init


def test_ray_and_local_executors_agree(local_ray):
    corpus = generate(600, seed=3)
    table = corpus.table.append_column("extra", pa.array(range(corpus.table.num_rows)))
    recipe = Recipe.from_process(PROCESS)
    local = run_local(recipe, table)
    distributed = run_ray(recipe, table, num_blocks=3)
    assert local.kept.equals(distributed.kept)
    # the streaming runner writes drops as each step makes them; Ray gathers them in input order
    assert local.drops.sort_by("extra").equals(distributed.drops.sort_by("extra"))
    assert [(s.docs_in, s.dropped, s.changed) for s in local.stats] == \
        [(s.docs_in, s.dropped, s.changed) for s in distributed.stats]
    by_operator = set(local.drops.column("operator").to_pylist())
    assert {"text_length_filter", "document_deduplicator", "document_minhash_deduplicator"} <= by_operator
    assert local.kept.num_rows + local.drops.num_rows == table.num_rows


def test_the_cleaned_asset_on_ray_equals_the_local_one(local_ray, tmp_path):
    """`cleaning.executor: ray` in a spec: the asset takes the Ray resource and publishes the same tables."""
    import dagster as dg

    from datamate_assets import cleaning
    from datamate_assets.keys import key
    from datamate_assets.spec import DatasetSpec
    from datamate_resources import tables
    from datamate_resources.io_manager import DeltaIOManager
    from datamate_resources.storage import ObjectStore

    corpus = generate(300, seed=5).table
    published = {}
    for executor in ("local", "ray"):
        spec = DatasetSpec.model_validate({
            "name": f"web_{executor}", "sources": [{"type": "folder", "path": "unused"}],
            "cleaning": {"executor": executor, "process": PROCESS},
        })
        storage = ObjectStore(url=f"file://{tmp_path / executor}")
        tables.write(storage, spec.name, "collected", corpus)
        defs = cleaning.build_defs(spec)
        result = dg.materialize(
            [*defs.assets, dg.SourceAsset(key(spec, "collected"))],
            resources={"storage": storage, "io_manager": DeltaIOManager(storage=storage),
                       "ray": DatamateRay()},
        )
        assert result.success
        published[executor] = [
            tables.read_stage(storage, spec.name, stage).drop_columns(["recipe_hash"])
            if stage == "cleaned" else tables.read_stage(storage, spec.name, stage)
            for stage in ("cleaned", "cleaning_drops")
        ]
    assert published["ray"][0].equals(published["local"][0])
    order = [("source_uri", "ascending"), ("doc_id", "ascending")]
    assert published["ray"][1].sort_by(order).equals(published["local"][1].sort_by(order))
    assert published["ray"][0].num_rows + published["ray"][1].num_rows == corpus.num_rows


def test_a_block_with_no_candidate_pair_gives_an_empty_fingerprint_table():
    """A Ray block whose documents are in no candidate pair (seen on a 2-node cluster) must not fail."""
    from operators.recipe import _fingerprint_rows, with_bookkeeping
    from operators.registry import build_operator

    block = with_bookkeeping(pa.table({"doc_id": ["a", "b"], "text": ["first text here", "second text there"]}))
    op = build_operator("document_minhash_deduplicator", {})
    assert _fingerprint_rows(block, op, "text", wanted=set()).num_rows == 0
    assert _fingerprint_rows(block, op, "text", wanted={1}).column("name").to_pylist() == ["doc b"]
