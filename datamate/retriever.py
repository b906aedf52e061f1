"""LangChain retrievers over DataMate knowledge bases, to plug into a chain:

    from datamate.retriever import DatamateRetriever
    retriever = DatamateRetriever(url="http://datamate:8000", api_key=os.environ["KB_API_KEY"],
                                  dataset="debian_docs", k=4, per_doc=1)
    docs = retriever.invoke("How do I pin a package version?")

`DatamateRetriever` calls the HTTP API of `datamate serve`; `KnowledgeBaseRetriever` searches in this process
(`datamate_resources.milvus.open_knowledge_base`, configured from DATAMATE_* variables like the code location).
Both give one `Document` per hit: the chunk text as `page_content`, every other field of the hit in `metadata`.
"""

from typing import Any, Literal

import httpx
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import Field, PrivateAttr, SecretStr


class DatamateRetrieverError(RuntimeError):
    """The service refused the search; the message carries its status and explanation."""


def _document(hit: dict) -> Document:
    metadata = {key: value for key, value in hit.items() if key not in ("text", "metadata")}
    return Document(page_content=hit["text"], metadata={**metadata, **(hit.get("metadata") or {})})


class _SearchOptions(BaseRetriever):
    dataset: str
    k: int = Field(5, ge=1, le=100)
    mode: Literal["hybrid", "dense", "sparse"] = "hybrid"
    filter: dict[str, Any] | None = None
    per_doc: int | None = None


class DatamateRetriever(_SearchOptions):
    """Over the HTTP API (`POST /v1/search`) of `datamate serve`."""

    url: str = Field(description="Base URL of the service, e.g. http://127.0.0.1:8000")
    api_key: SecretStr
    timeout: float = 30.0

    def _request(self, query: str) -> tuple[dict, dict]:
        body = {"dataset": self.dataset, "query": query, "k": self.k, "mode": self.mode, "filter": self.filter,
                "per_doc": self.per_doc}
        headers = {"Authorization": f"Bearer {self.api_key.get_secret_value()}"}
        return {k: v for k, v in body.items() if v is not None}, headers

    def _documents(self, response: httpx.Response) -> list[Document]:
        if response.status_code != 200:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text[:500]
            raise DatamateRetrieverError(f"{self.url}/v1/search answered {response.status_code}: {detail}")
        return [_document(hit) for hit in response.json()["hits"]]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        body, headers = self._request(query)
        response = httpx.post(f"{self.url.rstrip('/')}/v1/search", json=body, headers=headers, timeout=self.timeout)
        return self._documents(response)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        body, headers = self._request(query)
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            response = await client.post(f"{self.url.rstrip('/')}/v1/search", json=body, headers=headers)
        return self._documents(response)


class KnowledgeBaseRetriever(_SearchOptions):
    """In this process, without the service: opens the knowledge base per query (Milvus Lite allows one process
    at a time, so it is not held between queries); the embedding model is loaded once."""

    _embeddings: Any = PrivateAttr(None)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        from datamate_resources.embeddings import build_embeddings
        from datamate_resources.milvus import open_knowledge_base
        from datamate_resources.settings import Settings

        settings = Settings.from_env()
        if self._embeddings is None:
            self._embeddings = build_embeddings(settings).process_config_and_initialize()
        with open_knowledge_base(self.dataset, settings, self._embeddings) as knowledge_base:
            hits = knowledge_base.search([query], self.k, mode=self.mode, filter=self.filter, per_doc=self.per_doc)
        return [_document(hit) for hit in hits[0]]
