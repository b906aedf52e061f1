"""A scripted OpenAI-compatible endpoint, for tests where a deterministic answer is the point (budget arithmetic,
pairwise position swapping). Every answer costs exactly PROMPT_TOKENS + COMPLETION_TOKENS; answers are chosen
by the requested schema's name, and every request is appended to a journal.

    python -m tests.llm.scripted_llm --port 8009 --journal /tmp/journal.jsonl
"""

import argparse
import hashlib
import json
import re
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

PROMPT_TOKENS, COMPLETION_TOKENS = 100, 20
MODEL = "scripted"


def answer(schema_name: str, prompt: str) -> dict:
    tag = hashlib.sha256(prompt.encode()).hexdigest()[:6]
    if schema_name == "PairwiseVerdict":
        return {"reason": "The first answer is better.", "winner": "A"}  # always the first: pure position bias
    if schema_name == "RubricGrade":
        return {"feedback": "Fine.", "score": 3 + len(prompt) % 2}
    if schema_name == "TopicAnswer":  # the annotation labeler: the first of the prompt's `Labels: a, b, c`
        return {"topic": prompt.split("\n", 1)[0].removeprefix("Labels: ").split(", ")[0], "confidence": 0.9}
    if schema_name == "RerankOrder":  # the re-ranker: the passages in reverse order, or a passage that isn't there
        count = int(re.search(r"\(1 to (\d+)\)", prompt).group(1))
        return {"ranking": [count + 5] if "unanswerable" in prompt else list(range(count, 0, -1))}
    if schema_name == "CandidateAnswer":
        return {"answer": f"Answer {tag}."}
    if schema_name == "InstructionPairList":
        return {"items": [{"instruction": f"Explain topic {tag} in detail.", "response": f"Topic {tag} is ..."}]}
    return {"items": [{"question": f"What is item {tag}?", "answer": f"Item {tag} is a thing."}]}


def build_app(journal: Path) -> Starlette:
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        schema_name = (body.get("response_format") or {}).get("json_schema", {}).get("name", "")
        prompt = body["messages"][-1]["content"]
        with journal.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"schema": schema_name, "prompt": prompt}) + "\n")
        content = json.dumps(answer(schema_name, prompt))
        return JSONResponse({
            "id": "scripted", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                      "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS},
        })

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/models", models)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--journal", type=Path, required=True)
    args = parser.parse_args()
    uvicorn.run(build_app(args.journal), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
