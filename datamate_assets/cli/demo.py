"""`datamate demo`: run every stage of the sample dataset with the embedded defaults, then show the results.

Runs in this process on the Dagster instance in $DAGSTER_HOME, so the runs and materializations appear in the
web UI afterwards (`make dev`), and Milvus Lite is opened by one process only.
"""

import json
import os
import time
from pathlib import Path

import dagster as dg
import pyarrow as pa

REPO = Path(__file__).resolve().parents[2]


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="Run the whole pipeline on the bundled sample corpus, offline")
    parser.add_argument("--dataset", default="debian_docs", help="Dataset spec to run (default: debian_docs)")
    parser.add_argument("--question", default="How do I configure the network interface?",
                        help="Question to ask the knowledge base at the end")
    parser.set_defaults(func=run)


def ensure_dagster_home(datamate_home: Path) -> Path:
    """Use $DAGSTER_HOME, or a local one whose dagster.yaml is the repository's embedded default."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    home = datamate_home / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.symlink_to(REPO / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def run(args) -> int:
    from datamate_assets.definitions import build_definitions
    from datamate_resources import open_storage
    from datamate_resources.settings import Settings

    settings = Settings.from_env()
    dagster_home = ensure_dagster_home(settings.home)
    defs = build_definitions(settings)
    job = defs.resolve_job_def(f"{args.dataset}_pipeline")
    print(f"Running {job.name} with embedded defaults (DAGSTER_HOME={dagster_home}) …", flush=True)
    started = time.monotonic()
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance, raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
        )
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
        where = metadata.get("uri")
        count = f"{rows.value:>6} rows" if rows is not None else "  (not a table)"
        print(f"  {key.to_user_string():<40} {count}  {where.value if where is not None else ''}")
    show_synthesized(storage.read_table(args.dataset, "synthesized.parquet"))
    show_evaluation(storage.read_table(args.dataset, "evaluation.parquet"))
    show_search(args.dataset, args.question, settings)
    print("\nOpen the web UI with `make dev` (http://127.0.0.1:3000) to see the asset graph and these runs.")
    return 0


def _materialized(result: dg.ExecuteInProcessResult) -> list[tuple[dg.AssetKey, dict]]:
    events = {e.asset_key: e.materialization.metadata for e in result.get_asset_materialization_events()}
    return sorted(events.items(), key=lambda item: item[0].to_user_string())


def show_synthesized(table: pa.Table | None, rows: int = 3) -> None:
    if table is None or table.num_rows == 0:
        return
    print(f"\nSynthesized training data ({table.num_rows} records), first {rows}:")
    for record in table.slice(0, rows).to_pylist():
        print(f"  [{record.get('kind')}] Q: {record.get('question')}\n        A: {record.get('answer')}")


def show_evaluation(table: pa.Table | None) -> None:
    """Judge results per dimension: the share of records judged Y, and the mean 1-5 score."""
    if table is None or table.num_rows == 0:
        return
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
