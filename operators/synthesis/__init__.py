"""Synthetic fine-tuning data from chunks: prompt templates, methods, output schemas, exports (no dagster)."""

from operators.synthesis.export import (
    FORMATS,
    SHARD_BYTES,
    alpaca_jsonl,
    chat_jsonl,
    jsonl_shards,
    parquet_shards,
    shard_name,
)
from operators.synthesis.methods import MethodSettings, Synthesizer
from operators.synthesis.plan import SynthesisRequest, plan_requests
from operators.synthesis.schemas import (
    SYNTHESIZED_COLUMNS,
    SYNTHESIZED_SCHEMA,
    make_record,
    output_schema,
    to_records,
)
from operators.synthesis.templates import (
    DEFAULT_TEMPLATES,
    KIND_TEMPLATES,
    KINDS,
    SynthesisTemplate,
    resolve_template,
    templates_for_kinds,
)

__all__ = [
    "DEFAULT_TEMPLATES", "FORMATS", "KINDS", "KIND_TEMPLATES", "SHARD_BYTES", "SYNTHESIZED_COLUMNS",
    "SYNTHESIZED_SCHEMA", "MethodSettings", "SynthesisRequest", "SynthesisTemplate", "Synthesizer", "alpaca_jsonl",
    "chat_jsonl",
    "jsonl_shards", "make_record", "output_schema", "parquet_shards", "plan_requests", "resolve_template",
    "shard_name", "templates_for_kinds", "to_records",
]
