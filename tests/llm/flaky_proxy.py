"""A proxy in front of an OpenAI-compatible server that fails a share of requests, as real endpoints do.

Failures are deterministic (by request number) so a test run is reproducible. They cycle through:
429 with Retry-After, 500, 503, a request held past the client's timeout, a 200 whose body is not JSON, and
a 200 whose completion is not the JSON the caller asked for. Every request and its fate is appended to
`--journal` so tests can check what the server really saw.

    python -m tests.llm.flaky_proxy --upstream http://127.0.0.1:8008 --port 8010 --failure-rate 0.3
"""

import argparse
import asyncio
import itertools
import json
import time

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

FAILURES = ("429", "500", "503", "timeout", "invalid_json", "garbage_content")


def build_app(upstream: str, failure_rate: float, slow_seconds: float, journal: str) -> Starlette:
    counter = itertools.count()
    failure_kinds = itertools.cycle(FAILURES)
    client = httpx.AsyncClient(base_url=upstream, timeout=600)

    def decide() -> str:
        n = next(counter)
        # Fail exactly when n * rate crosses an integer: an even spread with the requested share.
        return next(failure_kinds) if int((n + 1) * failure_rate) > int(n * failure_rate) else "ok"

    def record(fate: str, body: bytes) -> None:
        with open(journal, "a", encoding="utf-8") as out:
            out.write(json.dumps({"t": time.time(), "fate": fate, "request": body.decode("utf-8")}) + "\n")

    async def forward(request: Request) -> Response:
        body = await request.body()
        fate = decide() if request.method == "POST" else "ok"
        record(fate, body)
        if fate == "429":
            return JSONResponse({"error": {"message": "rate limited"}}, status_code=429, headers={"retry-after": "0"})
        if fate in ("500", "503"):
            return JSONResponse({"error": {"message": f"injected {fate}"}}, status_code=int(fate))
        if fate == "timeout":  # hold the request past the client's timeout, never reaching the model
            await asyncio.sleep(slow_seconds)
            return JSONResponse({"error": {"message": "injected gateway timeout"}}, status_code=504)
        upstream_reply = await client.request(
            request.method, request.url.path, content=body, headers={"content-type": "application/json"}
        )
        if fate == "invalid_json":
            return Response(upstream_reply.content[: len(upstream_reply.content) // 2],
                            media_type="application/json")
        if fate == "garbage_content":
            reply = upstream_reply.json()
            reply["choices"][0]["message"]["content"] = "Sure! Here is the answer you asked for."
            return JSONResponse(reply)
        return Response(upstream_reply.content, status_code=upstream_reply.status_code,
                        media_type="application/json")

    return Starlette(routes=[Route("/v1/{path:path}", forward, methods=["GET", "POST"])])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--failure-rate", type=float, default=0.3)
    parser.add_argument("--slow-seconds", type=float, default=60.0)
    parser.add_argument("--journal", required=True)
    args = parser.parse_args()
    app = build_app(args.upstream, args.failure_rate, args.slow_seconds, args.journal)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
