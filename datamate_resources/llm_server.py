"""An OpenAI-compatible HTTP server for the packaged local model (`/v1/chat/completions`, `/v1/models`).

Lets tools outside Python (and the tests of the `openai` provider) talk to the embedded model the way they
talk to vLLM, Ollama or llama.cpp's server, `response_format` json_schema included:

    python -m datamate_resources.llm_server --port 8008 [--model path/to/model.gguf]
"""

import argparse
import time
import uuid

import uvicorn
from langchain_core.messages import convert_to_messages
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from datamate_resources.llm import LLMResource


def build_app(resource: LLMResource) -> Starlette:
    chat = resource.chat_model()
    model_name = resource.model_name

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "datamate"}]})

    async def chat_completions(request: Request) -> JSONResponse:
        try:
            body = await request.json()
            messages = convert_to_messages(body["messages"])
        except (ValueError, KeyError, TypeError, NotImplementedError) as exc:
            return _error(400, f"invalid request: {exc}")
        options = {name: body[name] for name in ("temperature", "response_format", "stop") if body.get(name)}
        if body.get("max_completion_tokens") or body.get("max_tokens"):
            options["max_tokens"] = body.get("max_completion_tokens") or body["max_tokens"]
        try:
            reply = await run_in_threadpool(chat.invoke, messages, **options)
        except ValueError as exc:  # e.g. an unsupported response_format or a schema xgrammar rejects
            return _error(400, str(exc))
        usage = reply.usage_metadata or {}
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content},
                         "finish_reason": reply.response_metadata.get("finish_reason", "stop")}],
            "usage": {"prompt_tokens": usage.get("input_tokens", 0),
                      "completion_tokens": usage.get("output_tokens", 0),
                      "total_tokens": usage.get("total_tokens", 0)},
        })

    return Starlette(routes=[
        Route("/v1/models", models),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ])


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8008)
    parser.add_argument("--model", default=None, help="GGUF file (default: the packaged SmolLM2-135M-Instruct)")
    args = parser.parse_args(argv)
    resource = LLMResource(provider="local", model=args.model)
    app = build_app(resource)
    chat = resource.chat_model()
    chat.invoke("Hi", max_tokens=1)  # load the weights before accepting requests
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
