"""Synthetic fine-tuning data from chunks: prompt templates, output schemas, JSONL exports (no dagster)."""

from operators.synthesis.export import alpaca_jsonl, chat_jsonl
from operators.synthesis.plan import SynthesisRequest, plan_requests
from operators.synthesis.schemas import SYNTHESIZED_COLUMNS, output_schema, to_records
from operators.synthesis.templates import (
    DEFAULT_TEMPLATES,
    KINDS,
    SynthesisTemplate,
    resolve_template,
)

__all__ = [
    "DEFAULT_TEMPLATES", "KINDS", "SYNTHESIZED_COLUMNS", "SynthesisRequest", "SynthesisTemplate",
    "alpaca_jsonl", "chat_jsonl", "output_schema", "plan_requests", "resolve_template", "to_records",
]
