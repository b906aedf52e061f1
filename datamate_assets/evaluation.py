"""`<dataset>/evaluation`: heuristic metrics over the funnel and an LLM judge of the synthetic records.

Inputs are Delta table versions (`TableRef`) read in bounded memory: the metrics run on a reservoir sample of
at most METRIC_SAMPLE records (and CHUNK_SAMPLE chunks), the judge on a sample of `max_judged` records, label
distributions and kind counts stream over the whole tables.

The asset's table holds one row per judged record (verdicts per dimension, 1-5 score, pass); the report
(Markdown tables and PNG plots) is in its metadata. Asset checks compare the spec's thresholds and are
blocking, so assets downstream of the evaluation do not materialize from data that failed them.
"""

import json
import re
from collections import Counter

import dagster as dg
import pyarrow as pa
import pyarrow.dataset as pds

from datamate_assets.budgets import StageBudget
from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec
from datamate_resources import tables
from datamate_resources.llm import LLMResource, record_usage
from datamate_resources.storage import ObjectStore
from datamate_resources.tables import TableRef
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
from operators.evaluation.aggregate import cohen_kappa, mean_interval, share_interval
from operators.evaluation.decontamination import BenchmarkIndex, benchmark_name, benchmark_texts
from operators.evaluation.judge import (
    PairwiseVerdict,
    check_rubric,
    grade_schema,
    pairwise_outcome,
    render_pairwise_prompt,
    render_rubric_prompt,
)
from operators.evaluation.metrics import tokens
from operators.evaluation.report import bars_png, histograms_png, markdown_image, markdown_table
from operators.filters.stats import flagged_words

FUNNEL_STAGES = ("collected", "cleaned", "chunks", "synthesized")
JUDGE_SCHEMA = pa.schema([
    ("record_id", pa.string()), ("kind", pa.string()), ("doc_id", pa.string()), ("chunk_id", pa.string()),
    ("judge_model", pa.string()), ("judge_version", pa.string()), ("score", pa.int8()), ("passed", pa.bool_()),
    ("verdicts", pa.string()), ("rubric_scores", pa.string()), ("pairwise", pa.string()), ("error", pa.string()),
])
CONTAMINATION_SCHEMA = pa.schema([
    ("stage", pa.string()), ("id", pa.string()), ("benchmark", pa.string()), ("ngram", pa.string()),
    ("position", pa.int64()), ("text", pa.string()),
])
FAILED_EXAMPLES = 5
METRIC_SAMPLE = 20_000
CHUNK_SAMPLE = 2_000
SAMPLE_SEED = 0


def judge_dimensions(spec: DatasetSpec) -> list[JudgeDimension]:
    configured = spec.evaluation.judge_dimensions
    if configured:
        return [JudgeDimension(name=d.name, description=d.description,
                               rubric=check_rubric(d.rubric) if d.rubric else None) for d in configured]
    return DEFAULT_DIMENSIONS[_language(spec)]


def _language(spec: DatasetSpec) -> str:
    return spec.synthesis.language if spec.synthesis else "en"


def build_defs(spec: DatasetSpec) -> dg.Definitions:
    if spec.evaluation is None:
        return dg.Definitions()
    section = spec.evaluation
    asset_key = key(spec, "evaluation")
    dimensions = judge_dimensions(spec)
    yes_no = [d for d in dimensions if d.rubric is None]
    if len({d.name for d in dimensions}) != len(dimensions):
        raise ValueError(f"judge dimension names must be unique, got {[d.name for d in dimensions]}")
    schema = judge_schema(yes_no) if yes_no else None  # bad dimensions fail when the code location loads
    template = DEFAULT_JUDGE_TEMPLATES[_language(spec)]
    judge_version = judge_template_version(template, dimensions)
    loaded = [stage for stage, present in (("synthesized", spec.synthesis), ("chunks", spec.index),
                                           ("annotated", spec.annotation)) if present]
    counted_only = [stage for stage, present in (("collected", True), ("cleaned", spec.cleaning)) if present]

    checks = [dg.AssetCheckSpec(aggregate_check_name(bound, name), asset=asset_key, blocking=True,
                                description=f"{name} {'>=' if bound == 'min' else '<='} {value}")
              for bound, limits in (("min", section.checks.min), ("max", section.checks.max))
              for name, value in limits.items()]
    if section.checks.max_contaminated is not None and section.decontamination:
        checks.append(dg.AssetCheckSpec(
            "contamination", asset=asset_key, blocking=True,
            description=f"Records overlapping a benchmark <= {section.checks.max_contaminated}"))
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
        kinds={"python", "delta"},
    )
    def evaluation(context: dg.AssetExecutionContext, llm: LLMResource, storage: ObjectStore, **inputs: TableRef):
        synthesized: TableRef | None = inputs.get("synthesized")
        chunks: TableRef | None = inputs.get("chunks")
        annotated: TableRef | None = inputs.get("annotated")
        counts = {stage: _row_count(context, key(spec, stage)) for stage in (*counted_only, *loaded)}
        funnel_rows = funnel({s: counts[s] for s in FUNNEL_STAGES if counts.get(s) is not None})

        sample = synthesized.sample(METRIC_SAMPLE, SAMPLE_SEED, ["question", "answer"]) if synthesized else None
        questions = sample.column("question").to_pylist() if sample is not None else []
        answers = sample.column("answer").to_pylist() if sample is not None else []
        records = [f"{q}\n{a}" for q, a in zip(questions, answers, strict=True)]
        texts = {"chunks": chunks.sample(CHUNK_SAMPLE, SAMPLE_SEED, ["text"]).column("text").to_pylist()
                 if chunks is not None else [],
                 "questions": questions, "answers": answers}
        flagged_rate, flagged_hits = flagged_word_rate(records, flagged_words())
        metrics = {
            "question_duplicate_rate": duplicate_rate(questions),
            "record_duplicate_rate": duplicate_rate(records),
            "flagged_word_rate": flagged_rate,
            **{f"distinct_{n}": distinct_n(records, n) for n in (1, 2, 3)},
        }

        judged, judged_records, usage = _judge(context, llm, storage, synthesized, chunks, section, dimensions,
                                               schema, template, judge_version, _language(spec), spec.budget)
        ok = [row for row in judged if row["error"] is None]
        verdicts = [v for row in ok for v in json.loads(row["verdicts"])]
        per_dimension = pass_rates(verdicts)
        with_verdicts = [row for row in ok if row["passed"] is not None]
        judge_pass_rate = sum(row["passed"] for row in with_verdicts) / len(with_verdicts) if with_verdicts else 0.0
        scores = Counter(row["score"] for row in ok if row["score"] is not None)
        aggregates = judge_aggregates(ok, dimensions)
        kappas = human_agreement(storage, spec.name, judged, dimensions)
        aggregates.update({f"kappa/{name}": {"value": value, "low": None, "high": None, "n": n}
                           for name, (value, n) in kappas.items()})
        contamination = decontaminate(storage, spec.name, section, synthesized, context.run.run_id) \
            if section.decontamination else None
        if contamination:
            aggregates["contaminated"] = {"value": contamination["contaminated"], "low": None, "high": None,
                                          "n": contamination["checked"]}

        report = "\n\n".join([
            "### Funnel\n" + markdown_table(funnel_rows),
            "### Lengths (tokens; CJK characters count one each)\n" + markdown_table(
                [{"texts": name, **length_stats(values)} for name, values in texts.items()]),
            "### Synthetic records\n" + markdown_table(
                [{"metric": k, "value": round(v, 4)} for k, v in metrics.items()]),
            "### Kinds\n" + _distribution(_counts(synthesized, "kind")),
            "### Language mix of synthetic records\n" + _distribution(language_mix(records)),
            *(["### Document languages (annotated)\n" + _distribution(_counts(annotated, "language"))]
              if _has(annotated, "language") else []),
            *(["### Topic labels (annotated)\n" + _distribution(_counts(annotated, "topic"))]
              if _has(annotated, "topic") else []),
            "### Flagged words\n" + _distribution(flagged_hits),
            "### Judge pass rate per dimension\n" + markdown_table(
                [{"dimension": d.name, "description": d.description, "pass_rate": per_dimension.get(d.name)}
                 for d in dimensions]),
            "### Judge scores\n" + _distribution({str(s): scores.get(s, 0) for s in range(1, 6)}),
            "### Aggregates (95% confidence intervals; kappa: judge vs Label Studio labels)\n" + markdown_table(
                [{"aggregate": name, **values} for name, values in aggregates.items()]),
            *(["### Decontamination (records sharing an n-gram with a benchmark)\n" + markdown_table(
                [{"benchmark": b, **c} for b, c in contamination["benchmarks"].items()])] if contamination else []),
            "### Failed records (judge's reasons)\n" + markdown_table(_failed_examples(ok, judged_records)),
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
                "aggregates": dg.MetadataValue.json(aggregates),
                **{name: dg.MetadataValue.float(float(values["value"])) for name, values in aggregates.items()
                   if values["value"] is not None and "/" in name and not name.startswith("pass_rate/")},
                **({"contamination": dg.MetadataValue.json(contamination)} if contamination else {}),
                **usage,
            },
        )
        for bound, limits in (("min", section.checks.min), ("max", section.checks.max)):
            for name, limit in limits.items():
                value = aggregates.get(name, {}).get("value")
                passed = value is not None and (value >= limit if bound == "min" else value <= limit)
                yield dg.AssetCheckResult(
                    check_name=aggregate_check_name(bound, name), passed=passed,
                    metadata={"value": value if value is not None else "none", "limit": limit},
                    description=None if value is not None else f"{name} was not measured in this run")
        if contamination is not None and section.checks.max_contaminated is not None:
            yield dg.AssetCheckResult(
                check_name="contamination", passed=contamination["contaminated"] <= section.checks.max_contaminated,
                metadata={"contaminated": contamination["contaminated"], "limit": section.checks.max_contaminated})
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


def _has(table: TableRef | None, column: str) -> bool:
    return table is not None and column in table.schema.names


def _counts(table: TableRef | None, column: str) -> Counter:
    """Values of one column over the whole table, streamed."""
    counts = Counter()
    if table is not None:
        for batch in table.batches(columns=[column]):
            counts.update(label_distribution(batch.column(0).to_pylist()))
    return counts


def _distribution(counts: dict) -> str:
    total = sum(counts.values()) or 1
    return markdown_table([{"value": k, "count": n, "share": round(n / total, 3)} for k, n in counts.items()])


def _row_count(context: dg.AssetExecutionContext, asset_key: dg.AssetKey) -> int | None:
    """Rows of the latest materialization, from its metadata: counting needs no data read."""
    event = context.instance.get_latest_materialization_event(asset_key)
    entry = event.asset_materialization.metadata.get("dagster/row_count") if event else None
    return int(entry.value) if entry is not None else None


def _judge(context, llm, storage, synthesized: TableRef | None, chunks: TableRef | None, section, dimensions,
           schema, template, version, language, run_budget=None) -> tuple[list[dict], list[dict], dict]:
    """(one row per judged record, the judged records, the judge's LLM usage as metadata). Y/N dimensions are
    judged in one call per record, each rubric dimension in a call of its own; preference records are compared
    chosen vs rejected in both orders when `pairwise` is on."""
    if synthesized is None or section.max_judged == 0:
        return [], [], {}
    sample = synthesized.sample(section.max_judged, SAMPLE_SEED).to_pylist()
    if not sample:
        return [], [], {}
    sources = chunk_texts(chunks, {record["chunk_id"] for record in sample})
    budget = StageBudget.for_run(storage, spec_name(context), context.run.run_id, section.budget, run_budget)
    client = budget.client(llm, storage, context.log)
    yes_no = [d for d in dimensions if d.rubric is None]
    results = client.generate_structured(
        [[("user", render_judge_prompt(template, yes_no, record, sources.get(record["chunk_id"])))]
         for record in sample], schema) if schema else [None] * len(sample)
    grades = {d.name: client.generate_structured(
        [[("user", render_rubric_prompt(language, d.rubric, record, sources.get(record["chunk_id"]),
                                        criterion=f"{d.name}: {d.description}"))] for record in sample],
        grade_schema(d.rubric)) for d in dimensions if d.rubric}
    comparisons = _pairwise(client, sample, sources, language) if section.pairwise else {}
    rows = []
    for index, (record, result) in enumerate(zip(sample, results, strict=True)):
        verdicts = verdict_rows(result.value, yes_no) if result is not None and result.ok else []
        failed = result is not None and not result.ok
        rubric_scores = {name: graded[index].value.score for name, graded in grades.items() if graded[index].ok}
        rubric_failed = [name for name, graded in grades.items() if not graded[index].ok]
        error = (result.error or "no answer") if failed else (
            f"rubric {', '.join(rubric_failed)}: {grades[rubric_failed[0]][index].error}" if rubric_failed else None)
        rows.append({
            "record_id": record["record_id"], "kind": record["kind"], "doc_id": record["doc_id"],
            "chunk_id": record["chunk_id"], "judge_model": client.model_name, "judge_version": version,
            "score": result.value.score if result is not None and result.ok else None,
            "passed": all(v["verdict"] == "Y" for v in verdicts) if verdicts else None,
            "verdicts": json.dumps(verdicts, ensure_ascii=False),
            "rubric_scores": json.dumps(rubric_scores, ensure_ascii=False),
            "pairwise": comparisons.get(record["record_id"]),
            "error": error,
        })
    record_usage(storage, spec_name(context), "evaluation", context.run.run_id, client.usage)
    return rows, sample, {**client.usage.as_metadata("judge_llm_"), **budget.metadata(client, "judge_llm_")}


def _pairwise(client, sample: list[dict], sources: dict[str, str], language: str) -> dict[str, str]:
    """record_id -> "chosen" / "rejected" / "tie" / "inconsistent" for the preference records in the sample."""
    pairs = [r for r in sample if r.get("rejected")]
    prompts = [[("user", render_pairwise_prompt(language, r["question"], first, second, sources.get(r["chunk_id"])))]
               for r in pairs for first, second in ((r["answer"], r["rejected"]), (r["rejected"], r["answer"]))]
    results = client.generate_structured(prompts, PairwiseVerdict)
    outcomes = {}
    for index, record in enumerate(pairs):
        original, swapped = results[2 * index], results[2 * index + 1]
        if original.ok and swapped.ok:
            outcome = pairwise_outcome(original.value.winner, swapped.value.winner)
            outcomes[record["record_id"]] = {"first": "chosen", "second": "rejected"}.get(outcome, outcome)
    return outcomes


def judge_aggregates(rows: list[dict], dimensions) -> dict[str, dict]:
    """Every judge aggregate with its 95% interval: pass rate per Y/N dimension, mean score per rubric
    dimension, overall score and pass rate, and the pairwise win rate of the chosen answers."""
    aggregates = {}
    verdicts = [v for row in rows for v in json.loads(row["verdicts"])]
    for d in dimensions:
        if d.rubric is None:
            mine = [v["verdict"] == "Y" for v in verdicts if v["dimension"] == d.name]
            aggregates[f"pass_rate/{d.name}"] = share_interval(sum(mine), len(mine))
        else:
            scores = [json.loads(row["rubric_scores"]).get(d.name) for row in rows]
            aggregates[f"score/{d.name}"] = mean_interval([score for score in scores if score is not None])
    passed = [row["passed"] for row in rows if row["passed"] is not None]
    aggregates["judge_pass_rate"] = share_interval(sum(passed), len(passed))
    aggregates["judge_score"] = mean_interval([row["score"] for row in rows if row["score"] is not None])
    outcomes = [row["pairwise"] for row in rows if row["pairwise"]]
    if outcomes:
        aggregates["pairwise/chosen_win_rate"] = share_interval(outcomes.count("chosen"), len(outcomes))
        aggregates["pairwise/position_consistency"] = share_interval(
            len(outcomes) - outcomes.count("inconsistent"), len(outcomes))
    return aggregates


def aggregate_check_name(bound: str, name: str) -> str:
    return f"{bound}_" + re.sub(r"\W+", "_", name).strip("_")


def human_agreement(storage: ObjectStore, dataset: str, judged: list[dict], dimensions) -> dict[str, tuple]:
    """dimension -> (Cohen's kappa, records) of the judge against Label Studio labels, for judged records that
    people labeled (human_labels rows whose doc_id is the record_id and whose field is the dimension)."""
    human_ref = tables.current(storage, dataset, "human_labels")
    ids = [row["record_id"] for row in judged]
    if human_ref is None or not ids or not {"doc_id", "field", "value"} <= set(human_ref.schema.names):
        return {}
    latest: dict[tuple[str, str], str] = {}
    for batch in human_ref.batches(columns=["doc_id", "field", "value"], filter=pds.field("doc_id").isin(ids)):
        for row in batch.to_pylist():
            latest[(row["doc_id"], row["field"])] = str(row["value"]).strip()
    agreement = {}
    for d in dimensions:
        pairs = []
        for row in judged:
            human = latest.get((row["record_id"], d.name))
            if human is None:
                continue
            if d.rubric is None:
                judge = {v["dimension"]: v["verdict"] for v in json.loads(row["verdicts"] or "[]")}.get(d.name)
                human = {"yes": "Y", "y": "Y", "no": "N", "n": "N"}.get(human.casefold(), human)
            else:
                judge = json.loads(row["rubric_scores"] or "{}").get(d.name)
                judge = None if judge is None else str(judge)
            if judge is not None:
                pairs.append((judge, human))
        if pairs:
            agreement[d.name] = (cohen_kappa([j for j, _ in pairs], [h for _, h in pairs]), len(pairs))
    return agreement


def decontaminate(storage: ObjectStore, dataset: str, section, synthesized: TableRef | None,
                  run_id: str) -> dict:
    """Check synthesized records (and the cleaned corpus when asked) against the benchmarks; contaminated rows
    go to `<dataset>/contamination_drops` with benchmark, n-gram and position. Returns the counts."""
    options = section.decontamination
    index = BenchmarkIndex(options.ngram)
    for path in options.benchmarks:
        filesystem = storage.arrow_filesystem() if path.startswith("s3://") else None
        index.add(benchmark_name(path), benchmark_texts(path, options.fields, filesystem))
    inputs = [("synthesized", synthesized, "record_id", ["question", "reasoning", "answer", "rejected"])]
    if options.check_cleaned:
        inputs.append(("cleaned", tables.current(storage, dataset, "cleaned"), "doc_id", ["text"]))
    # Contaminated rows are few and are written after the scan: deltalake cannot write from a generator that
    # itself reads a Delta table (one async runtime inside another).
    checked, hits, found = 0, Counter(), []
    for stage, ref, id_column, text_columns in inputs:
        if ref is None:
            continue
        columns = [id_column, *(c for c in text_columns if c in ref.schema.names)]
        for batch in ref.batches(columns=columns):
            for row in batch.to_pylist():
                checked += 1
                text = "\n".join(str(row[c]) for c in columns[1:] if row[c])
                hit = index.check(text)
                if hit:
                    hits[hit.benchmark] += 1
                    found.append({"stage": stage, "id": row[id_column], "benchmark": hit.benchmark,
                                  "ngram": hit.ngram, "position": hit.position, "text": text[:500]})
    ref = tables.write(storage, dataset, "contamination_drops", pa.Table.from_pylist(found, CONTAMINATION_SCHEMA),
                       run_id=run_id)
    return {
        "checked": checked, "contaminated": sum(hits.values()), "ngram": options.ngram, "drops_uri": ref.uri,
        "benchmarks": {name: {"ngrams_indexed": n, "contaminated": hits.get(name, 0)}
                       for name, n in index.ngrams_per_benchmark.items()},
    }


def spec_name(context: dg.AssetExecutionContext) -> str:
    return context.asset_key.path[0]


def chunk_texts(chunks: TableRef | None, chunk_ids: set[str]) -> dict[str, str]:
    """Texts of the given chunks, streamed with a filter (the chunks table may be large)."""
    if chunks is None or not chunk_ids:
        return {}
    texts = {}
    wanted = pds.field("chunk_id").isin(sorted(chunk_ids))
    for batch in chunks.batches(columns=["chunk_id", "text"], filter=wanted):
        texts.update(zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True))
    return texts


def _failed_examples(judged: list[dict], records: list[dict]) -> list[dict]:
    questions = {record["record_id"]: record["question"] for record in records}
    examples = []
    for row in judged:
        for verdict in json.loads(row["verdicts"]):
            if verdict["verdict"] == "N" and len(examples) < FAILED_EXAMPLES:
                examples.append({"question": questions[row["record_id"]][:120], "dimension": verdict["dimension"],
                                 "reason": verdict["reason"][:160]})
    return examples
