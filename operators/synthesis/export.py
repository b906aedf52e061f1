"""Export `synthesized` rows to the shapes fine-tuning tools read, in size-bounded shards.

- alpaca: `{"instruction", "input", "output"}` (LLaMA-Factory, Axolotl, ...).
- openai_chat: `{"messages": [{"role": "user", ...}, {"role": "assistant", ...}, ...]}` (OpenAI fine-tuning,
  TRL's SFTTrainer); multi-turn records give the whole conversation.
- sharegpt: `{"conversations": [{"from": "human", "value"}, {"from": "gpt", "value"}, ...]}`.
- dpo: `{"prompt", "chosen", "rejected"}` (TRL's DPOTrainer), from preference records only.
- text: `{"text"}` (continued pre-training).
- parquet: the records' columns as Parquet.
Chain-of-thought records put the reasoning before the answer in the target text, so a model learns to reason
first. Every shard is a JSONL (or Parquet) file that `datasets.load_dataset("json"|"parquet", data_files=...)`
reads.
"""

import io
import json
from collections.abc import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

SHARD_BYTES = 64 * 1024 * 1024


def _target(row: dict) -> str:
    reasoning = (row.get("reasoning") or "").strip()
    return f"{reasoning}\n\n{row['answer']}" if reasoning else row["answer"]


def _messages(row: dict) -> list[dict]:
    if row.get("conversation"):
        return json.loads(row["conversation"])
    return [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": _target(row)}]


def alpaca_record(row: dict) -> dict | None:
    return {"instruction": row["question"], "input": "", "output": _target(row)}


def chat_record(row: dict, system_prompt: str | None = None) -> dict | None:
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return {"messages": system + _messages(row)}


def sharegpt_record(row: dict) -> dict | None:
    speaker = {"user": "human", "assistant": "gpt", "system": "system"}
    return {"conversations": [{"from": speaker[m["role"]], "value": m["content"]} for m in _messages(row)]}


def dpo_record(row: dict) -> dict | None:
    if not row.get("rejected"):
        return None
    return {"prompt": row["question"], "chosen": row["answer"], "rejected": row["rejected"]}


def text_record(row: dict) -> dict | None:
    return {"text": "\n\n".join(f"{m['role']}: {m['content']}" for m in _messages(row))}


JSONL_FORMATS: dict[str, Callable[[dict], dict | None]] = {
    "alpaca": alpaca_record, "openai_chat": chat_record, "sharegpt": sharegpt_record, "dpo": dpo_record,
    "text": text_record,
}
FORMATS = (*JSONL_FORMATS, "parquet")


def to_jsonl(records: Iterable[dict]) -> bytes:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")


def alpaca_jsonl(rows: Iterable[dict]) -> bytes:
    return to_jsonl(alpaca_record(row) for row in rows)


def chat_jsonl(rows: Iterable[dict], system_prompt: str | None = None) -> bytes:
    return to_jsonl(chat_record(row, system_prompt) for row in rows)


def jsonl_shards(fmt: str, rows: Iterable[dict], shard_bytes: int = SHARD_BYTES) -> Iterator[bytes]:
    """JSONL shards of at most `shard_bytes` (a single larger record gets a shard of its own)."""
    convert = JSONL_FORMATS[fmt]
    lines, size = [], 0
    for row in rows:
        record = convert(row)
        if record is None:
            continue
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        if lines and size + len(line) > shard_bytes:
            yield b"".join(lines)
            lines, size = [], 0
        lines.append(line)
        size += len(line)
    if lines:
        yield b"".join(lines)


def parquet_shards(batches: Iterable[pa.RecordBatch], shard_bytes: int = SHARD_BYTES) -> Iterator[bytes]:
    """Parquet shards of about `shard_bytes` (counted in Arrow memory, before compression)."""
    batch_list, size = [], 0
    for batch in batches:
        if batch_list and size + batch.nbytes > shard_bytes:
            yield _parquet(batch_list)
            batch_list, size = [], 0
        batch_list.append(batch)
        size += batch.nbytes
    if batch_list:
        yield _parquet(batch_list)


def _parquet(batches: list[pa.RecordBatch]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_batches(batches), buffer, compression="zstd")
    return buffer.getvalue()


def shard_name(index: int, fmt: str) -> str:
    return f"part-{index:05d}.{'parquet' if fmt == 'parquet' else 'jsonl'}"
