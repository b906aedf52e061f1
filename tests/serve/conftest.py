"""Knowledge bases in Milvus Lite built with the packaged model, the service app over them, and API keys."""

import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from datamate.api_keys import digest, parse_api_keys
from datamate.service import Backend, create_app
from datamate_resources.embeddings import EmbeddingsResource
from datamate_resources.milvus import KnowledgeBase, MilvusResource
from operators.chunking import ChunkingConfig, chunk_documents
from tests.indexing.conftest import DOCS
from tests.servers import free_port, server_process

REPO = Path(__file__).resolve().parents[2]
READER_KEY, SCOPED_KEY, HASHED_KEY = "reader-key-0123456789", "scoped-key-0123456789", "hashed-key-0123456789"
KEYS_TEXT = (f"reader:{READER_KEY}\nscoped:{SCOPED_KEY}:docs\n# a comment\n"
             f"hashed:sha256:{digest(HASHED_KEY).hex()}:docs,other")
SOURCE_VERSION = "7"


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def chunks_of(docs: dict[str, str]):
    rows = [{"doc_id": name, "text": text, "source_uri": f"file:///{name}.txt"} for name, text in docs.items()]
    return chunk_documents(rows, ChunkingConfig("recursive", 120, 0)).chunks


def build_knowledge_bases(milvus: MilvusResource, embeddings: EmbeddingsResource) -> None:
    """`docs`: the four Debian topics, several chunks each; `other`: one more document."""
    other = {"mail": "Postfix delivers mail. Its main configuration file is /etc/postfix/main.cf. " * 3}
    with milvus.get_client() as client:
        for dataset, docs in (("docs", DOCS), ("other", other)):
            KnowledgeBase(client, dataset, embeddings.get_embeddings(), embeddings.model_name).sync(
                chunks_of(docs), source_version=SOURCE_VERSION
            )


@pytest.fixture(scope="session")
def embeddings() -> EmbeddingsResource:
    return EmbeddingsResource(provider="local")


@pytest.fixture(scope="session")
def lite(tmp_path_factory, embeddings) -> MilvusResource:
    milvus = MilvusResource(provider="local", path=str(tmp_path_factory.mktemp("serve") / "milvus.db"))
    build_knowledge_bases(milvus, embeddings)
    return milvus


@pytest.fixture(scope="session")
def api(lite, embeddings) -> TestClient:
    """The app in this process (no rate limit worth speaking of) over the Milvus Lite knowledge bases."""
    app = create_app(Backend(lite, embeddings), parse_api_keys(KEYS_TEXT, "test keys"), rate=1000, burst=1000)
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="session")
def served(tmp_path_factory, embeddings):
    """`datamate serve` as its own process on a loopback port, over its own Milvus Lite database.
    Yields (base URL, log path)."""
    home = tmp_path_factory.mktemp("served")
    build_knowledge_bases(MilvusResource(provider="local", path=str(home / "milvus.db")), embeddings)
    port, log = free_port(), home / "serve.log"
    env = {"DATAMATE_HOME": str(home), "DATAMATE_MILVUS_URI": str(home / "milvus.db"), "DATAMATE_API_KEYS": KEYS_TEXT}
    args = [sys.executable, "-c", "import sys; from datamate_assets.cli import main; sys.exit(main())",
            "serve", "--port", str(port)]
    with server_process(args, port, log, timeout=180, env=env, cwd=REPO):
        yield f"http://127.0.0.1:{port}", log
