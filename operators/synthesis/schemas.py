"""What the model must return for each kind of synthetic data, and how that becomes `synthesized` rows.

Column contract (docs/architecture.md): `record_id`, `kind`, `question`, `answer`, `reasoning`, `doc_id`,
`chunk_id`, `model`, `template_version`. Instructions map onto it as instruction -> question and
response -> answer, so every kind shares one table.
"""

import hashlib
from functools import cache

from pydantic import BaseModel, Field, create_model


# Length caps (characters) keep a small model from running on inside one string until max_tokens cuts the
# JSON short: the constrained decoder closes the string at the cap. One record fits in ~512 tokens even
# at one token per character.
class QAPair(BaseModel):
    question: str = Field(max_length=150, description="A question answerable from the passage alone")
    answer: str = Field(max_length=300, description="The correct answer, taken from the passage")


class CoTQA(BaseModel):
    question: str = Field(max_length=150, description="A question that needs a few reasoning steps")
    reasoning: str = Field(max_length=300, description="Step-by-step reasoning using facts from the passage")
    answer: str = Field(max_length=100, description="The short final answer")


class InstructionPair(BaseModel):
    instruction: str = Field(max_length=150, description="What a user asks the assistant to do")
    response: str = Field(max_length=300, description="The assistant's response, faithful to the passage")


ITEM_SCHEMAS: dict[str, type[BaseModel]] = {"qa": QAPair, "cot_qa": CoTQA, "instruction": InstructionPair}


@cache
def output_schema(kind: str, count: int) -> type[BaseModel]:
    """`{"items": [...]}` with 1..count items of `kind`: the count is in the schema, not only the prompt."""
    item = ITEM_SCHEMAS[kind]
    return create_model(
        f"{item.__name__}List", items=(list[item], Field(min_length=1, max_length=count))
    )


SYNTHESIZED_COLUMNS = (
    "record_id", "kind", "question", "answer", "reasoning", "doc_id", "chunk_id", "model", "template_version",
)


def record_id(kind: str, chunk_id: str, question: str, answer: str) -> str:
    """Content-addressed, so the same generation always gets the same id (idempotent re-runs)."""
    return hashlib.sha256(f"{kind}\x1f{chunk_id}\x1f{question}\x1f{answer}".encode()).hexdigest()


def to_records(
    kind: str, output: BaseModel, *, doc_id: str, chunk_id: str, model: str, template_version: str
) -> list[dict]:
    """Rows for one model answer (its item count is bounded by `output_schema`); items with an empty
    question or answer are left out."""
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
    return rows
