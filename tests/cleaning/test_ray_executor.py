"""The Ray executor (local Ray started in-process) gives exactly the streaming runner's output: through the same
entry point as `datamate clean` (`run_ray_batches`: batches in, kept rows and drops out), through the cleaning
asset with the spec's `cleaning.ray` resources, and through the CLI with `executor_type: ray`."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.corpus import generate
from datamate_resources.ray import DatamateRay, RayUnreachableError
from operators.ray_exec import run_ray_batches
from operators.ray_shards import RayStageResources
from operators.recipe import Recipe
from operators.stream import ParquetSink, run_stream

PROCESS = [
    {"clean_html_mapper": {}},
    {"clean_email_mapper": {}},
    {"text_length_filter": {"min_len": 100}},
    {"document_deduplicator": {"lowercase": True, "collapse_whitespace": True}},
    {"document_minhash_deduplicator": {"jaccard_threshold": 0.7}},
    {"document_simhash_deduplicator": {}},
    {"document_line_deduplicator": {}},
]
PART_ROWS = 150  # input files of the Ray path: several read tasks on these small corpora


def clean(executor: str, recipe: Recipe, table: pa.Table, folder: Path, **ray_options):
    """Kept rows, drops and step statistics of one executor over `table`'s batches."""
    work = folder / executor
    work.mkdir(parents=True)
    kept, drops = ParquetSink(work / "kept.parquet"), ParquetSink(work / "drops.parquet")
    batches = table.to_batches(max_chunksize=100)
    if executor == "local":
        result = run_stream(recipe, batches, work, kept, drops)
    else:
        result = run_ray_batches(recipe, batches, work, kept, drops, part_rows=PART_ROWS, **ray_options)
    kept.close()
    drops.close()
    assert (result.kept, result.dropped) == (kept.rows, drops.rows)
    return pq.read_table(kept.path), pq.read_table(drops.path), result.stats


def counts(stats) -> list[tuple]:
    return [(s.operator, s.docs_in, s.docs_out, s.dropped, s.changed, s.errors, s.added) for s in stats]


def test_unreachable_cluster_is_a_clear_error():
    """Runs before the local Ray fixture starts (an initialized Ray would be reused)."""
    import dagster as dg

    resource = DatamateRay(address="ray://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(RayUnreachableError, match=r"127\.0\.0\.1:9.*DATAMATE_RAY_ADDRESS"):
        resource.connect(dg.build_init_resource_context())
    import ray

    ray.shutdown()  # a failed client connect leaves half-initialized state behind that breaks the next ray.init


def test_ray_and_local_executors_agree(local_ray, tmp_path):
    corpus = generate(600, seed=3)
    table = corpus.table.append_column("extra", pa.array(range(corpus.table.num_rows)))
    recipe = Recipe.from_process(PROCESS)
    local_kept, local_drops, local_stats = clean("local", recipe, table, tmp_path)
    ray_kept, ray_drops, ray_stats = clean("ray", recipe, table, tmp_path)
    assert ray_kept.equals(local_kept)  # same rows, same order (the input's)
    # the streaming runner writes drops as each step makes them, Ray in input order: same rows, operators, reasons
    assert ray_drops.sort_by("extra").equals(local_drops.sort_by("extra"))
    assert counts(ray_stats) == counts(local_stats)
    by_operator = set(local_drops.column("operator").to_pylist())
    assert {"text_length_filter", "document_deduplicator", "document_minhash_deduplicator"} <= by_operator
    assert local_kept.num_rows + local_drops.num_rows == table.num_rows


def test_resources_the_cluster_cannot_hold_are_refused_before_any_work(local_ray, tmp_path):
    recipe = Recipe.from_process([{"text_length_filter": {"min_len": 10}}])
    table = pa.table({"text": ["a text long enough"] * 3})
    with pytest.raises(ValueError, match=r"cleaning: one actor needs 8 CPU .*ray.cpus_per_actor.* has 2 CPUs"):
        clean("ray", recipe, table, tmp_path, resources=RayStageResources(cpus_per_actor=8))


def test_the_cleaned_asset_on_ray_equals_the_local_one(local_ray, tmp_path):
    """`cleaning.executor: ray` in a spec: the asset takes the Ray resource and its `ray:` section (shard actors,
    CPUs per task, rows per batch) and publishes the same tables."""
    import dagster as dg

    from datamate_assets import cleaning
    from datamate_assets.keys import key
    from datamate_assets.spec import DatasetSpec
    from datamate_resources import tables
    from datamate_resources.io_manager import DeltaIOManager
    from datamate_resources.storage import ObjectStore

    corpus = generate(300, seed=5).table
    published, logs = {}, ""
    for executor in ("local", "ray"):
        section = {"executor": executor, "process": PROCESS}
        if executor == "ray":
            section["ray"] = {"actors": 3, "cpus_per_actor": 1, "rows_per_shard": 64}
        spec = DatasetSpec.model_validate({
            "name": f"web_{executor}", "sources": [{"type": "folder", "path": "unused"}], "cleaning": section,
        })
        storage = ObjectStore(url=f"file://{tmp_path / executor}")
        tables.write(storage, spec.name, "collected", corpus)
        defs = cleaning.build_defs(spec)
        instance = dg.DagsterInstance.ephemeral()
        result = dg.materialize(
            [*defs.assets, dg.SourceAsset(key(spec, "collected"))],
            resources={"storage": storage, "io_manager": DeltaIOManager(storage=storage),
                       "ray": DatamateRay()}, instance=instance,
        )
        assert result.success
        logs += " ".join(entry.user_message for entry in instance.all_logs(result.run_id))
        published[executor] = [
            tables.read_stage(storage, spec.name, stage).drop_columns(["recipe_hash"])
            if stage == "cleaned" else tables.read_stage(storage, spec.name, stage)
            for stage in ("cleaned", "cleaning_drops")
        ]
    assert "document_minhash_deduplicator (ray): 3 shard actors" in logs  # `ray.actors` of the spec
    assert published["ray"][0].equals(published["local"][0])
    order = [("source_uri", "ascending"), ("doc_id", "ascending")]
    assert published["ray"][1].sort_by(order).equals(published["local"][1].sort_by(order))
    assert published["ray"][0].num_rows + published["ray"][1].num_rows == corpus.num_rows


@pytest.mark.timeout(1200)  # two runs on a busy 2-core machine
def test_cli_with_executor_type_ray_exports_what_the_local_executor_exports(local_ray, tmp_path, capsys):
    """`datamate clean --config` with `executor_type: ray`: same shards, drops and statistics as without (the
    executors' agreement on every kind of step is the first test's; this is the CLI's path in and out)."""
    from datamate_assets.cli import main as datamate

    corpus = generate(300, seed=7).table.select(["doc_id", "source_uri", "text"])
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in corpus.to_pylist()), encoding="utf-8")
    steps = [PROCESS[0], PROCESS[2], PROCESS[3]]  # a mapper, a filter, a dedup step
    process = "".join(f"  - {name}: {json.dumps(params)}\n" for step in steps for name, params in step.items())
    exported = {}
    for executor in ("default", "ray"):
        config = tmp_path / f"{executor}.yaml"
        config.write_text(f"dataset_path: {data}\nexport_path: {tmp_path / executor / 'out.jsonl'}\n"
                          f"export_shard_size: 100000\nexecutor_type: {executor}\nprocess:\n{process}")
        drops, stats = tmp_path / executor / "drops.parquet", tmp_path / executor / "stats.json"
        assert datamate(["clean", "--config", str(config), "--drops", str(drops), "--stats", str(stats)]) == 0
        out = capsys.readouterr().out
        shards = sorted((tmp_path / executor).glob("out-*-of-*.jsonl"))
        rows = [json.loads(line) for shard in shards for line in shard.read_text(encoding="utf-8").splitlines()]
        report = json.loads(stats.read_text())
        exported[executor] = {
            "shards": [shard.name for shard in shards], "rows": rows,
            "stats": [json.loads(line) for line in (tmp_path / executor / "out_stats.jsonl").read_text().splitlines()],
            "drops": sorted(pq.read_table(drops).to_pylist(), key=lambda row: json.dumps(row, sort_keys=True)),
            "report": [(op["operator"], op["docs_in"], op["dropped"], op["changed"]) for op in report["operators"]],
            "counts": (report["input"], report["kept"]),
            "printed": [line.split()[:6] for line in out.splitlines()[1:len(steps) + 1]],
        }
        assert f"kept {len(rows)} of {corpus.num_rows} records -> " in out
        assert not list((tmp_path / executor).glob(".datamate-clean-*"))  # the scratch folder is gone
    assert len(exported["ray"]["shards"]) > 1
    assert exported["ray"] == exported["default"]
    assert {row["operator"] for row in exported["ray"]["drops"]} >= {"text_length_filter", "document_deduplicator"}
