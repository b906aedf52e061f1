"""Dataset evaluation: heuristic metrics and the LLM-as-judge prompt and schema (no dagster)."""

from operators.evaluation.judge import (
    DEFAULT_DIMENSIONS,
    DEFAULT_JUDGE_TEMPLATES,
    JudgeDimension,
    judge_schema,
    judge_template_version,
    pass_rates,
    render_judge_prompt,
    verdict_rows,
)
from operators.evaluation.metrics import (
    distinct_n,
    duplicate_rate,
    flagged_word_rate,
    funnel,
    label_distribution,
    language_mix,
    length_stats,
)

__all__ = [
    "DEFAULT_DIMENSIONS", "DEFAULT_JUDGE_TEMPLATES", "JudgeDimension", "distinct_n", "duplicate_rate",
    "flagged_word_rate", "funnel", "judge_schema", "judge_template_version", "label_distribution",
    "language_mix", "length_stats", "pass_rates", "render_judge_prompt", "verdict_rows",
]
