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
    rubric: dict[int, str] | None = None  # graded on this scale (Prometheus-style) instead of Y/N


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


# --- rubric grading (Prometheus-style absolute grading: feedback first, then a score the rubric defines) ---
DEFAULT_RUBRICS: dict[str, dict[int, str]] = {
    "en": {
        1: "Wrong, off-topic or unsupported by the passage.",
        2: "Partly relevant but mostly wrong or missing the point.",
        3: "Relevant and partly correct, with gaps or errors.",
        4: "Correct and supported by the passage, with minor omissions.",
        5: "Complete, correct, supported by the passage and clearly written.",
    },
    "zh": {
        1: "错误、离题或文本不支持。",
        2: "部分相关，但大多错误或没抓住要点。",
        3: "相关且部分正确，有遗漏或错误。",
        4: "正确且有文本支持，略有遗漏。",
        5: "完整、正确、有文本支持且表达清楚。",
    },
}
RUBRIC_TEMPLATES = {
    "en": (
        "You are a fair evaluator. Grade the response to the instruction strictly by the score rubric. First "
        "write short feedback on the response's quality against the rubric, then give an integer score from the "
        "rubric.\n\n{source}Instruction:\n{question}\n\nResponse to evaluate:\n{answer}\n\nScore rubric:\n{rubric}"
    ),
    "zh": (
        "你是公正的评审。严格按照评分标准给回复打分。先针对评分标准写简短的反馈，再给出评分标准中的整数分。\n\n"
        "{source}指令：\n{question}\n\n待评回复：\n{answer}\n\n评分标准：\n{rubric}"
    ),
}


def check_rubric(rubric: dict[int, str]) -> dict[int, str]:
    """A rubric maps consecutive integer scores (at least two) to what each means."""
    scores = sorted(rubric)
    if len(scores) < 2 or scores != list(range(scores[0], scores[-1] + 1)):
        raise ValueError(f"a rubric needs at least two consecutive integer scores, got {scores}")
    return rubric


def grade_schema(rubric: dict[int, str]) -> type[BaseModel]:
    scores = sorted(check_rubric(rubric))
    return create_model(
        "RubricGrade",
        feedback=(str, Field(max_length=200, description="Short feedback against the rubric")),
        score=(int, Field(ge=scores[0], le=scores[-1], description="The rubric's score for the response")),
    )


def render_rubric_prompt(language: str, rubric: dict[int, str], record: dict, source: str | None = None,
                         criterion: str | None = None) -> str:
    template = RUBRIC_TEMPLATES[language]
    listed = "\n".join(f"{score}: {meaning}" for score, meaning in sorted(rubric.items()))
    if criterion:
        listed = f"{criterion}\n{listed}"
    label = "Source passage" if language == "en" else "原文"
    return PromptTemplate.from_template(template).format(
        source=f"{label}:\n{source}\n\n" if source else "", question=record["question"], answer=record["answer"],
        rubric=listed,
    )


# --- pairwise comparison (A/B, asked in both orders to cancel position bias) -------------------------------
class PairwiseVerdict(BaseModel):
    reason: str = Field(max_length=150, description="One short sentence comparing the two responses")
    winner: Literal["A", "B", "tie"] = Field(description="The better response, or tie")


PAIRWISE_TEMPLATES = {
    "en": (
        "You are a fair evaluator. Compare two responses to the instruction and say which one is better (more "
        "correct, complete and helpful), or tie. Do not let their order or length sway you.\n\n{source}"
        "Instruction:\n{question}\n\nResponse A:\n{first}\n\nResponse B:\n{second}"
    ),
    "zh": (
        "你是公正的评审。比较指令的两个回复，判断哪个更好（更正确、完整、有帮助），或平局。不要受顺序或长度影响。\n\n{source}"
        "指令：\n{question}\n\n回复 A：\n{first}\n\n回复 B：\n{second}"
    ),
}


def render_pairwise_prompt(language: str, question: str, first: str, second: str, source: str | None = None) -> str:
    label = "Source passage" if language == "en" else "原文"
    return PromptTemplate.from_template(PAIRWISE_TEMPLATES[language]).format(
        source=f"{label}:\n{source}\n\n" if source else "", question=question, first=first, second=second)


def pairwise_outcome(original: str, swapped: str) -> str:
    """The comparison of X and Y from the verdicts on (A=X, B=Y) and (A=Y, B=X): "first" (X wins both ways),
    "second", "tie", or "inconsistent" when the verdict followed the position (position bias)."""
    as_asked = {"A": "first", "B": "second", "tie": "tie"}[original]
    as_swapped = {"A": "second", "B": "first", "tie": "tie"}[swapped]
    return as_asked if as_asked == as_swapped else "inconsistent"
