"""`<dataset>/evaluation`: heuristic metrics over the funnel and an LLM judge of the synthetic records.

The asset's table holds one row per judged record (verdicts per dimension, 1-5 score, pass); the report
(Markdown tables and PNG plots) is in its metadata. Asset checks compare the spec's thresholds and are
blocking, so assets downstream of the evaluation do not materialize from data that failed them.
"""

import json
from collections import Counter

import dagster as dg
import numpy as np
import pyarrow as pa

from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec
from datamate_resources.llm import LLMResource
from datamate_resources.storage import ObjectStore
from operators.evaluation import (
    DEFAULT_DIMENSIONS,
    DEFAULT_JUDGE_TEMPLATES,
    JudgeDimension,
    distinct_n,
    duplicate_rate,
    flagged_word_rate,
    funnel,
    judge_schema,
    judge_template_version,
    label_distribution,
    language_mix,
    length_stats,
    pass_rates,
    render_judge_prompt,
    verdict_rows,
)
from operators.evaluation.metrics import tokens
from operators.evaluation.report import bars_png, histograms_png, markdown_image, markdown_table
from operators.filters.stats import flagged_words

FUNNEL_STAGES = ("collected", "cleaned", "chunks", "synthesized")
JUDGE_SCHEMA = pa.schema([
    ("record_id", pa.string()), ("kind", pa.string()), ("doc_id", pa.string()), ("chunk_id", pa.string()),
    ("judge_model", pa.string()), ("judge_version", pa.string()), ("score", pa.int8()), ("passed", pa.bool_()),
    ("verdicts", pa.string()), ("error", pa.string()),
])
FAILED_EXAMPLES = 5


def judge_dimensions(spec: DatasetSpec) -> list[JudgeDimension]:
    configured = spec.evaluation.judge_dimensions
    if configured:
        return [JudgeDimension(name=d.name, description=d.description) for d in configured]
    return DEFAULT_DIMENSIONS[_language(spec)]


def _language(spec: DatasetSpec) -> str:
    return spec.synthesis.language if spec.synthesis else "en"


def build_defs(spec: DatasetSpec) -> dg.Definitions:
    if spec.evaluation is None:
        return dg.Definitions()
    section = spec.evaluation
    asset_key = key(spec, "evaluation")
    dimensions = judge_dimensions(spec)
    schema = judge_schema(dimensions)  # bad dimensions (duplicates) fail when the code location loads
    template = DEFAULT_JUDGE_TEMPLATES[_language(spec)]
    judge_version = judge_template_version(template, dimensions)
    loaded = [stage for stage, present in (("synthesized", spec.synthesis), ("chunks", spec.index),
                                           ("annotated", spec.annotation)) if present]
    counted_only = [stage for stage, present in (("collected", True), ("cleaned", spec.cleaning)) if present]

    checks = []
    if section.checks.min_judge_pass_rate is not None and spec.synthesis:
        checks.append(dg.AssetCheckSpec(
            "judge_pass_rate", asset=asset_key, blocking=True,
            description=f"Share of judged records passing every dimension >= {section.checks.min_judge_pass_rate}",
        ))
    if section.checks.max_duplicate_rate is not None and spec.synthesis:
        checks.append(dg.AssetCheckSpec(
            "duplicate_rate", asset=asset_key, blocking=True,
            description=f"Share of synthetic questions repeating an earlier one <= {section.checks.max_duplicate_rate}",
        ))

    @dg.asset(
        key=asset_key,
        group_name=spec.name,
        ins={stage: dg.AssetIn(key(spec, stage)) for stage in loaded},
        deps=[key(spec, stage) for stage in counted_only],
        check_specs=checks,
        description="Funnel counts, lengths, diversity, duplicates, languages, labels and flagged words; "
        f"LLM judge on up to {section.max_judged} synthetic records ({', '.join(d.name for d in dimensions)}).",
        kinds={"python", "parquet"},
    )
    def evaluation(context: dg.AssetExecutionContext, llm: LLMResource, storage: ObjectStore, **inputs: pa.Table):
        synthesized = inputs.get("synthesized")
        chunks = inputs.get("chunks")
        annotated = inputs.get("annotated")
        counts = {stage: _row_count(context, key(spec, stage)) for stage in (*counted_only, *loaded)}
        funnel_rows = funnel({s: counts[s] for s in FUNNEL_STAGES if counts.get(s) is not None})

        questions = synthesized.column("question").to_pylist() if synthesized is not None else []
        answers = synthesized.column("answer").to_pylist() if synthesized is not None else []
        records = [f"{q}\n{a}" for q, a in zip(questions, answers, strict=True)]
        texts = {"chunks": chunks.column("text").to_pylist() if chunks is not None else [],
                 "questions": questions, "answers": answers}
        flagged_rate, flagged_hits = flagged_word_rate(records, flagged_words())
        metrics = {
            "question_duplicate_rate": duplicate_rate(questions),
            "record_duplicate_rate": duplicate_rate(records),
            "flagged_word_rate": flagged_rate,
            **{f"distinct_{n}": distinct_n(records, n) for n in (1, 2, 3)},
        }

        judged, usage = _judge(context, llm, storage, synthesized, chunks, section.max_judged, dimensions, schema,
                        template, judge_version)
        ok = [row for row in judged if row["error"] is None]
        verdicts = [v for row in ok for v in json.loads(row["verdicts"])]
        per_dimension = pass_rates(verdicts)
        judge_pass_rate = sum(row["passed"] for row in ok) / len(ok) if ok else 0.0
        scores = Counter(row["score"] for row in ok)

        report = "\n\n".join([
            "### Funnel\n" + markdown_table(funnel_rows),
            "### Lengths (tokens; CJK characters count one each)\n" + markdown_table(
                [{"texts": name, **length_stats(values)} for name, values in texts.items()]),
            "### Synthetic records\n" + markdown_table(
                [{"metric": k, "value": round(v, 4)} for k, v in metrics.items()]),
            "### Kinds\n" + _distribution(
                Counter(synthesized.column("kind").to_pylist()) if synthesized is not None else {}),
            "### Language mix of synthetic records\n" + _distribution(language_mix(records)),
            *(["### Document languages (annotated)\n" + _distribution(label_distribution(
                annotated.column("language").to_pylist()))] if _has(annotated, "language") else []),
            *(["### Topic labels (annotated)\n" + _distribution(label_distribution(
                annotated.column("topic").to_pylist()))] if _has(annotated, "topic") else []),
            "### Flagged words\n" + _distribution(flagged_hits),
            "### Judge pass rate per dimension\n" + markdown_table(
                [{"dimension": d.name, "description": d.description, "pass_rate": per_dimension.get(d.name)}
                 for d in dimensions]),
            "### Judge scores\n" + _distribution({str(s): scores.get(s, 0) for s in range(1, 6)}),
            "### Failed records (judge's reasons)\n" + markdown_table(_failed_examples(ok, synthesized)),
        ])
        plots = {
            "plot_lengths": markdown_image(histograms_png(
                {name: [len(tokens(t)) for t in values] for name, values in texts.items() if values}, "tokens"
            ), "length distributions") if any(texts.values()) else "_(no texts)_",
            "plot_judge": markdown_image(bars_png(
                {d.name: per_dimension.get(d.name, 0.0) for d in dimensions}, "judge pass rate", "share Y",
                (0, 1)), "judge pass rate per dimension"),
        }
        context.log.info(f"judge pass rate {judge_pass_rate:.2f} over {len(ok)} records; "
                         f"question duplicate rate {metrics['question_duplicate_rate']:.2f}")
        yield dg.Output(
            pa.Table.from_pylist(judged, schema=JUDGE_SCHEMA),
            metadata={
                "report": dg.MetadataValue.md(report),
                **{name: dg.MetadataValue.md(value) for name, value in plots.items()},
                **{name: dg.MetadataValue.float(round(value, 4)) for name, value in metrics.items()},
                "judged": len(ok),
                "judge_failures": len(judged) - len(ok),
                "judge_pass_rate": dg.MetadataValue.float(round(judge_pass_rate, 4)),
                "judge_mean_score": dg.MetadataValue.float(
                    round(sum(s * n for s, n in scores.items()) / len(ok), 3) if ok else 0.0),
                **{f"pass_rate/{name}": dg.MetadataValue.float(round(rate, 4)) for name, rate in per_dimension.items()},
                "judge_version": judge_version,
                **usage,
            },
        )
        if any(c.name == "judge_pass_rate" for c in checks):
            threshold = section.checks.min_judge_pass_rate
            yield dg.AssetCheckResult(
                check_name="judge_pass_rate", passed=bool(ok) and judge_pass_rate >= threshold,
                metadata={"judge_pass_rate": judge_pass_rate, "threshold": threshold, "judged": len(ok)},
                description=None if ok else "no record was judged",
            )
        if any(c.name == "duplicate_rate" for c in checks):
            threshold = section.checks.max_duplicate_rate
            rate = metrics["question_duplicate_rate"]
            yield dg.AssetCheckResult(
                check_name="duplicate_rate", passed=rate <= threshold,
                metadata={"question_duplicate_rate": rate, "threshold": threshold, "records": len(questions)},
            )

    return dg.Definitions(assets=[evaluation])


def _has(table: pa.Table | None, column: str) -> bool:
    return table is not None and column in table.column_names


def _distribution(counts: dict) -> str:
    total = sum(counts.values()) or 1
    return markdown_table([{"value": k, "count": n, "share": round(n / total, 3)} for k, n in counts.items()])


def _row_count(context: dg.AssetExecutionContext, asset_key: dg.AssetKey) -> int | None:
    """Rows of the latest materialization, from its metadata: counting needs no data read."""
    event = context.instance.get_latest_materialization_event(asset_key)
    entry = event.asset_materialization.metadata.get("dagster/row_count") if event else None
    return int(entry.value) if entry is not None else None


def _judge(context, llm, storage, synthesized, chunks, max_judged, dimensions, schema, template, version
           ) -> tuple[list[dict], dict]:
    """(one row per judged record, the judge's LLM usage as metadata)."""
    if synthesized is None or synthesized.num_rows == 0 or max_judged == 0:
        return [], {}
    # Evenly spaced records, so every kind and document region is in the sample.
    picks = np.unique(np.linspace(0, synthesized.num_rows - 1, min(max_judged, synthesized.num_rows)).astype(int))
    sample = synthesized.take(picks).to_pylist()
    sources = dict(zip(chunks.column("chunk_id").to_pylist(), chunks.column("text").to_pylist(), strict=True)) \
        if chunks is not None else {}
    client = llm.client(storage, context.log)
    results = client.generate_structured(
        [[("user", render_judge_prompt(template, dimensions, record, sources.get(record["chunk_id"])))]
         for record in sample],
        schema,
    )
    rows = []
    for record, result in zip(sample, results, strict=True):
        verdicts = verdict_rows(result.value, dimensions) if result.ok else []
        rows.append({
            "record_id": record["record_id"], "kind": record["kind"], "doc_id": record["doc_id"],
            "chunk_id": record["chunk_id"], "judge_model": client.model_name, "judge_version": version,
            "score": result.value.score if result.ok else None,
            "passed": all(v["verdict"] == "Y" for v in verdicts) if result.ok else None,
            "verdicts": json.dumps(verdicts, ensure_ascii=False) if result.ok else None,
            "error": None if result.ok else (result.error or "no answer"),
        })
    return rows, client.usage.as_metadata("judge_llm_")


def _failed_examples(judged: list[dict], synthesized: pa.Table | None) -> list[dict]:
    if synthesized is None:
        return []
    questions = dict(zip(synthesized.column("record_id").to_pylist(), synthesized.column("question").to_pylist(),
                         strict=True))
    examples = []
    for row in judged:
        for verdict in json.loads(row["verdicts"]):
            if verdict["verdict"] == "N" and len(examples) < FAILED_EXAMPLES:
                examples.append({"question": questions[row["record_id"]][:120], "dimension": verdict["dimension"],
                                 "reason": verdict["reason"][:160]})
    return examples
