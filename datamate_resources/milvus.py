"""The `milvus` resource and `KnowledgeBase`, the plain-Python index and search over one dataset's chunks.

Two providers, one code path (pymilvus `MilvusClient`):
- `local` (embedded default): Milvus Lite, a data directory at `DATAMATE_MILVUS_URI` (default
  `$DATAMATE_HOME/milvus.db`). Milvus Lite runs inside the Python process and holds an exclusive lock on its
  directory while open, so only one process can use it at a time. `get_client()` therefore opens it only for
  the duration of one operation and releases it after; a second process waits up to `lock_wait_seconds`.
  For concurrent use (the UI's runs and `datamate search` at once), run `milvus-lite server --data-dir DIR
  --port 19530` and set `DATAMATE_MILVUS_URI=http://127.0.0.1:19530` (the `server` provider).
- `server`: a Milvus server at a URI, token from `DATAMATE_MILVUS_TOKEN` through `dg.EnvVar`.

BM25 full-text search (for hybrid dense + BM25 retrieval with reciprocal rank fusion) needs Milvus ≥ 2.5 or
Milvus Lite ≥ 3; older servers (e.g. 2.3) get dense-only collections, said in a log line.

Search hits carry two scores: `score`, the cosine similarity of query and chunk under the dense model, which
reads the same across queries and modes, and `rank_score`, the one that ordered the hits (the RRF score in
hybrid mode, BM25 in sparse mode, the cosine in dense mode).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlparse

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from langchain_core.embeddings import Embeddings

from datamate_resources.tables import TableRef

# pymilvus (with the pandas and grpc it loads, ~80 MB) is imported where Milvus is used: every Dagster process
# imports this module.
if TYPE_CHECKING:
    from pymilvus import MilvusClient

log = logging.getLogger("datamate.milvus")


class _MilvusLiteNoise(logging.Filter):
    """pymilvus' query iterator warns that Milvus Lite sent no mvccTs on every page; its own timestamp is correct."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "mvccTs" not in record.getMessage()


for _name in ("pymilvus.client.iterator.query_iterator", "pymilvus.client.iterator.search_iterator"):
    logging.getLogger(_name).addFilter(_MilvusLiteNoise())

VARCHAR_MAX = 65_535
DELETE_BATCH = 1_000
# Loading a collection into Milvus Lite builds the index of every segment not indexed yet, in this process (HNSW
# with faiss: 0.4-3 ms per 384-d row measured on 2 busy cores), so the timeout of a load grows with the rows.
INDEX_SECONDS_PER_ROW = 0.01
RRF_K = 60
LAYOUT_PROPERTY = "datamate.layout"
SOURCE_VERSION_PROPERTY = "datamate.source_version"  # the version of the chunks table the collection holds
COLLECTION_PREFIX = "datamate_"
OUTPUT_FIELDS = ["chunk_id", "doc_id", "text", "source_uri", "position", "headings"]
SEARCH_MODES = ("hybrid", "dense", "sparse")
# How hybrid search fuses the dense and BM25 rankings: reciprocal rank fusion, or a weighted sum of the two scores
# (Milvus normalises each: cosine to [0, 1], BM25 through arctan) with WEIGHTS = (dense, BM25).
FUSIONS = ("rrf", "weighted")
FUSION = "rrf"
WEIGHTS = (0.5, 0.5)
# Metadata a search can filter on, with the Python type of its values.
FILTER_FIELDS = {"chunk_id": str, "doc_id": str, "source_uri": str, "recipe_hash": str, "position": int}
MAX_CANDIDATES = 1_000  # per query when grouping by document fetches more than k


class MilvusUnavailableError(RuntimeError):
    """Milvus could not be reached or stopped answering; the message names where and what was going on."""


def collection_name(dataset: str) -> str:
    return f"{COLLECTION_PREFIX}{dataset}"


def list_datasets(client: MilvusClient, timeout: float = 30.0) -> list[str]:
    """The datasets with a knowledge base in this Milvus (their collections, by name)."""
    names = client.list_collections(timeout=timeout)
    return sorted(name.removeprefix(COLLECTION_PREFIX) for name in names if name.startswith(COLLECTION_PREFIX))


def filter_expression(conditions: dict | None) -> str:
    """A Milvus boolean expression for `{field: value}` or `{field: [values]}` conditions, all of which must hold.

    Values are written as JSON literals (quoted and escaped strings, plain integers), so a value cannot change
    the expression. Raises ValueError naming the field for an unknown field or a value of the wrong type.
    """
    if not conditions:
        return ""
    if not isinstance(conditions, dict):
        raise ValueError(f"filter must be an object of {{field: value or [values]}}, got {type(conditions).__name__}")
    clauses = []
    for name, value in conditions.items():
        kind = FILTER_FIELDS.get(name)
        if kind is None:
            raise ValueError(f"filter field {name!r} is not one of {sorted(FILTER_FIELDS)}")
        values = value if isinstance(value, list) else [value]
        if not values or any(type(v) is not kind for v in values):  # type(): bool is not an int here
            raise ValueError(
                f"filter field {name!r} takes a {kind.__name__} or a non-empty list of them, got {value!r}"
            )
        clauses.append(f"{name} == {json.dumps(values[0])}" if len(values) == 1 else f"{name} in {json.dumps(values)}")
    return " and ".join(clauses)


def title_of(headings: str | None) -> str | None:
    """The first heading above a chunk (the `headings` field is a JSON list), or None."""
    try:
        parsed = json.loads(headings or "[]")
    except ValueError:
        return None
    return parsed[0] if isinstance(parsed, list) and parsed and isinstance(parsed[0], str) else None


class MilvusResource(dg.ConfigurableResource):
    provider: Literal["local", "server"] = "local"
    path: str | None = None  # Milvus Lite data directory (`local`)
    uri: str | None = None  # http://host:19530 (`server`)
    token: str | None = None  # secret: pass dg.EnvVar("DATAMATE_MILVUS_TOKEN")
    timeout_seconds: float = 30.0  # per call, including pymilvus' own retries
    lock_wait_seconds: float = 120.0  # how long to wait for another process holding the Milvus Lite directory

    def describe(self) -> str:
        if self.provider == "local":
            return f"Milvus Lite at {self.path}"
        parsed = urlparse(self.uri or "")
        return f"Milvus server at {parsed.hostname}:{parsed.port or 19530}"

    @contextlib.contextmanager
    def get_client(self) -> Iterator[MilvusClient]:
        client = self._connect_local() if self.provider == "local" else self._connect_server()
        try:
            yield client
        finally:
            client.close()
            if self.provider == "local":
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self._lite_path())  # frees the lock for other processes

    def _lite_path(self) -> str:
        if not self.path:
            raise ValueError("the local Milvus provider needs `path` (DATAMATE_MILVUS_URI or $DATAMATE_HOME/milvus.db)")
        return str(Path(self.path).resolve())

    def _connect_local(self) -> MilvusClient:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        path = self._lite_path()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_wait_seconds
        while True:
            try:
                return MilvusClient(uri=path, timeout=self.timeout_seconds, dedicated=True)
            except MilvusException as error:
                if time.monotonic() >= deadline:
                    raise MilvusUnavailableError(
                        f"{self.describe()} could not be opened: {error.message}. Milvus Lite allows one process "
                        "per database and another process probably holds it; wait for it, or run "
                        "`milvus-lite server --data-dir DIR` and set DATAMATE_MILVUS_URI=http://127.0.0.1:19530"
                    ) from error
                time.sleep(1.0)

    def connect_server(self) -> MilvusClient:
        """A Milvus server client for the caller to keep and close (the retrieval service shares one)."""
        if self.provider != "server":
            raise ValueError(f"{self.describe()} is opened per operation (`get_client`), not kept connected")
        return self._connect_server()

    def _connect_server(self) -> MilvusClient:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        try:
            return MilvusClient(uri=self.uri, token=self.token or "", timeout=self.timeout_seconds, dedicated=True)
        except MilvusException as error:
            raise MilvusUnavailableError(
                f"{self.describe()} is unreachable: {error.message} (check DATAMATE_MILVUS_URI and that the "
                "server is running)"
            ) from error


def build_milvus(settings, **options) -> MilvusResource:
    """The resource for `datamate_resources.settings.Settings` (token by reference only); `options` such as
    `timeout_seconds` go to the resource."""
    from datamate_resources import optional_env

    if settings.milvus_provider == "local":
        return MilvusResource(provider="local", path=settings.milvus_uri, **options)
    return MilvusResource(provider="server", uri=settings.milvus_uri, token=optional_env("DATAMATE_MILVUS_TOKEN"),
                          **options)


def supports_bm25(client: MilvusClient) -> bool:
    """BM25 functions arrived in Milvus 2.5; Milvus Lite has them from 3.0."""
    version = client.get_server_version()
    numbers = [int(n) for n in re.findall(r"\d+", version)[:2]]
    if version.startswith("milvus_lite"):
        return numbers >= [3, 0]
    return numbers >= [2, 5]


def is_milvus_lite(client: MilvusClient) -> bool:
    return client.get_server_version().startswith("milvus_lite")


def index_params_for(index_type: str, rows: int) -> dict:
    """Build parameters suited to the collection size (HNSW: graph degree; IVF: ~4·√n clusters)."""
    if index_type == "HNSW":
        return {"M": 16, "efConstruction": 200}
    if index_type.startswith("IVF"):
        return {"nlist": max(16, min(4096, int(4 * max(rows, 1) ** 0.5)))}
    return {}


def search_params_for(index_type: str, k: int) -> dict:
    if index_type == "HNSW":
        return {"ef": max(64, k)}
    if index_type.startswith("IVF"):
        return {"nprobe": 16}
    return {}


@dataclass
class Layout:
    """What a collection was built with; stored as a collection property so a change rebuilds it."""

    model: str
    dim: int
    hybrid: bool
    index_type: str
    index_params: dict = field(default_factory=dict)

    def same_vectors(self, other: Layout) -> bool:
        return (self.model, self.dim, self.hybrid, self.index_type) == (
            other.model, other.dim, other.hybrid, other.index_type
        )


@dataclass
class SyncReport:
    chunks: int = 0
    vectors: int = 0
    embedded: int = 0
    deleted: int = 0
    unchanged: int = 0
    rebuilt: bool = False
    layout: Layout | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.embedded or self.deleted or self.rebuilt)


class KnowledgeBase:
    """One dataset's chunks in one Milvus collection: idempotent sync by chunk_id, and search."""

    def __init__(
        self,
        client: MilvusClient,
        dataset: str,
        embeddings: Embeddings,
        model_name: str,
        *,
        where: str = "Milvus",
        timeout: float = 30.0,
        logger: logging.Logger | dg.DagsterLogManager | None = None,
        read_consistency: str | None = None,
    ):
        self.client = client
        self.name = collection_name(dataset)
        self.embeddings = embeddings
        self.model_name = model_name
        self.where = where
        self.timeout = timeout
        self.log = logger or log
        self._search_layout: Layout | None = None  # looked up and loaded once per instance, not per query
        # Searches read at the collection's Strong consistency unless told otherwise: a Milvus server then waits
        # for its next time tick (200 ms) on every search. The retrieval service reads at "Bounded" (it sees an
        # index update within seconds) and answers in milliseconds.
        self._read = {"consistency_level": read_consistency} if read_consistency else {}

    # --- helpers --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _milvus(self, doing: str) -> Iterator[None]:
        from pymilvus.exceptions import MilvusException

        try:
            yield
        except MilvusException as error:
            raise MilvusUnavailableError(
                f"{self.where}: {doing} in collection {self.name} failed: {error.message}. "
                "Chunks already stored are kept; materializing again resumes without re-embedding them."
            ) from error

    def exists(self) -> bool:
        with self._milvus("checking the collection"):
            return self.client.has_collection(self.name, timeout=self.timeout)

    def layout(self) -> Layout | None:
        if not self.exists():
            return None
        with self._milvus("describing"):
            properties = self.client.describe_collection(self.name, timeout=self.timeout).get("properties") or {}
        try:
            return Layout(**json.loads(properties[LAYOUT_PROPERTY]))
        except (KeyError, ValueError, TypeError):
            return None  # not made by DataMate: treated as a different layout

    def _load(self, rows: int | None = None) -> None:
        """A server loads collections into memory on request only (e.g. not after a restart); idempotent.

        Milvus Lite builds the index of each segment not indexed yet inside this call (after a bulk load, or a run
        killed before its index was built), so the timeout allows for `rows` (default: the stored row count).
        """
        with self._milvus("loading the collection"):
            if rows is None:
                rows = int(self.client.get_collection_stats(self.name, timeout=self.timeout).get("row_count", 0))
            self.client.load_collection(self.name, timeout=self.timeout + rows * INDEX_SECONDS_PER_ROW)

    def _dimension(self) -> int:
        """The model's vector size: declared by the local model, else probed with one query."""
        declared = getattr(self.embeddings, "dimension", None)
        return declared if isinstance(declared, int) else len(self.embeddings.embed_query("dimension probe"))

    def count(self) -> int:
        with self._milvus("counting"):
            rows = self.client.query(self.name, filter="", output_fields=["count(*)"], timeout=self.timeout)
        return int(rows[0]["count(*)"])

    def chunk_ids(self) -> list[str]:
        """Every stored chunk_id (duplicates included, so a caller can check there are none)."""
        return self.stored_ids().to_pylist()

    def stored_ids(self) -> pa.Array:
        """Every stored chunk_id as one Arrow string array (ids only: ~64 bytes per chunk, no text)."""
        parts: list[pa.Array] = []
        with self._milvus("listing chunk ids"):
            iterator = self.client.query_iterator(
                self.name, batch_size=5_000, filter="", output_fields=["chunk_id"], timeout=self.timeout
            )
            while batch := iterator.next():
                parts.append(pa.array([row["chunk_id"] for row in batch], pa.string()))
            iterator.close()
        return pa.concat_arrays(parts) if parts else pa.array([], pa.string())

    def _create(self, layout: Layout) -> None:
        from pymilvus import DataType, Function, FunctionType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("chunk_id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=64)
        schema.add_field("text", DataType.VARCHAR, max_length=VARCHAR_MAX, enable_analyzer=layout.hybrid)
        schema.add_field("position", DataType.INT64)
        schema.add_field("headings", DataType.VARCHAR, max_length=VARCHAR_MAX)
        schema.add_field("source_uri", DataType.VARCHAR, max_length=4_096)
        schema.add_field("recipe_hash", DataType.VARCHAR, max_length=128)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=layout.dim)
        if layout.hybrid:
            schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(
                Function(name="text_bm25", function_type=FunctionType.BM25, input_field_names=["text"],
                         output_field_names=["sparse"])
            )
        with self._milvus("creating the collection"):
            # Strong consistency: a count or search right after an upsert sees it (the 2.3 server is Bounded).
            self.client.create_collection(
                self.name, schema=schema, consistency_level="Strong",
                properties={LAYOUT_PROPERTY: json.dumps(asdict(layout))}, timeout=self.timeout,
            )
        self._ensure_indexes(layout)

    def _ensure_indexes(self, layout: Layout) -> None:
        """Declares the indexes (also those of a run killed between creating the collection and its indexes).

        Without pymilvus' wait for each index (`sync=False`): it polls every 0.5 s, 1 s per hybrid collection,
        while there is nothing to build yet (a server indexes segments as they are sealed, Milvus Lite on load).
        """
        wanted = {"dense": {"index_type": layout.index_type, "metric_type": "COSINE", "params": layout.index_params}}
        if layout.hybrid:
            wanted["sparse"] = {"index_type": "SPARSE_INVERTED_INDEX", "metric_type": "BM25"}
        with self._milvus("creating the indexes"):
            for field_name, index in wanted.items():
                if not self.client.list_indexes(self.name, field_name=field_name, timeout=self.timeout):
                    index_params = self.client.prepare_index_params()
                    index_params.add_index(field_name, **index)
                    self.client.create_index(self.name, index_params, timeout=self.timeout, sync=False)

    def _rows(self, chunks: list[dict], vectors: list[list[float]]) -> list[dict]:
        rows = []
        for chunk, vector in zip(chunks, vectors, strict=True):
            if len(chunk["text"].encode()) > VARCHAR_MAX:
                raise ValueError(
                    f"chunk {chunk['chunk_id']} of document {chunk['doc_id']} ({chunk.get('source_uri')}) is over "
                    f"{VARCHAR_MAX} bytes; lower index.chunk_size"
                )
            rows.append(
                {
                    "chunk_id": chunk["chunk_id"],
                    "doc_id": chunk["doc_id"],
                    "text": chunk["text"],
                    "position": int(chunk.get("position") or 0),
                    "headings": chunk.get("headings") or "[]",
                    "source_uri": chunk.get("source_uri") or "",
                    "recipe_hash": chunk.get("recipe_hash") or "",
                    "dense": vector,
                }
            )
        return rows

    # --- indexing -------------------------------------------------------------------------------------
    def sync(
        self,
        chunks: pa.Table | TableRef,
        *,
        index_type: str = "HNSW",
        hybrid: bool = True,
        batch_size: int = 256,
        on_progress: Callable[[int, int], None] | None = None,
        source_version: str | None = None,
        embed_new: Callable[[pa.Array], TableRef] | None = None,
    ) -> SyncReport:
        """Make the collection hold exactly these chunks: embed and upsert new ones, delete stale ones.

        Into an empty Milvus Lite collection (first build, rebuild) the chunks are bulk-loaded: the collection is
        released while they are written and loaded once at the end, which builds the index of each segment before
        `sync` returns (phase `index`). A loaded Milvus Lite collection indexes each segment in a background thread
        of this process when it is flushed instead: that build competed with the model for the CPU and was still
        running when `sync` returned (searches meanwhile scan the segment's vectors without the index).

        `source_version` (the version of the chunks table) is recorded on the collection for `info()`.

        `chunks` may be a Delta table version (`TableRef`): it is then read in batches, so memory holds the chunk
        ids (for the diff against the stored ids) and one batch of new chunks at a time, never every chunk's text.

        `embed_new(stored_ids)`, when given, embeds elsewhere (on Ray) the chunks whose id is not in `stored_ids`
        and returns the table of them with their `dense` vectors; this process then only upserts that table,
        batch by batch.
        """
        report = SyncReport(chunks=chunks.num_rows)
        self._search_layout = None
        started = time.perf_counter()
        with self._milvus("connecting"):
            bm25 = hybrid and supports_bm25(self.client)
            lite = is_milvus_lite(self.client)
        if hybrid and not bm25:
            self.log.info(f"{self.where} has no BM25 full-text search (needs Milvus ≥ 2.5): dense-only index")
        dim = self._dimension()
        wanted = Layout(self.model_name, dim, bm25, index_type, index_params_for(index_type, chunks.num_rows))
        current = self.layout()
        if current is not None and not current.same_vectors(wanted):
            self.log.warning(f"collection {self.name} was built with {current}; rebuilding it for {wanted}")
            with self._milvus("dropping the old collection"):
                self.client.drop_collection(self.name, timeout=self.timeout)
            report.rebuilt = True
            current = None
        if current is None:
            self._create(wanted)
            current = wanted
        else:
            self._ensure_indexes(current)
        self._load()
        report.layout = current
        report.seconds["prepare"] = time.perf_counter() - started

        started = time.perf_counter()
        # The diff is a set difference of id arrays (Arrow hash sets); texts are read later, new chunks only.
        stored = pc.unique(self.stored_ids())
        wanted_ids = pc.unique(_chunk_ids(chunks))
        is_new = pc.invert(pc.is_in(wanted_ids, value_set=stored))
        new_count = pc.sum(is_new).as_py() or 0
        stale = sorted(pc.filter(stored, pc.invert(pc.is_in(stored, value_set=wanted_ids))).to_pylist())
        report.unchanged = len(wanted_ids) - new_count
        bulk = lite and len(stored) == 0 and new_count > 0
        report.seconds["diff"] = time.perf_counter() - started

        started = time.perf_counter()
        for start in range(0, len(stale), DELETE_BATCH):
            batch = stale[start : start + DELETE_BATCH]
            with self._milvus("deleting stale chunks"):
                self.client.delete(self.name, filter=f"chunk_id in {json.dumps(batch)}", timeout=self.timeout)
        report.deleted = len(stale)
        report.seconds["delete"] = time.perf_counter() - started

        if bulk:
            with self._milvus("releasing the collection for a bulk load"):
                self.client.release_collection(self.name, timeout=self.timeout)
        if embed_new is not None and new_count:
            began = time.perf_counter()
            embedded = embed_new(stored)
            report.seconds["embed"] = time.perf_counter() - began
            report.seconds["upsert"] = self._upsert_embedded(embedded, new_count, batch_size, on_progress)
        else:
            new = _new_chunks(chunks, stored, batch_size)
            report.seconds["embed"], report.seconds["upsert"] = self._embed_and_upsert(
                new, new_count, batch_size, on_progress
            )
        report.embedded = new_count

        started = time.perf_counter()
        if new_count or stale:
            # Seal what was written: Milvus Lite searches rows still in its MemTable by converting each one to
            # Python on every query (seconds at 10^4-10^5 rows) and indexes only flushed segments; a server
            # searches unsealed (growing) segments without the HNSW/IVF index too.
            with self._milvus("flushing"):
                self.client.flush(self.name, timeout=self.timeout)
        report.seconds["flush"] = time.perf_counter() - started

        if bulk:
            started = time.perf_counter()
            self._load(rows=new_count)  # builds the index of every segment, once, before returning
            report.seconds["index"] = time.perf_counter() - started

        started = time.perf_counter()
        report.vectors = self.count()
        report.seconds["verify"] = time.perf_counter() - started
        if report.vectors != len(wanted_ids):
            raise RuntimeError(
                f"{self.where}: collection {self.name} holds {report.vectors} vectors for {len(wanted_ids)} chunks"
            )
        if source_version is not None:
            with self._milvus("recording the source version"):
                self.client.alter_collection_properties(
                    self.name, {SOURCE_VERSION_PROPERTY: str(source_version)}, timeout=self.timeout
                )
        return report

    def info(self) -> dict:
        """What `GET /v1/datasets` shows: chunk count, embedding model, layout and the chunks' source version."""
        layout = self.layout()
        return {
            "chunks": self.count(),
            "embedding_model": layout.model if layout else None,
            "dimension": layout.dim if layout else None,
            "hybrid": layout.hybrid if layout else False,
            "index_type": layout.index_type if layout else None,
            "source_version": self.source_version(),
        }

    def source_version(self) -> str | None:
        with self._milvus("describing"):
            properties = self.client.describe_collection(self.name, timeout=self.timeout).get("properties") or {}
        return properties.get(SOURCE_VERSION_PROPERTY)

    def _embed_and_upsert(
        self, chunks: Iterable[dict], total: int, batch_size: int, on_progress: Callable[[int, int], None] | None
    ) -> tuple[float, float]:
        """Embed batch i+1 while batch i is upserted, so Milvus time hides behind the model's."""
        embed_seconds = upsert_seconds = 0.0

        def upsert(rows: list[dict]) -> float:
            began = time.perf_counter()
            with self._milvus("upserting chunks"):
                self.client.upsert(self.name, rows, timeout=self.timeout)
            return time.perf_counter() - began

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending, done, rows = None, 0, iter(chunks)
            while batch := list(itertools.islice(rows, batch_size)):
                began = time.perf_counter()
                vectors = self.embeddings.embed_documents([c["text"] for c in batch])
                embed_seconds += time.perf_counter() - began
                if pending is not None:
                    upsert_seconds += pending.result()
                pending = pool.submit(upsert, self._rows(batch, vectors))
                done += len(batch)
                if on_progress:
                    on_progress(done, total)
            if pending is not None:
                upsert_seconds += pending.result()
        return embed_seconds, upsert_seconds

    def _upsert_embedded(self, embedded: TableRef, total: int, batch_size: int,
                         on_progress: Callable[[int, int], None] | None) -> float:
        """Upsert chunks embedded elsewhere (a table with a `dense` column), a batch at a time."""
        began, done = time.perf_counter(), 0
        for batch in embedded.batches(batch_size=batch_size):
            rows = self._rows(batch.drop_columns(["dense"]).to_pylist(), batch.column("dense").to_pylist())
            with self._milvus("upserting chunks"):
                self.client.upsert(self.name, rows, timeout=self.timeout)
            done += batch.num_rows
            if on_progress:
                on_progress(done, total)
        if done != total:
            raise RuntimeError(f"{embedded.uri} version {embedded.version} holds {done} embedded chunks, "
                               f"{total} were new: the vectors table does not match the chunks")
        return time.perf_counter() - began

    # --- retrieval ------------------------------------------------------------------------------------
    def search_layout(self) -> Layout:
        """The collection's layout, looked up and the collection loaded once per instance (not per query)."""
        if self._search_layout is None:
            layout = self.layout()
            if layout is None:
                raise LookupError(
                    f"{self.where} has no collection {self.name}: materialize its `indexed` asset first"
                )
            self._load()
            self._search_layout = layout
        return self._search_layout

    def search(
        self,
        queries: list[str],
        k: int = 5,
        *,
        mode: str = "hybrid",
        filter: dict | None = None,
        per_doc: int | None = None,
        fusion: str = FUSION,
        weights: tuple[float, float] = WEIGHTS,
    ) -> list[list[dict]]:
        """Top-k hits per query: chunk_id, doc_id, text, source_uri, position, headings, title, rank, score
        (dense cosine), rank_score (what ordered the hits: RRF in hybrid, BM25 in sparse, cosine in dense mode).

        `mode` "hybrid" fuses dense and BM25 rankings by `fusion` ("rrf", or "weighted" with `weights` (dense,
        BM25)); a dense-only collection answers it with dense search; `filter` keeps chunks matching
        `{field: value or [values]}` (see `filter_expression`); `per_doc` keeps at most that many hits per
        document, so one document does not fill the top k (more candidates are fetched for it). Re-ranking
        (`operators.rerank.LLMReranker`) runs on the hits of a search for `candidates(k)`, after the client is
        released (the service and `datamate search --rerank`).
        """
        if mode not in SEARCH_MODES:
            raise ValueError(f"mode {mode!r} is not one of {list(SEARCH_MODES)}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion {fusion!r} is not one of {list(FUSIONS)}")
        from pymilvus import AnnSearchRequest, RRFRanker, WeightedRanker

        ranker = RRFRanker(RRF_K) if fusion == "rrf" else WeightedRanker(*weights)
        expression = filter_expression(filter)
        layout = self.search_layout()
        if not queries:
            return []
        if mode == "sparse" and not layout.hybrid:
            raise ValueError(f"collection {self.name} has no BM25 index (dense only): use mode 'dense' or 'hybrid'")
        if not layout.hybrid:
            mode = "dense"
        # Fusion needs more than k candidates per ranking: with k each, a chunk first in one ranking only ties
        # (RRF 1/61) with the chunk first in the other, however far down the other ranking puts it.
        wide = per_doc is not None or mode == "hybrid"
        limit = min(max(k * 5, k + 20), MAX_CANDIDATES) if wide else k
        vectors = self.embeddings.embed_documents(queries)
        dense_params = {"metric_type": "COSINE", "params": search_params_for(layout.index_type, limit)}
        # Hybrid and sparse hits bring their dense vector back, for the cosine shown as `score`.
        fields = OUTPUT_FIELDS if mode == "dense" else [*OUTPUT_FIELDS, "dense"]
        with self._milvus("searching"):
            if mode == "hybrid":  # one call for every query, as dense and sparse searches are
                results = self.client.hybrid_search(
                    self.name,
                    [
                        AnnSearchRequest(vectors, "dense", dense_params, limit=limit, expr=expression),
                        AnnSearchRequest(queries, "sparse", {"metric_type": "BM25"}, limit=limit, expr=expression),
                    ],
                    ranker,
                    limit=limit,
                    output_fields=fields,
                    timeout=self.timeout,
                    **self._read,
                )
            else:
                results = self.client.search(
                    self.name, data=vectors if mode == "dense" else queries,
                    anns_field=mode, filter=expression, limit=limit, output_fields=fields, timeout=self.timeout,
                    search_params=dense_params if mode == "dense" else {"metric_type": "BM25"}, **self._read,
                )
        return [
            self._hits(found, np.asarray(vector, dtype=np.float32), mode, k, per_doc)
            for found, vector in zip(results, vectors, strict=True)
        ]

    @staticmethod
    def _hits(found, query_vector: np.ndarray, mode: str, k: int, per_doc: int | None) -> list[dict]:
        hits, per_document = [], {}
        for hit in found:
            entity = hit["entity"]
            doc_id = entity.get("doc_id")
            if per_doc is not None:
                per_document[doc_id] = per_document.get(doc_id, 0) + 1
                if per_document[doc_id] > per_doc:
                    continue
            rank_score = float(hit["distance"])
            if mode == "sparse":
                rank_score = abs(rank_score)  # Milvus Lite gives BM25 scores negated, a Milvus server does not
            if mode == "dense":
                score = rank_score
            else:
                chunk_vector = np.asarray(entity["dense"], dtype=np.float32)
                norms = float(np.linalg.norm(chunk_vector) * np.linalg.norm(query_vector)) or 1.0
                score = float(chunk_vector @ query_vector) / norms
            hits.append({
                **{f: entity.get(f) for f in OUTPUT_FIELDS}, "title": title_of(entity.get("headings")),
                "rank": len(hits) + 1, "score": score, "rank_score": rank_score,
            })
            if len(hits) == k:
                break
        return hits


def _chunk_ids(chunks: pa.Table | TableRef) -> pa.Array:
    """The chunk_id column only (a Delta table reads just that column)."""
    ids = chunks.select(["chunk_id"]) if isinstance(chunks, pa.Table) else chunks.read(columns=["chunk_id"])
    return ids.column("chunk_id").combine_chunks()


def _new_chunks(chunks: pa.Table | TableRef, stored: pa.Array, batch_size: int) -> Iterator[dict]:
    """The rows whose chunk_id is not stored yet, in table order, read batch by batch."""
    columns = [c for c in chunks.schema.names if c in {*OUTPUT_FIELDS, "recipe_hash"}]
    batches = (chunks.select(columns).to_batches(max_chunksize=batch_size) if isinstance(chunks, pa.Table)
               else chunks.batches(columns=columns, batch_size=batch_size))
    for batch in batches:
        yield from batch.filter(pc.invert(pc.is_in(batch.column("chunk_id"), value_set=stored))).to_pylist()


@contextlib.contextmanager
def open_knowledge_base(dataset: str, settings=None, embeddings=None) -> Iterator[KnowledgeBase]:
    """The Python search API outside Dagster, configured from the environment like the code location:

        with open_knowledge_base("debian_docs") as kb:
            hits = kb.search(["How do I pin a package version?"], k=5)[0]
    """
    from datamate_resources.embeddings import build_embeddings
    from datamate_resources.settings import Settings

    settings = settings or Settings.from_env()
    # process_config_and_initialize resolves dg.EnvVar secrets the way a Dagster run does.
    milvus = build_milvus(settings).process_config_and_initialize()
    # An initialized EmbeddingsResource may be passed in, so repeated opens load the model once.
    embeddings = embeddings or build_embeddings(settings).process_config_and_initialize()
    with milvus.get_client() as client:
        yield KnowledgeBase(
            client, dataset, embeddings.get_embeddings(), embeddings.model_name,
            where=milvus.describe(), timeout=milvus.timeout_seconds,
        )
