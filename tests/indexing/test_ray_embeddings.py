"""`index.executor: ray`: the model runs in Ray actors (local Ray here), with the in-process model's vectors."""

import dagster as dg
import numpy as np
import pyarrow as pa

from datamate_assets.indexing import build_defs
from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec
from datamate_resources import tables
from datamate_resources.embeddings import RayEmbeddings
from datamate_resources.io_manager import DeltaIOManager
from datamate_resources.milvus import KnowledgeBase
from datamate_resources.ray import DatamateRay
from datamate_resources.storage import ObjectStore
from tests.indexing.conftest import DOCS


def test_ray_actors_give_the_local_vectors_in_order(local_ray, embeddings):
    texts = [f"{name}: {text[:80 + 10 * i]}" for i, (name, text) in enumerate(DOCS.items())] * 3
    model = RayEmbeddings(embeddings.model_factory(), batch_size=2)  # several batches over two actors
    try:
        assert len(model.actors) == 2
        distributed = np.array(model.embed_documents(texts))
    finally:
        model.close()
    local = np.array(embeddings.get_embeddings().embed_documents(texts))
    assert distributed.shape == local.shape == (len(texts), 384)
    np.testing.assert_allclose(distributed, local, atol=1e-5)


def test_the_indexed_asset_on_ray_matches_the_local_one(local_ray, tmp_path, lite, embeddings):
    docs = pa.Table.from_pylist([{"doc_id": d, "text": t, "source_uri": f"file:///{d}.txt", "recipe_hash": "r1"}
                                 for d, t in DOCS.items()])
    hits = {}
    for executor in ("local", "ray"):
        spec = DatasetSpec.model_validate({
            "name": f"kb_{executor}", "sources": [{"type": "folder", "path": "unused"}],
            "index": {"chunk_size": 200, "chunk_overlap": 0, "executor": executor},
        })

        @dg.asset(key=key(spec, "cleaned"), group_name=spec.name)
        def cleaned() -> pa.Table:
            return docs

        storage = ObjectStore(url=f"file://{tmp_path / executor}")
        resources = {"io_manager": DeltaIOManager(storage=storage), "storage": storage, "milvus": lite,
                     "embeddings": embeddings, "ray": DatamateRay()}
        result = dg.materialize([cleaned, *build_defs(spec).assets], resources=resources)
        assert result.success
        metadata = result.asset_materializations_for_node(f"kb_{executor}__indexed")[0].metadata
        assert metadata["executor"].value == executor
        assert metadata["vectors"].value == metadata["chunks"].value == metadata["embedded"].value > 4
        if executor == "ray":  # the actors wrote the vectors table the run process upserted from
            assert tables.read_stage(storage, spec.name, "vectors").num_rows == metadata["embedded"].value
            assert metadata["ray_actors"].value >= 1 and 0 < metadata["ray_mean_actor_utilisation"].value <= 1
        with lite.get_client() as client:
            kb = KnowledgeBase(client, spec.name, embeddings.get_embeddings(), embeddings.model_name)
            hits[executor] = [[(h["chunk_id"], round(h["score"], 4)) for h in found]
                              for found in kb.search(["Which port does OpenSSH use?", "Where are mirrors?"], k=3)]
    assert hits["ray"] == hits["local"]
