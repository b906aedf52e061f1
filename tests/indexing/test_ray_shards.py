"""`executor: ray` on chunking, annotation and indexing's embedding: Ray actors read shards of the input Delta
version and write the output parts, the step commits them; outputs equal the local executor's."""

import dagster as dg
import pyarrow as pa
import pytest

from datamate_assets import annotation, indexing
from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec, SpecFileError, validate_spec
from datamate_resources import tables
from datamate_resources.embeddings import EmbeddingsResource
from datamate_resources.io_manager import DeltaIOManager
from datamate_resources.ray import DatamateRay
from datamate_resources.storage import ObjectStore
from operators.ray_shards import RayStageResources
from tests.indexing.conftest import DOCS
from tests.llm.conftest import openai_resource
from tests.llm.test_annotation_assets import DOCS as MULTILINGUAL
from tests.llm.test_annotation_assets import TOPICS

# Enough documents for several shards of 4 rows over the two actors of the local Ray.
CORPUS = [{"doc_id": f"{name}-{copy}", "text": f"{text} (copy {copy})", "source_uri": f"file:///{name}.txt",
           "recipe_hash": "r1"} for copy in range(3) for name, text in DOCS.items()]
CORPUS += [{"doc_id": doc_id, "text": text, "source_uri": "file:///m.txt", "recipe_hash": "r1"}
           for doc_id, text in MULTILINGUAL.items()]
CORPUS.append({"doc_id": "blank", "text": "   ", "source_uri": "file:///blank.txt", "recipe_hash": "r1"})


def spec_for(executor: str) -> DatasetSpec:
    ray = {"ray": {"rows_per_shard": 4}} if executor == "ray" else {}
    return DatasetSpec.model_validate({
        "name": "shards", "sources": [{"type": "folder", "path": "unused"}],
        "annotation": {"labels": TOPICS, "executor": executor, **ray},
        "index": {"chunk_size": 120, "chunk_overlap": 20, "executor": executor, **ray},
    })


def materialize(spec: DatasetSpec, store: ObjectStore, selection: list[str], milvus):
    @dg.asset(key=key(spec, "cleaned"), group_name=spec.name)
    def cleaned() -> pa.Table:
        return pa.Table.from_pylist(CORPUS)

    assets = [cleaned, *annotation.build_defs(spec).assets, *indexing.build_defs(spec).assets]
    result = dg.materialize(assets, selection=selection, resources={
        "storage": store, "io_manager": DeltaIOManager(storage=store), "embeddings": EmbeddingsResource(),
        "llm": openai_resource("http://127.0.0.1:9/v1"),  # never asked: topics come from the embeddings
        "ray": DatamateRay(), "milvus": milvus,
    })
    assert result.success
    return result


def test_chunks_and_annotations_on_ray_equal_the_local_ones(local_ray, tmp_path, lite):
    outputs, metadata = {}, {}
    for executor in ("local", "ray"):
        store = ObjectStore(url=f"file://{tmp_path / executor}")
        result = materialize(spec_for(executor), store, ["shards/cleaned", "shards/chunks", "shards/annotated"],
                             lite)
        outputs[executor] = {stage: tables.read_stage(store, "shards", stage) for stage in ("chunks", "annotated")}
        metadata[executor] = {stage: result.asset_materializations_for_node(f"shards__{stage}")[0].metadata
                              for stage in ("chunks", "annotated")}

    local_chunks, ray_chunks = (outputs[e]["chunks"].sort_by("chunk_id") for e in ("local", "ray"))
    assert ray_chunks.num_rows == local_chunks.num_rows > len(CORPUS)
    assert ray_chunks.equals(local_chunks)
    local_labels, ray_labels = (outputs[e]["annotated"].sort_by("doc_id").to_pylist() for e in ("local", "ray"))
    assert len(ray_labels) == len(CORPUS)
    for here, there in zip(local_labels, ray_labels, strict=True):
        # Vectors of a text depend in the last float bits on what it was padded with in its batch.
        assert there["topic_confidence"] == pytest.approx(here["topic_confidence"], abs=1e-4)
        assert {k: v for k, v in there.items() if k not in {"topic_confidence", "labels"}} == \
               {k: v for k, v in here.items() if k not in {"topic_confidence", "labels"}}

    for stage in ("chunks", "annotated"):
        local, ray = metadata["local"][stage], metadata["ray"][stage]
        assert ray["executor"].value == "ray" and local["executor"].value == "local"
        assert ray["documents"].value == local["documents"].value == len(CORPUS)
        assert ray["ray_actors"].value == 2 and ray["ray_shards"].value == 4  # 16 rows, 4 per shard
        assert 0 < ray["ray_mean_actor_utilisation"].value <= 1
        assert "utilisation" in ray["ray_actor_utilisation"].value
    assert metadata["ray"]["chunks"]["documents_without_chunks"].value == 1
    assert metadata["ray"]["chunks"]["chunks"].value == ray_chunks.num_rows


def test_ray_resources_are_checked_against_the_spec_and_the_cluster():
    cluster = {"CPU": 4.0, "memory": 8 * 2**30}
    assert RayStageResources().actor_count(cluster, "d/chunks") == 4
    assert RayStageResources(cpus_per_actor=2, memory_mb=3000).actor_count(cluster, "d/chunks") == 2
    with pytest.raises(ValueError, match=r"d/vectors: ray.actors is 5 .* at most 4 actors"):
        RayStageResources(actors=5).actor_count(cluster, "d/vectors")
    with pytest.raises(ValueError, match=r"one actor needs 8 CPU .* has 4 CPUs"):
        RayStageResources(cpus_per_actor=8).actor_count(cluster, "d/annotated")

    base = {"name": "d", "sources": [{"type": "folder", "path": "x"}]}
    problems = [
        ("index", "`ray:` sets the Ray resources of `executor: ray`", {"index": {"ray": {"actors": 2}}}),
        ("index.ray.cpus_per_actor", "greater than 0", {"index": {"executor": "ray", "ray": {"cpus_per_actor": 0}}}),
        ("annotation", "labels topics with the embedding model only",
         {"annotation": {"labels": ["a"], "labeler": "llm", "executor": "ray"}}),
    ]
    for field, reason, section in problems:
        with pytest.raises(SpecFileError) as error:
            validate_spec({**base, **section}, "d.yaml")
        assert f"d.yaml: {field}: " in str(error.value) and reason in str(error.value)


def test_shards_cover_every_row_once_and_counters_fold(tmp_path):
    from operators.ray_shards import fold, plan_shards, read_shard

    store = ObjectStore(url=f"file://{tmp_path}")
    ref = tables.write(store, "d", "cleaned", pa.table({"n": list(range(25_000))}))  # 10k-row groups: 3
    shards = plan_shards(ref, rows_per_shard=4_000)
    assert len(shards) == 8  # 10k + 10k + 5k rows, at most 4k per shard
    assert sorted(v for s in shards for v in read_shard(ref, s, ["n"]).column("n").to_pylist()) == list(range(25_000))

    total = fold({}, {"documents": 2, "languages": {"en": 1}, "empty_examples": ["a"] * 15})
    fold(total, {"documents": 3, "languages": {"en": 2, "de": 1}, "empty_examples": ["b"] * 15})
    assert total == {"documents": 5, "languages": {"en": 3, "de": 1}, "empty_examples": ["a"] * 15 + ["b"] * 5}
