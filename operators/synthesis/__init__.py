"""Synthetic fine-tuning data from chunks: prompt templates, output schemas, JSONL exports (no dagster)."""

from operators.synthesis.export import alpaca_jsonl, chat_jsonl
from operators.synthesis.schemas import OUTPUT_SCHEMAS, SYNTHESIZED_COLUMNS, to_records
from operators.synthesis.templates import (
    DEFAULT_TEMPLATES,
    KINDS,
    SynthesisTemplate,
    detect_template_language,
    resolve_template,
)

__all__ = [
    "DEFAULT_TEMPLATES", "KINDS", "OUTPUT_SCHEMAS", "SYNTHESIZED_COLUMNS", "SynthesisTemplate",
    "alpaca_jsonl", "chat_jsonl", "detect_template_language", "resolve_template", "to_records",
]
