"""Label Studio round trip: a labeling config, tasks with pre-annotations, and reading completed exports back.

Formats are Label Studio's own (checked in the tests with `label-studio-sdk`'s LabelInterface and
converter): tasks are `{"data": {...}, "predictions": [{"model_version", "score", "result": [...]}]}`,
and a "JSON" export is the list of tasks with their `annotations`, each with `result`, `completed_by`,
`created_at`/`updated_at` and `was_cancelled`.
"""

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

TEXT = "text"
TOPIC, LANGUAGE, QUALITY = "topic", "language", "quality"
MAX_RATING = 5


def labeling_config(topics: Iterable[str], languages: Iterable[str]) -> str:
    """The project's labeling interface: the text, a topic and a language choice, a 1-5 quality rating."""

    def choices(name: str, values: Iterable[str]) -> str:
        options = "".join(f"\n    <Choice value={quoteattr(v)}/>" for v in values)
        return (f'  <Header value="{name.capitalize()}"/>\n'
                f'  <Choices name="{name}" toName="{TEXT}" choice="single" showInline="true">{options}\n'
                f"  </Choices>\n")

    parts = [f'<View>\n  <Text name="{TEXT}" value="${TEXT}"/>\n']
    topics = list(topics)
    if topics:
        parts.append(choices(TOPIC, topics))
    parts.append(choices(LANGUAGE, sorted(set(languages))))
    parts.append('  <Header value="Quality"/>\n'
                 f'  <Rating name="{QUALITY}" toName="{TEXT}" maxRating="{MAX_RATING}"/>\n')
    parts.append("</View>\n")
    return "".join(parts)


def score_to_rating(score: float) -> int:
    return 1 + round(max(0.0, min(1.0, score)) * (MAX_RATING - 1))


def rating_to_score(rating: float) -> float:
    return round((float(rating) - 1) / (MAX_RATING - 1), 4)


def task(doc_id: str, text: str, labels: Mapping[str, Mapping[str, Any]], model_version: str) -> dict[str, Any]:
    """One Label Studio task whose prediction pre-fills the current labels (automatic or earlier human)."""
    result = []
    for name in (TOPIC, LANGUAGE, QUALITY):
        current = labels.get(name)
        if not current or current.get("value") in (None, ""):
            continue
        value = ({"rating": score_to_rating(current["value"])} if name == QUALITY
                 else {"choices": [str(current["value"])]})
        result.append({"id": f"{doc_id[:8]}-{name}", "from_name": name, "to_name": TEXT,
                       "type": "rating" if name == QUALITY else "choices", "value": value,
                       "score": current.get("confidence")})
    scores = [r["score"] for r in result if r["score"] is not None]
    prediction = {"model_version": model_version, "score": round(sum(scores) / len(scores), 4) if scores else None,
                  "result": result}
    return {"data": {TEXT: text, "doc_id": doc_id}, "predictions": [prediction] if result else []}


@dataclass
class ExportImport:
    """What came out of one export: human labels (one row per doc and field) and tasks set aside, with reasons."""

    labels: list[dict[str, Any]] = field(default_factory=list)
    set_aside: list[dict[str, Any]] = field(default_factory=list)
    tasks: int = 0


def read_export(raw: bytes | str, source: str, topics: Iterable[str] = ()) -> ExportImport:
    """Parse a Label Studio "JSON" export (a list of tasks). Raises ValueError naming `source` if it isn't one."""
    try:
        tasks = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{source}: not JSON ({exc})") from exc
    if not isinstance(tasks, list):
        raise ValueError(f"{source}: a Label Studio JSON export is a list of tasks, got {type(tasks).__name__}")
    allowed_topics = set(topics)
    out = ExportImport(tasks=len(tasks))
    for index, item in enumerate(tasks):
        where = {"export_file": source, "task_index": index,
                 "task_id": item.get("id") if isinstance(item, dict) else None}
        try:
            rows = _task_labels(item, allowed_topics)
        except ValueError as exc:
            out.set_aside.append({**where, "doc_id": _doc_id(item), "reason": str(exc)})
            continue
        out.labels.extend({**where, **row} for row in rows)
    return out


def _doc_id(item: Any) -> str | None:
    data = item.get("data") if isinstance(item, dict) else None
    return data.get("doc_id") if isinstance(data, dict) else None


def _task_labels(item: Any, allowed_topics: set[str]) -> list[dict[str, Any]]:
    if not isinstance(item, dict) or not isinstance(item.get("data"), dict):
        raise ValueError("not_a_task: no `data` object")
    doc_id = item["data"].get("doc_id")
    if not doc_id:
        raise ValueError("missing_doc_id: task data has no `doc_id` (was it exported by DataMate?)")
    done = [a for a in item.get("annotations") or [] if not a.get("was_cancelled")]
    if not done:
        raise ValueError("not_annotated: no completed annotation")
    latest = max(done, key=lambda a: a.get("updated_at") or a.get("created_at") or "")
    annotator = _annotator(latest, item)
    annotated_at = latest.get("updated_at") or latest.get("created_at")
    rows = []
    for region in latest.get("result") or []:
        name, value = region.get("from_name"), region.get("value") or {}
        if name in (TOPIC, LANGUAGE):
            chosen = value.get("choices") or []
            if len(chosen) != 1:
                raise ValueError(f"bad_choice: field {name!r} needs exactly one choice, got {chosen!r}")
            if name == TOPIC and allowed_topics and chosen[0] not in allowed_topics:
                raise ValueError(f"unknown_label: topic {chosen[0]!r} is not one of {sorted(allowed_topics)}")
            label_value: Any = chosen[0]
        elif name == QUALITY:
            rating = value.get("rating")
            if not isinstance(rating, int | float) or not 0 <= rating <= MAX_RATING:
                raise ValueError(f"bad_rating: quality rating {rating!r} is not in 0..{MAX_RATING}")
            if rating == 0:  # Label Studio's "no stars": the annotator gave no quality judgement
                continue
            label_value = rating_to_score(rating)
        else:
            continue  # regions of controls DataMate doesn't manage are left alone
        rows.append({"doc_id": doc_id, "field": name, "value": json.dumps(label_value), "annotator": annotator,
                     "annotated_at": annotated_at})
    if not rows:
        raise ValueError("no_labels: the annotation has no topic, language or quality")
    return rows


def _annotator(annotation: Mapping[str, Any], item: Mapping[str, Any]) -> str:
    """Who labeled: the e-mail when the export carries it, else Label Studio's user id."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        return str(who.get("email") or who.get("id"))
    username = annotation.get("created_username") or ""
    if username.strip(", "):
        return username.split(",")[0].strip()
    return f"label-studio-user:{who}" if who is not None else "unknown"
