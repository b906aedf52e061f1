"""What the model must return for each kind of synthetic data, and how that becomes `synthesized` rows.

Column contract (docs/architecture.md): `record_id`, `kind`, `question`, `answer`, `reasoning`, `doc_id`,
`chunk_id`, `model`, `template_version`, then provenance (`chunks_version`: the Delta version of the chunks
table read, `prompt_hash`: sha256 of the prompt that produced the record) and the fields of the richer kinds
(`conversation`: JSON list of chat messages for multi_turn; `rejected`, `chosen_rating`, `rejected_rating`
for preference, whose `answer` is the chosen one; `parent_id` for evolved instructions). Instructions map onto
it as instruction -> question and response -> answer, so every kind shares one table.
"""

import hashlib
from functools import cache

import pyarrow as pa
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


class Turn(BaseModel):
    user: str = Field(max_length=150, description="The user's question")
    assistant: str = Field(max_length=250, description="The assistant's answer, from the passage")


class CandidateAnswer(BaseModel):
    answer: str = Field(max_length=300, description="The answer to the question")


ITEM_SCHEMAS: dict[str, type[BaseModel]] = {
    "qa": QAPair, "cot_qa": CoTQA, "instruction": InstructionPair, "evol_instruct": InstructionPair,
    "self_instruct": InstructionPair, "multi_turn": Turn,
}


@cache
def output_schema(kind: str, count: int) -> type[BaseModel]:
    """`{"items": [...]}` with 1..count items of `kind`: the count is in the schema, not only the prompt.
    For multi_turn an item is a turn and `count` the number of turns (at least 2)."""
    item = ITEM_SCHEMAS[kind]
    least = min(2, count) if kind == "multi_turn" else 1
    return create_model(
        f"{item.__name__}List", items=(list[item], Field(min_length=least, max_length=count))
    )


SYNTHESIZED_SCHEMA = pa.schema([
    ("record_id", pa.string()), ("kind", pa.string()), ("question", pa.string()), ("answer", pa.string()),
    ("reasoning", pa.string()), ("doc_id", pa.string()), ("chunk_id", pa.string()), ("model", pa.string()),
    ("template_version", pa.string()), ("chunks_version", pa.int64()), ("prompt_hash", pa.string()),
    ("conversation", pa.string()), ("rejected", pa.string()), ("chosen_rating", pa.int8()),
    ("rejected_rating", pa.int8()), ("parent_id", pa.string()),
])
SYNTHESIZED_COLUMNS = tuple(SYNTHESIZED_SCHEMA.names)


def record_id(kind: str, chunk_id: str, question: str, answer: str) -> str:
    """Content-addressed, so the same generation always gets the same id (idempotent re-runs)."""
    return hashlib.sha256(f"{kind}\x1f{chunk_id}\x1f{question}\x1f{answer}".encode()).hexdigest()


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def make_record(kind: str, question: str, answer: str, *, doc_id: str, chunk_id: str, model: str,
                template_version: str, prompt: str, chunks_version: int | None = None, reasoning: str = "",
                **extra: object) -> dict:
    """One `synthesized` row; `extra` fills the columns of the richer kinds (others stay null)."""
    row = dict.fromkeys(SYNTHESIZED_COLUMNS)
    row.update({
        "record_id": record_id(kind, chunk_id, question, answer), "kind": kind, "question": question,
        "answer": answer, "reasoning": reasoning, "doc_id": doc_id, "chunk_id": chunk_id, "model": model,
        "template_version": template_version, "chunks_version": chunks_version, "prompt_hash": prompt_hash(prompt),
    })
    unknown = set(extra) - set(SYNTHESIZED_COLUMNS)
    if unknown:
        raise ValueError(f"not synthesized columns: {sorted(unknown)}")
    row.update(extra)
    return row


def to_records(kind: str, output: BaseModel, *, doc_id: str, chunk_id: str, model: str, template_version: str,
               prompt: str = "", chunks_version: int | None = None) -> list[dict]:
    """Rows for one qa / cot_qa / instruction answer (its item count is bounded by `output_schema`); items
    with an empty question or answer are left out."""
    rows = []
    for item in output.items:
        if isinstance(item, InstructionPair):
            question, answer, reasoning = item.instruction, item.response, ""
        else:
            question, answer, reasoning = item.question, item.answer, getattr(item, "reasoning", "")
        question, answer, reasoning = question.strip(), answer.strip(), reasoning.strip()
        if not question or not answer:
            continue
        rows.append(make_record(kind, question, answer, reasoning=reasoning, doc_id=doc_id, chunk_id=chunk_id,
                                model=model, template_version=template_version, prompt=prompt,
                                chunks_version=chunks_version))
    return rows
