"""LLM-as-judge for synthetic records: user-editable dimensions, each judged Y/N with a short reason, plus
an overall 1-5 score.

The output schema is built from the dimensions, one required field per dimension named after it, so the
model is asked for exactly the dimensions the user wrote and a missing one fails validation (and is
retried by the LLM resource) instead of silently counting as a pass.
"""

import hashlib
from collections.abc import Sequence
from typing import Literal

from langchain_core.prompts import PromptTemplate
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator


class JudgeDimension(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    description: str = Field(min_length=1)


class DimensionVerdict(BaseModel):
    verdict: Literal["Y", "N"] = Field(description="Y if the record meets the criterion, else N")
    # Capped so a small model cannot ramble until max_tokens and cut the JSON short.
    reason: str = Field(max_length=120, description="One short sentence explaining the verdict")

    @field_validator("verdict", mode="before")
    @classmethod
    def _normalize_verdict(cls, value):
        # Models write "y", "Yes", "是"...; the first letter of the English word is the verdict.
        text = str(value).strip().casefold()
        return {"yes": "Y", "y": "Y", "是": "Y", "no": "N", "n": "N", "否": "N"}.get(text, str(value).strip())


DEFAULT_DIMENSIONS = {
    "en": [
        JudgeDimension(name="independent", description="The question makes sense on its own, without the source text."),
        JudgeDimension(name="relevant", description="The answer actually answers the question."),
        JudgeDimension(name="fluent", description="Question and answer are grammatical and readable."),
    ],
    "zh": [
        JudgeDimension(name="问题是否独立", description="问题脱离原文也能看懂，不依赖“根据文本”等指代。"),
        JudgeDimension(name="回答是否相关", description="回答确实回答了问题。"),
        JudgeDimension(name="语法是否正确", description="问题和回答没有语法错误，通顺易读。"),
    ],
}

DEFAULT_JUDGE_TEMPLATES = {
    "en": (
        "You are a strict reviewer of training data for language models. Judge the record below.\n"
        "For each criterion answer Y or N with a short reason, then give an overall quality score from 1 "
        "(unusable) to 5 (excellent).\n\nCriteria:\n{dimensions}\n\nRecord:\n{record}"
    ),
    "zh": (
        "你是语言模型训练数据的严格评审。请评审下面的数据。\n"
        "对每个评估维度给出 Y 或 N 并附简短理由，然后给出 1（不可用）到 5（优秀）的总体质量分。\n\n"
        "评估维度：\n{dimensions}\n\n数据：\n{record}"
    ),
}


def judge_schema(dimensions: Sequence[JudgeDimension]) -> type[BaseModel]:
    """A pydantic model with one DimensionVerdict per dimension (JSON key = dimension name) and a score."""
    names = [dimension.name for dimension in dimensions]
    if not names:
        raise ValueError("judge needs at least one dimension")
    if len(set(names)) != len(names):
        raise ValueError(f"judge dimension names must be unique, got {names}")
    fields = {
        f"dimension_{i}": (DimensionVerdict, Field(alias=dimension.name, description=dimension.description))
        for i, dimension in enumerate(dimensions)
    }
    fields["score"] = (int, Field(ge=1, le=5, description="Overall quality from 1 (unusable) to 5 (excellent)"))
    return create_model(
        "JudgeResult", __config__=ConfigDict(populate_by_name=True), **fields
    )


def judge_template_version(template: str, dimensions: Sequence[JudgeDimension]) -> str:
    payload = template + "".join(f"\x1f{d.name}\x1e{d.description}" for d in dimensions)
    return "judge-" + hashlib.sha256(payload.encode("utf-8")).hexdigest()[:8]


def render_judge_prompt(
    template: str, dimensions: Sequence[JudgeDimension], record: dict, source: str | None = None
) -> str:
    """The judge prompt for one record; `source` is the chunk it was generated from (to judge faithfulness)."""
    listed = "\n".join(f"- {d.name}: {d.description}" for d in dimensions)
    parts = [f"Source passage: {source}"] if source else []
    parts.append(f"Question: {record['question']}")
    if record.get("reasoning"):
        parts.append(f"Reasoning: {record['reasoning']}")
    parts.append(f"Answer: {record['answer']}")
    return PromptTemplate.from_template(template).format(dimensions=listed, record="\n".join(parts))


def verdict_rows(result: BaseModel, dimensions: Sequence[JudgeDimension]) -> list[dict]:
    """One row per dimension: {dimension, verdict, reason}, in the dimensions' order."""
    rows = []
    for i, dimension in enumerate(dimensions):
        verdict = getattr(result, f"dimension_{i}")
        rows.append({"dimension": dimension.name, "verdict": verdict.verdict, "reason": verdict.reason.strip()})
    return rows


def pass_rates(verdicts: Sequence[dict]) -> dict[str, float]:
    """Share of Y per dimension, over rows of {dimension, verdict}."""
    totals: dict[str, list[int]] = {}
    for row in verdicts:
        counts = totals.setdefault(row["dimension"], [0, 0])
        counts[0] += row["verdict"] == "Y"
        counts[1] += 1
    return {dimension: passed / total for dimension, (passed, total) in totals.items()}
