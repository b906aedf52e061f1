"""`datamate demo`: run every stage of the sample dataset with the embedded defaults, then show the results.

Runs in this process on the Dagster instance in $DAGSTER_HOME, so the runs and materializations appear in the
web UI afterwards (`make dev`), and Milvus Lite is opened by one process only.
"""

from __future__ import annotations

import json
import time
import warnings
from typing import TYPE_CHECKING

from datamate_assets.cli.project import ensure_dagster_home, find_project

if TYPE_CHECKING:
    import dagster as dg

    from datamate_resources.tables import TableRef


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="Run the whole pipeline on the bundled sample corpus, offline")
    parser.add_argument("--dataset", default="debian_docs", help="Dataset spec to run (default: debian_docs)")
    parser.add_argument("--question", default="How do I configure the network interface?",
                        help="Question to ask the knowledge base at the end")
    parser.set_defaults(func=run)


def run(args) -> int:
    project = find_project()
    settings = project.activate()
    dagster_home = ensure_dagster_home(project)

    import dagster as dg

    # why: Dagster's notes on its own beta/preview APIs (components) are for us, not for the user of this command.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)

    from datamate_assets.definitions import build_definitions
    from datamate_resources import open_storage, tables

    defs = build_definitions(settings)
    job = defs.resolve_job_def(f"{args.dataset}_pipeline")
    print(f"Running {job.name} with embedded defaults (DAGSTER_HOME={dagster_home}) …", flush=True)
    started = time.monotonic()
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance, raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
        )
        if result.success:
            materialize_reporting(defs, instance)
    elapsed = time.monotonic() - started
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure:
                print(f"FAILED {event.step_key}: {event.step_failure_data.error.message.strip()}")
        return 1

    storage = open_storage(settings)
    print(f"\nAll stages of '{args.dataset}' materialized in {elapsed:.0f}s. Outputs:")
    for key, metadata in _materialized(result):
        # The IO manager recorded row count and URI; no need to read the tables again.
        rows = metadata.get("dagster/row_count")
        where = metadata.get("dagster/uri")
        count = f"{rows.value:>6} rows" if rows is not None else "  (not a table)"
        print(f"  {key.to_user_string():<40} {count}  {where.value if where is not None else ''}")
    show_synthesized(tables.current(storage, args.dataset, "synthesized"))
    show_new_kinds(tables.current(storage, args.dataset, "synthesized"),
                   tables.current(storage, args.dataset, "synthesized_drops"))
    show_llm_tokens(_materialized(result))
    show_evaluation(tables.current(storage, args.dataset, "evaluation"))
    show_search(args.dataset, args.question, settings)
    print("\nOpen the web UI with `make dev` (http://127.0.0.1:3000) to see the asset graph and these runs.")
    return 0


def materialize_reporting(defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    """The dbt models over the stage outputs too, so the daemon (`make dev`) finds no asset missing and starts no
    run on the demo's unchanged data. Not fatal: the pipeline's outputs stand without them."""
    import dagster as dg

    from datamate_assets.reporting import REPORTING_GROUP

    repository = defs.get_repository_def()
    keys = list(dg.AssetSelection.groups(REPORTING_GROUP).resolve(repository.asset_graph))
    if not keys:
        return
    result = repository.get_implicit_job_def_for_assets(keys).execute_in_process(
        instance=instance, asset_selection=keys, raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    if not result.success:
        failed = [e.step_key for e in result.all_events if e.is_step_failure]
        print(f"warning: the dbt models ({REPORTING_GROUP}) did not materialize ({', '.join(failed)}); the daemon "
              f"will retry them when `make dev` starts")


def _materialized(result: dg.ExecuteInProcessResult) -> list[tuple[dg.AssetKey, dict]]:
    events = {e.asset_key: e.materialization.metadata for e in result.get_asset_materialization_events()}
    return sorted(events.items(), key=lambda item: item[0].to_user_string())


def show_synthesized(ref: TableRef | None, rows: int = 3) -> None:
    total = ref.num_rows if ref is not None else 0
    if total == 0:
        return
    print(f"\nSynthesized training data ({total} records), first {rows}:")
    for record in ref.head(rows, columns=["kind", "question", "answer"]).to_pylist():
        print(f"  [{record.get('kind')}] Q: {record.get('question')}\n        A: {record.get('answer')}")


NEW_KINDS = ("evol_instruct", "self_instruct", "multi_turn", "preference")


def show_new_kinds(ref: TableRef | None, drops: TableRef | None) -> None:
    """One record of each richer synthesis kind the dataset makes (issue #18); for a kind whose every record was
    set aside (a small model often fails Evol-Instruct's elimination rules), one of those and why."""
    if ref is None or "conversation" not in ref.schema.names:
        return
    shown = set()
    for batch in ref.batches(columns=["kind", "question", "answer", "conversation", "rejected", "chosen_rating",
                                      "rejected_rating"]):
        for record in batch.to_pylist():
            kind = record["kind"]
            if kind not in NEW_KINDS or kind in shown:
                continue
            shown.add(kind)
            print(f"\n  [{kind}] Q: {record['question']}\n        A: {record['answer']}")
            if record["conversation"]:
                print(f"        ({len(json.loads(record['conversation'])) // 2} turns)")
            if record["rejected"]:
                print(f"        rejected: {record['rejected']} (ratings {record['chosen_rating']} > "
                      f"{record['rejected_rating']})")
        if len(shown) == len(NEW_KINDS):
            break
    if drops is None or len(shown) == len(NEW_KINDS):
        return
    for record in drops.read(columns=["kind", "question", "reason"]).to_pylist():
        if record["kind"] in NEW_KINDS and record["kind"] not in shown:
            shown.add(record["kind"])
            print(f"\n  [{record['kind']}] set aside: {record['reason']}\n        Q: {record['question']}")


def show_llm_tokens(materialized: list[tuple[dg.AssetKey, dict]]) -> None:
    """The run's LLM tokens and estimated cost, from each stage's metadata (cache hits cost nothing)."""
    tokens = cost = calls = hits = 0
    for _, metadata in materialized:
        for prefix in ("llm_", "judge_llm_"):
            if f"{prefix}input_tokens" in metadata:
                tokens += metadata[f"{prefix}input_tokens"].value + metadata[f"{prefix}output_tokens"].value
                cost += metadata[f"{prefix}cost_usd"].value
                calls += metadata[f"{prefix}calls"].value
                hits += metadata[f"{prefix}cache_hits"].value
    print(f"\nLLM this run: {tokens} tokens in {calls} calls ({hits} answers from the cache), "
          f"estimated cost {cost:.4f} USD")


def show_evaluation(ref: TableRef | None) -> None:
    """Judge results per dimension: the share of records judged Y, and the mean 1-5 score."""
    if ref is None or ref.num_rows == 0:
        return
    # The judged records (at most the spec's `max_judged`), the columns shown only.
    table = ref.read(columns=["judge_model", "score", "passed", "verdicts", "error"])
    records = [r for r in table.to_pylist() if not r.get("error")]
    verdicts: dict[str, list[bool]] = {}
    for record in records:
        for verdict in json.loads(record["verdicts"] or "[]"):
            verdicts.setdefault(verdict["dimension"], []).append(verdict["verdict"] == "Y")
    scores = [r["score"] for r in records if r.get("score") is not None]
    print(f"\nEvaluation summary ({len(records)} records judged by {records[0]['judge_model'] if records else '-'}):")
    for dimension, passed in verdicts.items():
        print(f"  {dimension:<20} pass rate {sum(passed) / len(passed):.2f}")
    print(f"  {'all dimensions':<20} pass rate {sum(r['passed'] for r in records) / max(len(records), 1):.2f}"
          f", mean score {sum(scores) / max(len(scores), 1):.1f}/5")


def show_search(dataset: str, question: str, settings) -> None:
    from datamate_resources.milvus import open_knowledge_base

    with open_knowledge_base(dataset, settings) as knowledge_base:
        hits = knowledge_base.search([question], k=3)[0]
    print(f"\nTop hits for {json.dumps(question)} (also: datamate search {json.dumps(question)} --dataset {dataset}):")
    for hit in hits:
        print(f"  {hit['score']:.3f}  {hit['source_uri']}\n         {' '.join(hit['text'].split())[:110]}")
