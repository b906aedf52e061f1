"""What the model must return for each kind of synthetic data, and how that becomes `synthesized` rows.

Column contract (docs/architecture.md): `record_id`, `kind`, `question`, `answer`, `reasoning`, `doc_id`,
`chunk_id`, `model`, `template_version`. Instructions map onto it as instruction -> question and
response -> answer, so every kind shares one table.
"""

import hashlib

from pydantic import BaseModel, Field


class QAPair(BaseModel):
    question: str = Field(description="A question answerable from the passage alone")
    answer: str = Field(description="The correct answer, taken from the passage")


class CoTQA(BaseModel):
    question: str = Field(description="A question that needs a few reasoning steps")
    reasoning: str = Field(description="Step-by-step reasoning using facts from the passage")
    answer: str = Field(description="The short final answer")


class InstructionPair(BaseModel):
    instruction: str = Field(description="What a user asks the assistant to do")
    response: str = Field(description="The assistant's response, faithful to the passage")


class QAPairs(BaseModel):
    items: list[QAPair]


class CoTQAs(BaseModel):
    items: list[CoTQA]


class InstructionPairs(BaseModel):
    items: list[InstructionPair]


OUTPUT_SCHEMAS: dict[str, type[BaseModel]] = {"qa": QAPairs, "cot_qa": CoTQAs, "instruction": InstructionPairs}

SYNTHESIZED_COLUMNS = (
    "record_id", "kind", "question", "answer", "reasoning", "doc_id", "chunk_id", "model", "template_version",
)


def record_id(kind: str, chunk_id: str, question: str, answer: str) -> str:
    """Content-addressed, so the same generation always gets the same id (idempotent re-runs)."""
    return hashlib.sha256(f"{kind}\x1f{chunk_id}\x1f{question}\x1f{answer}".encode()).hexdigest()


def to_records(
    kind: str, output: BaseModel, *, doc_id: str, chunk_id: str, model: str, template_version: str, limit: int
) -> list[dict]:
    """Rows for one model answer; keeps at most `limit` items and drops items with an empty field."""
    rows = []
    for item in output.items:
        if kind == "instruction":
            question, answer, reasoning = item.instruction, item.response, ""
        else:
            question, answer, reasoning = item.question, item.answer, getattr(item, "reasoning", "")
        question, answer, reasoning = question.strip(), answer.strip(), reasoning.strip()
        if not question or not answer:
            continue
        rows.append({
            "record_id": record_id(kind, chunk_id, question, answer),
            "kind": kind,
            "question": question,
            "answer": answer,
            "reasoning": reasoning,
            "doc_id": doc_id,
            "chunk_id": chunk_id,
            "model": model,
            "template_version": template_version,
        })
        if len(rows) == limit:
            break
    return rows
