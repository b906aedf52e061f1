"""What each synthesis method yields from the demo corpus, and at what speed: `python -m bench.synthesis_methods`.

Chunks the English handbook pages of the sample corpus the way the demo does (recursive splitter, 800/100), skips
the chunks synthesis would skip, and runs every method (`synthesis.kinds`) on the first `--chunks` of them with
the packaged SmolLM2-135M-Instruct in this process (or DATAMATE_LLM_BASE_URL when set), with a fresh cache. Per
method: requests, records kept, set aside (by operator), model calls, prompt/completion tokens, seconds and
output tokens/s; the baseline for tokens/s is the same model's free (unconstrained) decoding of one prompt,
measured in the same run, since the shared CPU's load moves every figure. Prints one JSON object per method,
then a Markdown table and the load average.
"""

import argparse
import io
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from datamate_assets.synthesis import chunk_skip_reason
from datamate_resources.llm import LLMResource
from datamate_resources.settings import Settings
from datamate_resources.storage import ObjectStore
from operators.chunking import ChunkingConfig, split_document
from operators.evaluation.report import markdown_table
from operators.readers.formats import ReadOptions, read_html
from operators.synthesis import MethodSettings, Synthesizer, plan_requests, resolve_template, templates_for_kinds

PAGES = Path(__file__).resolve().parents[1] / "data" / "samples" / "debian" / "handbook-en"
KINDS = ("qa", "cot_qa", "instruction", "evol_instruct", "self_instruct", "multi_turn", "preference")
SEEDS = ["Explain what a package manager does.", "Write a shell command that lists the files in a directory.",
         "Summarize the difference between a process and a thread.", "Give three tips for securing an SSH server."]


def demo_chunks(limit: int) -> list[dict]:
    """The first usable chunk of the first `limit` pages, as synthesis plans them (first chunks of documents first)."""
    chunks = []
    for page in sorted(PAGES.glob("*.html")):
        [document] = read_html(io.BytesIO(page.read_bytes()), page.name, ReadOptions())
        for position, (text, _) in enumerate(split_document(document.text, ChunkingConfig())):
            if chunk_skip_reason(text, "en") is None:
                chunks.append({"chunk_id": f"{page.stem}-{position}", "doc_id": page.stem, "text": text,
                               "position": position})
                break
        if len(chunks) == limit:
            break
    return chunks


def free_decoding_rate(llm: LLMResource) -> float:
    """Output tokens/s of unconstrained decoding of one short prompt: the baseline for the methods' rates."""
    chat = llm.chat_model()
    chat.invoke("Hi", max_tokens=1)  # loads the weights: not part of the rate
    started = time.perf_counter()
    reply = chat.invoke([("user", "Explain in three sentences what the APT package manager does on Debian.")],
                        max_tokens=48)
    return reply.usage_metadata["output_tokens"] / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--chunks", type=int, default=2, help="chunks per method")
    parser.add_argument("--kinds", nargs="*", default=list(KINDS))
    parser.add_argument("--rounds", type=int, default=2, help="evol_instruct rounds")
    parser.add_argument("--turns", type=int, default=3, help="multi_turn turns")
    args = parser.parse_args()
    llm = LLMResource.from_settings(Settings.from_env())
    chunks = demo_chunks(args.chunks)
    before = free_decoding_rate(llm)
    settings = MethodSettings(evol_rounds=args.rounds, self_instruct_seeds=SEEDS, turns=args.turns,
                              preference_candidates=2)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for kind in args.kinds:
            client = llm.client(ObjectStore(url=f"file://{cache}"))
            templates = {name: resolve_template(name, "en") for name in templates_for_kinds([kind])}
            synthesizer = Synthesizer(generate=client.generate_structured, templates=templates,
                                      model=client.model_name, settings=settings)
            requests = plan_requests(chunks, [kind], 1, len(chunks))[0]
            started = time.perf_counter()
            synthesizer.run(kind, requests)
            seconds = time.perf_counter() - started
            usage = client.usage
            row = {
                "kind": kind, "chunks": len(requests), "records": len(synthesizer.rows),
                "set_aside": dict(Counter(d["operator"] for d in synthesizer.drops)),
                "calls": usage.calls, "retries": usage.retries, "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens, "seconds": round(seconds, 1),
                "output_tokens_per_s": round(usage.output_tokens_per_second, 2),
                "example": synthesizer.rows[0] if synthesizer.rows else None,
            }
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False, default=str), flush=True)
    baseline = (before + free_decoding_rate(llm)) / 2  # before and after the methods: the load moves
    for row in rows:
        row["ratio_to_free_decoding"] = round(row["output_tokens_per_s"] / baseline, 2) if baseline else None
    print(f"\nfree decoding baseline: {baseline:.2f} output tokens/s (mean of before and after); "
          f"load average {os.getloadavg()}\n")
    print(markdown_table([{name: value for name, value in row.items() if name != "example"} for row in rows]))


if __name__ == "__main__":
    main()
