"""Export `synthesized` rows to the JSONL shapes fine-tuning tools read.

- Alpaca: `{"instruction", "input", "output"}` (LLaMA-Factory, Axolotl, ...).
- OpenAI chat: `{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}` (OpenAI fine-tuning,
  TRL's SFTTrainer, ...).
Chain-of-thought records put the reasoning before the answer in the target text, so a model learns to
reason first.
"""

import json
from collections.abc import Iterable


def _target(row: dict) -> str:
    reasoning = (row.get("reasoning") or "").strip()
    return f"{reasoning}\n\n{row['answer']}" if reasoning else row["answer"]


def alpaca_record(row: dict) -> dict:
    return {"instruction": row["question"], "input": "", "output": _target(row)}


def chat_record(row: dict, system_prompt: str | None = None) -> dict:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": _target(row)}]
    return {"messages": messages}


def to_jsonl(records: Iterable[dict]) -> bytes:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")


def alpaca_jsonl(rows: Iterable[dict]) -> bytes:
    return to_jsonl(alpaca_record(row) for row in rows)


def chat_jsonl(rows: Iterable[dict], system_prompt: str | None = None) -> bytes:
    return to_jsonl(chat_record(row, system_prompt) for row in rows)
