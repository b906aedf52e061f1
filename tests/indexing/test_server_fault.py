"""The Milvus server stops in the middle of indexing: a clear error; the retry completes without duplicates."""

import pytest

from datamate_resources.milvus import KnowledgeBase, MilvusResource, MilvusUnavailableError
from operators.chunking import ChunkingConfig, chunk_documents
from tests.indexing.conftest import DOCS
from tests.servers import free_port, kill_process_group, milvus_server


class StopServerAfter:
    """The real model; at embedding batch `calls` it SIGKILLs the Milvus server's whole process group."""

    def __init__(self, inner, calls: int, server):
        self.inner, self.calls, self.server = inner, calls, server

    def embed_documents(self, texts):
        self.calls -= 1
        if self.calls == 0:
            kill_process_group(self.server)  # no graceful stop; returns once every process of the group is gone
        return self.inner.embed_documents(texts)

    def embed_query(self, text):
        return self.inner.embed_query(text)


def test_server_stop_during_indexing_then_retry(tmp_path, embeddings):
    rows = [
        {"doc_id": f"{name}{n}", "text": f"Part {n}. {text}", "source_uri": f"file:///{name}{n}.txt"}
        for n in range(6) for name, text in DOCS.items()
    ]
    chunks = chunk_documents(rows, ChunkingConfig("recursive", 120, 0)).chunks
    assert chunks.num_rows > 100
    port, data = free_port(), tmp_path / "milvus"
    milvus = MilvusResource(provider="server", uri=f"http://127.0.0.1:{port}", timeout_seconds=8)

    with milvus_server(data, port) as server, milvus.get_client() as client:
        kb = KnowledgeBase(client, "fault", StopServerAfter(embeddings.get_embeddings(), 3, server), "minilm",
                           where=milvus.describe(), timeout=milvus.timeout_seconds)
        with pytest.raises(MilvusUnavailableError) as failure:
            kb.sync(chunks, batch_size=32)
    message = str(failure.value)
    assert f"Milvus server at 127.0.0.1:{port}" in message and "upserting chunks" in message
    assert "resumes without re-embedding" in message

    with milvus_server(data, port), milvus.get_client() as client:  # same data dir: what was stored survived
        kb = KnowledgeBase(client, "fault", embeddings.get_embeddings(), "minilm", where=milvus.describe())
        report = kb.sync(chunks, batch_size=32)
        assert 0 < report.embedded < chunks.num_rows  # batches stored before the stop are not embedded again
        assert report.unchanged + report.embedded == chunks.num_rows
        ids = kb.chunk_ids()
        assert report.vectors == len(ids) == len(set(ids)) == chunks.num_rows
        assert sorted(ids) == sorted(chunks["chunk_id"].to_pylist())
