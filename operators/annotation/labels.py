"""Automatic labels per document, each with its source (model or rule) and a confidence.

A label is `{"value", "confidence", "source", "annotator", "annotated_at"}`; `annotator` and `annotated_at`
are filled only for human labels, which replace the automatic ones they cover (`merge_human_labels`).
"""

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, create_model

from operators.filters.c4 import C4QualityFilter
from operators.filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from operators.filters.language import LanguageIDScoreFilter

LANGUAGE_SOURCE = "lingua"
QUALITY_RULES = (GopherQualityFilter, GopherRepetitionFilter, C4QualityFilter)
QUALITY_SOURCE = "rules:" + "+".join(rule.name for rule in QUALITY_RULES)
LLM_TEXT_CHARS = 1500  # what the topic prompt shows of a document: enough to tell its subject, cheap to read


def label(value: Any, confidence: float, source: str, annotator: str | None = None,
          annotated_at: str | None = None) -> dict[str, Any]:
    return {"value": value, "confidence": round(float(confidence), 4), "source": source,
            "annotator": annotator, "annotated_at": annotated_at}


def language_labels(texts: Sequence[str]) -> list[dict[str, Any]]:
    """Language (ISO 639-1, or `unknown`) by lingua, through the library's language filter."""
    detector = LanguageIDScoreFilter(min_score=0.0)
    return [label(s["lang"], s["lang_score"], LANGUAGE_SOURCE) for s in detector.compute_stats_batch(list(texts))]


def quality_labels(texts: Sequence[str]) -> list[dict[str, Any]]:
    """Share of the library's quality rule sets (Gopher quality, Gopher repetition, C4) a text passes.

    Rules are deterministic, so the confidence is 1; the failed rules are kept as `reasons`.
    """
    rules = [rule() for rule in QUALITY_RULES]
    results = []
    for text in texts:
        failed = [reason for rule in rules if not (outcome := rule.check({"text": text})).keep
                  for reason in [outcome.reason]]
        score = 1 - len(failed) / len(rules)
        results.append({**label(round(score, 4), 1.0, QUALITY_SOURCE), "reasons": failed})
    return results


def topic_schema(labels: Sequence[str]) -> type[BaseModel]:
    """The structured answer the LLM must give: one of `labels` and a confidence in [0, 1]."""
    return create_model(
        "TopicAnswer",
        topic=(Literal[tuple(labels)], Field(description="The label that fits the text best")),
        confidence=(float, Field(ge=0, le=1, description="How sure you are, from 0 to 1")),
    )


def topic_messages(text: str, labels: Sequence[str]) -> list[tuple[str, str]]:
    options = ", ".join(labels)
    return [
        ("system", "You label documents by topic. Answer with a JSON object with keys `topic` and `confidence`."),
        ("user", f"Labels: {options}\n\nDocument:\n{text[:LLM_TEXT_CHARS]}\n\n"
                 f"Which label fits the document best? `topic` must be one of: {options}."),
    ]


def topic_labels_from_embeddings(doc_vectors: np.ndarray, label_vectors: np.ndarray, labels: Sequence[str],
                                 source: str, temperature: float = 0.05) -> list[dict[str, Any]]:
    """Zero-shot topic: the label whose description is nearest (cosine), confidence by a softmax over labels.

    The low temperature turns MiniLM's narrow cosine range (~0.0-0.6) into usable probabilities.
    """
    docs = doc_vectors / np.linalg.norm(doc_vectors, axis=1, keepdims=True).clip(1e-12)
    names = label_vectors / np.linalg.norm(label_vectors, axis=1, keepdims=True).clip(1e-12)
    logits = docs @ names.T / temperature
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    best = probabilities.argmax(axis=1)
    return [label(labels[i], probabilities[row, i], source) for row, i in enumerate(best)]


def label_description(name: str) -> str:
    """What a label is embedded as: a sentence embeds closer to documents than a bare word."""
    return f"This text is about {name}."


def merge_human_labels(labels: dict[str, dict], human: dict[str, dict]) -> dict[str, dict]:
    """Human labels win over automatic ones for the fields they cover; the rest stays automatic."""
    return {**labels, **human}
