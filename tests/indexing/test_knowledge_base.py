"""The knowledge base on both deployments: Milvus Lite (hybrid) and the Milvus 2.3 server (dense only)."""

import json
import logging

import pytest

from datamate_resources.milvus import KnowledgeBase, MilvusResource, MilvusUnavailableError
from operators.chunking import ChunkingConfig, chunk_documents
from tests.indexing.conftest import DOCS

CONFIG = ChunkingConfig("recursive", 200, 0)


def chunks_of(docs: dict[str, str]):
    rows = [{"doc_id": d, "text": t, "source_uri": f"file:///{d}.txt", "recipe_hash": "r1"} for d, t in docs.items()]
    return chunk_documents(rows, CONFIG).chunks


class CountingEmbeddings:
    """The real model, counting what it is asked to embed (to prove unchanged chunks are not re-embedded)."""

    def __init__(self, inner):
        self.inner, self.documents = inner, 0

    def embed_documents(self, texts):
        self.documents += len(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text):
        return self.inner.embed_query(text)


@pytest.fixture(params=["lite", "server"])
def milvus(request, lite) -> MilvusResource:
    if request.param == "lite":
        return lite
    return MilvusResource(provider="server", uri=request.getfixturevalue("server_uri"), timeout_seconds=20)


def test_sync_is_idempotent_and_follows_document_changes(milvus, embeddings, request, caplog):
    dataset = f"kb_{request.node.callspec.id}"
    counting = CountingEmbeddings(embeddings.get_embeddings())
    first = chunks_of(DOCS)
    with milvus.get_client() as client:
        kb = KnowledgeBase(client, dataset, counting, embeddings.model_name, where=milvus.describe())
        if kb.exists():
            client.drop_collection(kb.name)
        with caplog.at_level(logging.INFO, logger="datamate.milvus"):
            report = kb.sync(first)
        assert (report.embedded, report.vectors, report.chunks) == (first.num_rows, first.num_rows, first.num_rows)
        hybrid = milvus.provider == "local"
        assert report.layout.hybrid is hybrid
        assert ("no BM25 full-text search" in caplog.text) is not hybrid  # the 2.3 server degrades, and says so

        counting.documents = 0
        again = kb.sync(first)
        assert not again.changed and counting.documents == 0 and again.vectors == first.num_rows

        # One document changed, one removed: only the changed one's new chunks are embedded.
        changed = {**DOCS, "ssh": DOCS["ssh"].replace("port 22", "port 2222")}
        del changed["boot"]
        second = chunks_of(changed)
        report = kb.sync(second)
        new_ids = set(second["chunk_id"].to_pylist()) - set(first["chunk_id"].to_pylist())
        assert report.embedded == counting.documents == len(new_ids) > 0
        assert report.deleted == first.num_rows - (second.num_rows - len(new_ids))
        stored = kb.chunk_ids()
        assert sorted(stored) == sorted(second["chunk_id"].to_pylist())  # no duplicates, nothing stale

        hits = kb.search(["Which port does the SSH server listen on?", "how to add a package"], k=3)
        assert hits[0][0]["doc_id"] == "ssh" and "2222" in hits[0][0]["text"]
        assert hits[1][0]["doc_id"] == "apt"
        assert set(hits[0][0]) == {"chunk_id", "doc_id", "text", "source_uri", "position", "headings", "title", "rank",
                                   "score", "rank_score"}
        assert json.loads(hits[0][0]["headings"]) == []


def test_a_new_embedding_model_rebuilds_the_collection(lite, embeddings):
    chunks = chunks_of({"apt": DOCS["apt"]})
    with lite.get_client() as client:
        KnowledgeBase(client, "rebuild", embeddings.get_embeddings(), "model-a").sync(chunks, index_type="FLAT")
        report = KnowledgeBase(client, "rebuild", embeddings.get_embeddings(), "model-b").sync(chunks)
    assert report.rebuilt and report.embedded == chunks.num_rows
    assert (report.layout.model, report.layout.index_type) == ("model-b", "HNSW")


def test_search_on_a_missing_collection_says_what_to_do(lite, embeddings):
    with lite.get_client() as client, pytest.raises(LookupError, match="materialize its `indexed` asset"):
        KnowledgeBase(client, "nothing", embeddings.get_embeddings(), embeddings.model_name).search(["q"])


def test_unreachable_server_is_named(embeddings):
    from tests.servers import free_port

    port = free_port()
    milvus = MilvusResource(provider="server", uri=f"http://127.0.0.1:{port}", timeout_seconds=3)
    with pytest.raises(MilvusUnavailableError, match=f"Milvus server at 127.0.0.1:{port} is unreachable"):
        with milvus.get_client():
            pass


class FailAt:
    """The real model, failing at embedding call `at` (a run that dies in the middle of indexing)."""

    def __init__(self, inner, at: int):
        self.inner, self.at, self.documents = inner, at, 0

    def embed_documents(self, texts):
        self.at -= 1
        if self.at == 0:
            raise RuntimeError("the run died")
        self.documents += len(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text):
        return self.inner.embed_query(text)


def test_an_interrupted_bulk_load_resumes(lite, embeddings):
    """A first build in Milvus Lite releases the collection while writing and builds the index at the end; a run
    that dies in between leaves a released, partly filled collection, which the next sync loads and completes."""
    rows = [{"doc_id": f"{name}{n}", "text": f"Part {n}. {text}", "source_uri": f"file:///{name}{n}.txt"}
            for n in range(3) for name, text in DOCS.items()]
    chunks = chunk_documents(rows, ChunkingConfig("recursive", 120, 0)).chunks
    dying = FailAt(embeddings.get_embeddings(), at=3)
    with lite.get_client() as client, pytest.raises(RuntimeError, match="the run died"):
        KnowledgeBase(client, "bulk", dying, embeddings.model_name).sync(chunks, batch_size=16)
    assert dying.documents == 32

    with lite.get_client() as client:  # reopened, as the next run would
        counting = CountingEmbeddings(embeddings.get_embeddings())
        kb = KnowledgeBase(client, "bulk", counting, embeddings.model_name)
        report = kb.sync(chunks, batch_size=16)
        assert (report.unchanged, report.embedded) == (32, chunks.num_rows - 32) == (32, counting.documents)
        assert "index" not in report.seconds  # not empty at the start: no bulk load
        assert sorted(kb.chunk_ids()) == sorted(chunks["chunk_id"].to_pylist()) and report.vectors == chunks.num_rows
        assert kb.search(["Which port does the SSH server listen on?"], k=1)[0][0]["doc_id"].startswith("ssh")

        fresh = KnowledgeBase(client, "bulk_fresh", embeddings.get_embeddings(), embeddings.model_name)
        report = fresh.sync(chunks, batch_size=16)
        assert "index" in report.seconds and report.vectors == chunks.num_rows
        assert client.get_load_state(fresh.name)["state"].name == "Loaded"


def test_sync_streams_a_delta_table_version(lite, embeddings, tmp_path):
    """From a Delta table the chunks are read in batches (here 3 rows), and each version is synced exactly."""
    from datamate_resources import tables
    from datamate_resources.storage import ObjectStore

    store = ObjectStore(url=f"file://{tmp_path / 'storage'}")
    first = tables.write(store, "kb_delta", "chunks", chunks_of(DOCS))
    changed = {**DOCS, "ssh": DOCS["ssh"].replace("port 22", "port 2222")}
    del changed["boot"]
    second = tables.write(store, "kb_delta", "chunks", chunks_of(changed))
    counting = CountingEmbeddings(embeddings.get_embeddings())
    with lite.get_client() as client:
        kb = KnowledgeBase(client, "kb_delta", counting, embeddings.model_name)
        report = kb.sync(first, batch_size=3)
        assert (report.embedded, report.vectors, counting.documents) == (first.num_rows,) * 3
        report = kb.sync(second, batch_size=3)
        old_ids, new_ids = (set(ref.read(columns=["chunk_id"])["chunk_id"].to_pylist()) for ref in (first, second))
        assert report.embedded == len(new_ids - old_ids) > 0 and report.deleted == len(old_ids - new_ids) > 0
        assert report.unchanged == len(new_ids & old_ids) and report.vectors == second.num_rows
        assert sorted(kb.chunk_ids()) == sorted(new_ids)
        assert not kb.sync(second).changed  # the pinned version again: nothing to do
