"""The LLM re-ranker of `datamate serve` and `datamate search --rerank`, configured from the environment.

Off unless DATAMATE_RERANK_LLM is 1/true/yes/on; then it uses the chat model the LLM stages use: the endpoint at
DATAMATE_LLM_BASE_URL with DATAMATE_LLM_MODEL (its key only in DATAMATE_LLM_API_KEY), else the packaged local
model. A search answers first, so a re-ranking call gets one retry, not the stages' four.
"""

import logging
import os

from operators.rerank import LLMReranker

ENABLE_VARIABLE = "DATAMATE_RERANK_LLM"
HOW_TO_ENABLE = ("set DATAMATE_RERANK_LLM=1 (it uses DATAMATE_LLM_BASE_URL/DATAMATE_LLM_MODEL, else the packaged "
                 "local model)")
RETRIES = 1


def rerank_enabled(environ=os.environ) -> bool:
    return (environ.get(ENABLE_VARIABLE) or "").strip().lower() in {"1", "true", "yes", "on"}


def reranker_from_settings(settings, logger: logging.Logger | None = None) -> LLMReranker:
    """The re-ranker over the configured LLM (raises LLMUnavailableError when it is misconfigured)."""
    from datamate_resources.llm import LLMResource

    log = logger or logging.getLogger("datamate.rerank")
    resource = LLMResource.from_settings(settings).model_copy(update={"max_retries": RETRIES})
    resource = resource.process_config_and_initialize()  # resolves the key's dg.EnvVar

    def generate(prompts, schema):
        return resource.client(log=log).generate_structured(prompts, schema)

    return LLMReranker(generate, resource.model_name, logger=log)


def reranker_from_env(settings=None, logger: logging.Logger | None = None) -> LLMReranker | None:
    """None unless DATAMATE_RERANK_LLM asks for re-ranking."""
    if not rerank_enabled():
        return None
    from datamate_resources.settings import Settings

    return reranker_from_settings(settings or Settings.from_env(), logger)
