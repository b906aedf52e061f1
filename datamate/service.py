"""The knowledge bases over HTTP: the FastAPI app behind `datamate serve` (docs/serving.md).

- `POST /v1/search`: top-k chunks of one dataset for a query (or several), hybrid/dense/sparse, metadata filter,
  at most `per_doc` hits per document; each hit has the dense cosine as `score` next to its rank.
- `GET /v1/datasets`: the knowledge bases the key may read, with chunk counts, model and source version.
- `GET /healthz` (the process answers), `GET /readyz` (Milvus answers), OpenAPI docs at `/docs`.

Every /v1 call needs `Authorization: Bearer <key>` (see `datamate.api_keys`): 401 without a valid key, 403 for a
dataset outside its scope, 429 with `Retry-After` over its rate. Milvus failures are 503s naming the backend;
a Milvus server connection is dropped after a failure and opened again by the next request, so the service
recovers by itself when Milvus is back.

Concurrent searches of one dataset with the same parameters are batched (`datamate.batching`): one embedding call
and one Milvus search answer all their queries, each request gets its own hits (or the batch's error).
"""

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Annotated, Any, Literal, NamedTuple

import grpc
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, field_validator, model_validator
from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

from datamate.api_keys import ApiKey, KeyRing, RateLimiter
from datamate.batching import Batcher
from datamate.rerank import HOW_TO_ENABLE
from datamate_resources.embeddings import EmbeddingsResource, MiniLMOnnxEmbeddings
from datamate_resources.milvus import (
    SEARCH_MODES,
    KnowledgeBase,
    MilvusResource,
    MilvusUnavailableError,
    filter_expression,
    list_datasets,
)
from operators.rerank import LLMReranker

log = logging.getLogger("datamate.serve")

MAX_QUERY_CHARS = 2_000
MAX_QUERIES = 32
MAX_K = 100
# A knowledge base's source version is read again after this long (a describe RPC per search cost ~10% of it): a
# rebuilt index shows its new version within seconds.
VERSION_SECONDS = 5.0


class SearchRequest(BaseModel):
    dataset: str = Field(pattern=r"^[A-Za-z0-9_]+$", description="The dataset whose knowledge base to search")
    query: str | None = Field(None, description="One question (or use `queries`)")
    queries: list[str] | None = Field(None, min_length=1, max_length=MAX_QUERIES, description="Several questions")
    k: int = Field(5, ge=1, le=MAX_K, description="Hits per query")
    mode: Literal[SEARCH_MODES] = Field("hybrid", description="hybrid (dense + BM25, RRF), dense or sparse (BM25)")
    filter: dict[str, Any] | None = Field(
        None, description="Metadata conditions, all of which must hold: {field: value or [values]} on chunk_id, "
        "doc_id, source_uri, recipe_hash, position", examples=[{"doc_id": ["apt", "ssh"]}],
    )
    per_doc: int | None = Field(None, ge=1, le=MAX_K, description="At most this many hits per document")
    rerank: bool = Field(False, description="Re-order the candidates with the re-ranking LLM (when the service has "
                         "one: DATAMATE_RERANK_LLM=1); up to 3k candidates, the top k returned")

    @field_validator("query")
    @classmethod
    def _query_text(cls, query: str | None) -> str | None:
        return None if query is None else _checked_query(query)

    @field_validator("queries")
    @classmethod
    def _queries_text(cls, queries: list[str] | None) -> list[str] | None:
        return None if queries is None else [_checked_query(q) for q in queries]

    @field_validator("filter")
    @classmethod
    def _filter_fields(cls, conditions: dict | None) -> dict | None:
        filter_expression(conditions)  # raises ValueError naming the field
        return conditions

    @model_validator(mode="after")
    def _one_of_query_or_queries(self) -> "SearchRequest":
        if (self.query is None) == (self.queries is None):
            raise ValueError("give exactly one of `query` (a string) or `queries` (a list of strings)")
        return self


def _checked_query(query: str) -> str:
    if not query.strip():
        raise ValueError("the query is empty")
    if len(query) > MAX_QUERY_CHARS:
        raise ValueError(f"the query has {len(query)} characters, more than the {MAX_QUERY_CHARS} allowed")
    return query


class Hit(BaseModel):
    chunk_id: str
    doc_id: str
    text: str
    score: float = Field(description="Cosine similarity of query and chunk (dense model): comparable across queries")
    rank: int
    rank_score: float = Field(description="What ordered the search: RRF score (hybrid), BM25 (sparse), cosine (dense)")
    search_rank: int | None = Field(None, description="With `rerank`: the rank the search gave before re-ranking")
    source_uri: str
    title: str | None
    metadata: dict[str, Any]


class QueryHits(BaseModel):
    query: str
    hits: list[Hit]


class RerankInfo(BaseModel):
    model: str = Field(description="The re-ranking model")
    reordered: int = Field(description="Queries whose hits come in the model's order")
    kept: list[str] = Field(description="For the others: why the search order was kept (the search never fails "
                            "for the re-ranker)")


class SearchResponse(BaseModel):
    dataset: str
    dataset_version: str | None = Field(description="Version of the chunks the knowledge base was built from")
    mode: str = Field(description="The mode used (a dense-only knowledge base answers `hybrid` with `dense`)")
    hits: list[Hit] | None = Field(None, description="For `query`")
    results: list[QueryHits] | None = Field(None, description="For `queries`, in their order")
    rerank: RerankInfo | None = Field(None, description="What re-ranking did, when requested")


class Dataset(BaseModel):
    name: str
    chunks: int
    embedding_model: str | None
    dimension: int | None
    hybrid: bool
    index_type: str | None
    source_version: str | None


class Searched(NamedTuple):
    """One query's hits from a (batched) search, with what the search said about the knowledge base."""

    hits: list[dict]
    version: str | None
    mode: str
    batch: int  # queries in the search that answered it


class Backend:
    """Milvus and the embedding model for the service.

    A Milvus server connection is shared by every request (pymilvus clients are thread-safe) and dropped after
    a failure, so the next request reconnects. Milvus Lite lets one process open a database at a time, so it is
    opened per search and released after, one search at a time: runs can still write the knowledge base.
    """

    def __init__(self, milvus: MilvusResource, embeddings: EmbeddingsResource, batcher: Batcher | None = None):
        self.milvus = milvus
        self.embeddings = embeddings
        model = embeddings.get_embeddings()
        if isinstance(model, MiniLMOnnxEmbeddings):
            # A query is too short to gain from a second thread: one thread answers it as fast (2 ms) for half
            # the CPU, which concurrent requests, Milvus and the HTTP server use (measured). Set before its
            # session is made (on the first embedding).
            model.threads = 1
        self.where = milvus.describe()
        self.batcher = batcher or Batcher(max_items=MAX_QUERIES)
        self._lock = threading.Lock()
        self._client: MilvusClient | None = None
        self._knowledge_bases: dict[str, KnowledgeBase] = {}
        self._versions: dict[str, tuple[float, str | None]] = {}  # dataset -> (read at, source version)

    @contextlib.contextmanager
    def client(self) -> Iterator[MilvusClient]:
        try:
            if self.milvus.provider == "local":
                with self._lock, self.milvus.get_client() as client:
                    yield client
                return
            with self._lock:
                if self._client is None:
                    self._client = self.milvus.connect_server()
            yield self._client
        except (MilvusUnavailableError, MilvusException, grpc.RpcError) as error:
            # a raw gRPC error (e.g. DEADLINE_EXCEEDED while a restarted server loads its collections) is a backend
            # failure too, not a 500
            self.reset()
            message = error.message if isinstance(error, MilvusException) else str(error)
            raise MilvusUnavailableError(message if self.where in message else f"{self.where}: {message}") from error

    def reset(self) -> None:
        with self._lock:
            client, self._client, self._knowledge_bases, self._versions = self._client, None, {}, {}
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    @contextlib.contextmanager
    def knowledge_base(self, dataset: str) -> Iterator[KnowledgeBase]:
        with self.client() as client:
            knowledge_base = self._knowledge_bases.get(dataset)
            if knowledge_base is None or knowledge_base.client is not client:
                knowledge_base = KnowledgeBase(
                    client, dataset, self.embeddings.get_embeddings(), self.embeddings.model_name,
                    where=self.where, timeout=self.milvus.timeout_seconds, logger=log, read_consistency="Bounded",
                )
                if self.milvus.provider != "local":  # keeps its loaded layout across requests
                    self._knowledge_bases[dataset] = knowledge_base
            yield knowledge_base

    def datasets(self) -> list[str]:
        with self.client() as client:
            return list_datasets(client, timeout=self.milvus.timeout_seconds)

    def search(self, dataset: str, queries: list[str], k: int, *, mode: str, filter: dict | None,
               per_doc: int | None) -> list[Searched]:
        """`KnowledgeBase.search`, batched with the concurrent searches of the same dataset and parameters; its
        errors (LookupError for a missing knowledge base, ValueError, MilvusUnavailableError) reach each of them."""

        def search_all(batch: list[str]) -> list[Searched]:
            with self.knowledge_base(dataset) as knowledge_base:
                found = knowledge_base.search(batch, k, mode=mode, filter=filter, per_doc=per_doc)
                version = self._source_version(dataset, knowledge_base)
                used = mode if knowledge_base.search_layout().hybrid else "dense"
            return [Searched(hits, version, used, len(batch)) for hits in found]

        key = (dataset, mode, k, json.dumps(filter, sort_keys=True), per_doc)
        return self.batcher.run(key, queries, search_all)

    def _source_version(self, dataset: str, knowledge_base: KnowledgeBase) -> str | None:
        read_at, version = self._versions.get(dataset, (float("-inf"), None))
        if time.monotonic() - read_at > VERSION_SECONDS:
            version = knowledge_base.source_version()
            self._versions[dataset] = (time.monotonic(), version)
        return version


def create_app(backend: Backend, keys: list[ApiKey], *, rate: float = 20.0, burst: int = 40,
               reranker: LLMReranker | None = None) -> FastAPI:
    """`reranker` (see `datamate.rerank`) serves `rerank: true`; without one such requests are a 400."""
    ring, limiter = KeyRing(keys), RateLimiter(rate, burst)
    bearer = HTTPBearer(auto_error=False, description="An API key from DATAMATE_API_KEYS")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        backend.embeddings.get_embeddings().embed_query("warm up")  # load the model before the first request
        yield
        backend.reset()

    app = FastAPI(
        title="DataMate knowledge bases", version="1",
        description="Search the knowledge bases DataMate builds (hybrid dense + BM25 over Milvus).",
        lifespan=lifespan,
    )

    def caller(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> ApiKey:
        key = ring.authenticate(credentials.credentials) if credentials else None
        if key is None:
            raise HTTPException(
                401, "missing or unknown API key: send `Authorization: Bearer <key>`",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if wait := limiter.acquire(key.name):
            log.warning("rate limit: key %s must wait %ss", key.name, wait)
            raise HTTPException(429, f"rate limit of {rate:g} requests/s exceeded for key {key.name!r}",
                                headers={"Retry-After": str(wait)})
        return key

    Caller = Annotated[ApiKey, Depends(caller)]

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item["loc"] if part != "body")
            if item["type"] == "json_invalid":
                problems.append(f"the request body is not valid JSON ({item.get('ctx', {}).get('error', '')})")
            else:
                message = item["msg"].removeprefix("Value error, ")
                problems.append(f"{where}: {message}" if where else message)
        return JSONResponse({"detail": "; ".join(problems)}, status_code=400)

    @app.exception_handler(MilvusUnavailableError)
    async def backend_down(request: Request, error: MilvusUnavailableError) -> JSONResponse:
        log.error("backend unavailable: %s", error)
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "5"})

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz() -> dict:
        backend.datasets()  # a 503 naming the backend when Milvus does not answer
        return {"status": "ready", "backend": backend.where}

    @app.get("/v1/datasets", response_model=list[Dataset], tags=["knowledge bases"])
    def datasets(key: Caller) -> list[Dataset]:
        found = []
        for name in (n for n in backend.datasets() if key.allows(n)):
            with backend.knowledge_base(name) as knowledge_base:
                found.append(Dataset(name=name, **knowledge_base.info()))
        return found

    @app.post("/v1/search", response_model=SearchResponse, tags=["knowledge bases"])
    def search(request: SearchRequest, key: Caller) -> SearchResponse:
        if not key.allows(request.dataset):
            raise HTTPException(403, f"key {key.name!r} may not read dataset {request.dataset!r}")
        if request.rerank and reranker is None:
            raise HTTPException(400, f"rerank: this service has no re-ranking model; to start it with one, "
                                f"{HOW_TO_ENABLE}")
        k = reranker.candidates(request.k) if request.rerank else request.k
        started = time.perf_counter()
        queries = request.queries or [request.query]
        try:
            searched = backend.search(request.dataset, queries, k, mode=request.mode, filter=request.filter,
                                      per_doc=request.per_doc)
        except LookupError:
            known = [name for name in backend.datasets() if key.allows(name)]
            raise HTTPException(404, f"dataset {request.dataset!r} has no knowledge base; known: {known}") from None
        except ValueError as error:
            raise HTTPException(400, str(error)) from None
        found = [s.hits for s in searched]
        version, mode = searched[0].version, searched[0].mode
        rerank = None
        if request.rerank:  # after the knowledge base is released: Milvus Lite is not held during the LLM call
            reranked = reranker.rerank(queries, found, request.k)
            found = [result.hits for result in reranked]
            rerank = RerankInfo(model=reranker.model_name, reordered=sum(r.reordered for r in reranked),
                                kept=[f"{q[:80]!r}: {r.note}"
                                      for q, r in zip(queries, reranked, strict=True) if r.note])
        results = [QueryHits(query=q, hits=[_hit(h) for h in hits]) for q, hits in zip(queries, found, strict=True)]
        log.info("search key=%s dataset=%s queries=%d k=%d mode=%s rerank=%s batch=%d in %.0f ms", key.name,
                 request.dataset, len(queries), request.k, mode, request.rerank, searched[0].batch,
                 (time.perf_counter() - started) * 1000)
        if request.queries is None:
            return SearchResponse(dataset=request.dataset, dataset_version=version, mode=mode, hits=results[0].hits,
                                  rerank=rerank)
        return SearchResponse(dataset=request.dataset, dataset_version=version, mode=mode, results=results,
                              rerank=rerank)

    return app


def _hit(hit: dict) -> Hit:
    return Hit(
        chunk_id=hit["chunk_id"], doc_id=hit["doc_id"], text=hit["text"], score=hit["score"], rank=hit["rank"],
        rank_score=hit["rank_score"], search_rank=hit.get("search_rank"), source_uri=hit["source_uri"],
        title=hit["title"],
        metadata={"position": hit["position"], "headings": hit["headings"]},
    )
