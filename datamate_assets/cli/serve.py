"""`datamate serve`: the knowledge bases as an HTTP API (FastAPI + uvicorn), see docs/serving.md.

    DATAMATE_API_KEYS='app:<key>:debian_docs' datamate serve --host 0.0.0.0 --port 8000
    datamate serve --hash-key <key>     # prints the `sha256:<digest>` form to store instead of the key

Reads the same Milvus and embedding model as the code location (DATAMATE_* variables). Keys come from
DATAMATE_API_KEYS and/or the file named by DATAMATE_API_KEYS_FILE; without any key the service only starts on
a loopback address (then every /v1 request is refused with 401: there is no open mode). With
DATAMATE_RERANK_LLM=1, `rerank: true` in a search re-orders its candidates with the configured LLM
(`datamate.rerank`).
"""

import ipaddress
import logging
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="Serve the knowledge bases over HTTP (API keys, rate limits)")
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="Port (default 8000)")
    parser.add_argument("--rate", type=float, default=20.0, help="Requests per second per API key (default 20)")
    parser.add_argument("--burst", type=int, default=40, help="Burst of requests per API key (default 40)")
    parser.add_argument("--milvus-timeout", type=float, default=10.0,
                        help="Seconds per Milvus call before answering 503 (default 10)")
    parser.add_argument("--hash-key", metavar="KEY", help="Print the hashed form of KEY for DATAMATE_API_KEYS, exit")
    parser.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args) -> int:
    from datamate.api_keys import digest, load_api_keys

    if args.hash_key:
        print(f"sha256:{digest(args.hash_key).hex()}")
        return 0
    try:
        keys = load_api_keys()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not keys and not is_loopback(args.host):
        print(f"error: no API keys configured (DATAMATE_API_KEYS or DATAMATE_API_KEYS_FILE): refusing to serve on "
              f"{args.host}; bind to 127.0.0.1 or configure keys", file=sys.stderr)
        return 2

    import uvicorn

    from datamate.rerank import reranker_from_env
    from datamate.service import Backend, create_app
    from datamate_resources.embeddings import build_embeddings
    from datamate_resources.llm import LLMUnavailableError
    from datamate_resources.milvus import build_milvus
    from datamate_resources.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    milvus = build_milvus(settings, timeout_seconds=args.milvus_timeout).process_config_and_initialize()
    backend = Backend(milvus, build_embeddings(settings).process_config_and_initialize())
    try:
        reranker = reranker_from_env(settings, logging.getLogger("datamate.serve"))
    except LLMUnavailableError as error:
        print(f"error: DATAMATE_RERANK_LLM is set but the LLM is not usable: {error}", file=sys.stderr)
        return 2
    logging.getLogger("datamate.serve").info(
        "serving %s with %d API key(s) (%s) on %s:%d", backend.where, len(keys),
        ", ".join(key.name for key in keys) or "none", args.host, args.port,
    )
    if reranker is not None:
        logging.getLogger("datamate.serve").info("re-ranking on request with LLM %s", reranker.model_name)
    uvicorn.run(create_app(backend, keys, rate=args.rate, burst=args.burst, reranker=reranker), host=args.host,
                port=args.port, log_level="info")
    return 0
