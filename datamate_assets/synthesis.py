"""`<dataset>/synthesized`: synthetic training records generated from a sample of the chunks.

Kinds (`synthesis.kinds`): qa, cot_qa, instruction, evol_instruct, self_instruct, multi_turn, preference (the
methods are in `operators.synthesis.methods`). At most `max_records` chunks are sampled from the chunks table
(reservoir sampling, fixed seed: the same table version gives the same sample and so the same prompts). Every
answer goes through the LLM resource's cache in object storage, so materializing again (or resuming a killed or
budget-stopped run) calls the model only for what is not cached. The records then pass the spec's filters and
deduplicators, and are exported as sharded files (Alpaca, OpenAI chat, ShareGPT, DPO, text, Parquet) whose
URIs are in the metadata. What was set aside goes to `<dataset>/synthesized_drops` with operator and reason;
the LLM usage of each materialization is appended to `<dataset>/llm_usage`.
"""

import json
from collections import Counter
from pathlib import Path

import dagster as dg
import pyarrow as pa

from datamate_assets.budgets import StageBudget
from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec, SynthesisSection
from datamate_resources import tables
from datamate_resources.llm import LLMResource, record_usage
from datamate_resources.storage import ObjectStore
from datamate_resources.tables import TableRef
from operators.base import Mapper
from operators.evaluation.judge import check_rubric
from operators.evaluation.metrics import detect_language
from operators.evaluation.report import markdown_table
from operators.recipe import Recipe, RecipeError, run_local
from operators.synthesis import (
    SHARD_BYTES,
    SYNTHESIZED_COLUMNS,
    SYNTHESIZED_SCHEMA,
    MethodSettings,
    SynthesisTemplate,
    Synthesizer,
    jsonl_shards,
    parquet_shards,
    plan_requests,
    resolve_template,
    shard_name,
    templates_for_kinds,
)

DROP_SCHEMA = pa.schema([*SYNTHESIZED_SCHEMA, ("operator", pa.string()), ("reason", pa.string())])
# Text the spec's operators see: the whole record, so a filter judges question and answer together.
RECORD_TEXT = "text"
MIN_CHUNK_CHARS = 200  # shorter chunks (a heading, a stray line) give the model nothing to ask about
CHUNK_COLUMNS = ["chunk_id", "doc_id", "text", "position"]
SAMPLE_SEED = 0


def templates_for(section: SynthesisSection, base_dir: Path | None = None) -> dict[str, SynthesisTemplate]:
    names = templates_for_kinds(section.kinds)
    unknown = set(section.templates) - set(names)
    if unknown:
        raise ValueError(f"synthesis.templates has templates {sorted(unknown)}, which are used by none of "
                         f"synthesis.kinds {section.kinds} (they use {names})")
    return {name: resolve_template(name, section.language, section.templates.get(name), base_dir) for name in names}


def method_settings(section: SynthesisSection, base_dir: Path | None = None) -> MethodSettings:
    seeds: list[str] = []
    if "self_instruct" in section.kinds:
        if section.self_instruct is None:
            raise ValueError("synthesis.kinds has self_instruct: set synthesis.self_instruct.seed_file")
        seeds = read_seed_tasks(Path(section.self_instruct.seed_file) if base_dir is None
                                else base_dir / section.self_instruct.seed_file)
    options = section.self_instruct
    return MethodSettings(
        per_chunk=section.per_chunk, evol_rounds=section.evol_instruct.rounds, self_instruct_seeds=seeds,
        self_instruct_examples=options.examples if options else 3,
        self_instruct_max_rouge_l=options.max_rouge_l if options else 0.7,
        turns=section.multi_turn.turns, preference_candidates=section.preference.candidates,
        preference_rubric=check_rubric(section.preference.rubric) if section.preference.rubric else None,
    )


def read_seed_tasks(path: Path) -> list[str]:
    """Seed tasks: a JSONL file with an `instruction` per line (Self-Instruct's seed_tasks.jsonl shape)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ValueError(f"synthesis.self_instruct.seed_file {path} cannot be read: {error}") from None
    seeds = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            seeds.append(str(json.loads(line)["instruction"]).strip())
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path}, line {number}: not a JSON object with an `instruction`") from None
    if not seeds:
        raise ValueError(f"synthesis.self_instruct.seed_file {path} has no seed task")
    return seeds


def recipe_for(section: SynthesisSection) -> Recipe | None:
    if not section.process:
        return None
    recipe = Recipe.from_process(section.process, text_key=RECORD_TEXT)
    mappers = [name for name, op in zip(recipe.names, recipe.operators, strict=True) if isinstance(op, Mapper)]
    if mappers:
        # A mapper would rewrite the joined text, which cannot be split back into question and answer.
        raise RecipeError(f"synthesis.process takes filters and deduplicators only; {mappers} are mappers")
    return recipe


def write_export(storage: ObjectStore, dataset: str, name: str, fmt: str, table: pa.Table,
                 shard_bytes: int = SHARD_BYTES) -> list[str]:
    """Write `table` as `<dataset>/exports/<name>/<fmt>/part-NNNNN.*` shards (replacing older ones); their URIs."""
    folder = (dataset, "exports", name, fmt)
    storage.delete(*folder)
    shards = (parquet_shards(table.to_batches(), shard_bytes) if fmt == "parquet"
              else jsonl_shards(fmt, table.to_pylist(), shard_bytes))
    uris = []
    for index, data in enumerate(shards):
        storage.write_bytes(data, *folder, shard_name(index, fmt))
        uris.append(storage.uri(*folder, shard_name(index, fmt)))
    return uris


def build_defs(spec: DatasetSpec) -> dg.Definitions:
    if spec.synthesis is None:
        return dg.Definitions()
    section = spec.synthesis
    base_dir = spec.spec_path.parent if spec.spec_path else None
    # A bad template, seed file or operator fails when the code location loads.
    templates = templates_for(section, base_dir)
    settings = method_settings(section, base_dir)
    recipe = recipe_for(section)
    asset_key = key(spec, "synthesized")

    @dg.asset(
        key=asset_key,
        group_name=spec.name,
        ins={"chunks": dg.AssetIn(key(spec, "chunks"))},
        description=f"Synthetic {', '.join(section.kinds)} records ({section.language}) generated from a sample "
        f"of the chunks: {section.per_chunk} per request, at most {section.max_records}.",
        kinds={"python", "delta"},
    )
    def synthesized(
        context: dg.AssetExecutionContext, chunks: TableRef, llm: LLMResource, storage: ObjectStore
    ) -> dg.Output[pa.Table]:
        sample = chunks.sample(section.max_records, seed=SAMPLE_SEED, columns=CHUNK_COLUMNS)
        requests, skipped = plan_requests(
            sample.to_pylist(), section.kinds, section.per_chunk, section.max_records,
            skip_reason=lambda chunk: chunk_skip_reason(chunk["text"], section.language),
        )
        context.log.info(f"{len(requests)} requests from a sample of {sample.num_rows} chunks "
                         f"(skipped: {dict(skipped) or 'none'})")
        budget = StageBudget.for_run(storage, spec.name, context.run.run_id, section.budget, spec.budget)
        client = budget.client(llm, storage, context.log)
        synthesizer = Synthesizer(generate=client.generate_structured, templates=templates,
                                  model=client.model_name, language=section.language,
                                  chunks_version=chunks.version, settings=settings)
        for kind in section.kinds:
            synthesizer.run(kind, [r for r in requests if r.kind == kind])
        generated = pa.Table.from_pylist(synthesizer.rows, schema=SYNTHESIZED_SCHEMA)
        kept, operator_drops, step_rows = _run_recipe(recipe, generated)
        over_cap = kept.slice(section.max_records)
        kept = kept.slice(0, section.max_records)
        drops = pa.concat_tables([
            pa.Table.from_pylist(synthesizer.drops, schema=DROP_SCHEMA),
            operator_drops,
            _with_reason(over_cap, "cap", f"over synthesis.max_records={section.max_records}"),
        ])
        drops_ref = tables.write(storage, spec.name, "synthesized_drops", drops, run_id=context.run.run_id)
        exports = {f"export_{fmt}": dg.MetadataValue.json(write_export(storage, spec.name, "synthesized", fmt, kept))
                   for fmt in section.export_formats}
        record_usage(storage, spec.name, "synthesized", context.run.run_id, client.usage)
        context.log.info(f"{kept.num_rows} records kept, {drops.num_rows} set aside; {client.usage}")
        by_kind = Counter(kept.column("kind").to_pylist())
        failures = sum(1 for row in synthesizer.drops if row["operator"] == "llm")
        eliminated = len(synthesizer.drops) - failures
        return dg.Output(kept, metadata={
            "requests": len(requests),
            "chunks_sampled": sample.num_rows,
            "chunks_version": chunks.version,
            "records_generated": generated.num_rows,
            "records_kept": kept.num_rows,
            "records_set_aside": drops.num_rows,
            "request_failures": failures,
            "records_eliminated": eliminated,
            "chunks_skipped": dg.MetadataValue.json(dict(skipped)),
            "by_kind": dg.MetadataValue.md(markdown_table(
                [{"kind": k, "records": by_kind.get(k, 0)} for k in section.kinds])),
            "templates": dg.MetadataValue.json({name: t.version for name, t in templates.items()}),
            "operators": dg.MetadataValue.md(markdown_table(step_rows)),
            "set_aside": dg.MetadataValue.md(markdown_table(
                [{"operator": op, "reason": reason[:80], "records": n} for (op, reason), n in Counter(
                    zip(drops.column("operator").to_pylist(), drops.column("reason").to_pylist(), strict=True)
                ).most_common(10)]
            )),
            "set_aside_uri": dg.MetadataValue.path(drops_ref.uri),
            "set_aside_version": drops_ref.version,
            **exports,
            **client.usage.as_metadata(),
            **budget.metadata(client, "llm_"),
        })

    return dg.Definitions(assets=[synthesized])


def chunk_skip_reason(text: str, language: str) -> str | None:
    if len(text.strip()) < MIN_CHUNK_CHARS:
        return f"shorter than {MIN_CHUNK_CHARS} characters"
    detected = detect_language(text)
    # Prompts are in one language; a chunk in another would give records mixing the two.
    return None if detected == language else f"language {detected}, not {language}"


def _with_reason(table: pa.Table, operator: str, reason: str) -> pa.Table:
    table = table.select(SYNTHESIZED_COLUMNS)
    return table.append_column("operator", pa.array([operator] * table.num_rows, pa.string())).append_column(
        "reason", pa.array([reason] * table.num_rows, pa.string())
    )


def _run_recipe(recipe: Recipe | None, generated: pa.Table) -> tuple[pa.Table, pa.Table, list[dict]]:
    """(kept records, dropped records with operator and reason, per-step counts)."""
    if recipe is None or generated.num_rows == 0:
        return generated, DROP_SCHEMA.empty_table(), []
    texts = [
        "\n\n".join(part for part in (row["question"], row["reasoning"], row["answer"]) if part)
        for row in generated.select(["question", "reasoning", "answer"]).to_pylist()
    ]
    result = run_local(recipe, generated.append_column(RECORD_TEXT, pa.array(texts, pa.string())))
    steps = [{"step": s.step, "operator": s.operator, "in": s.docs_in, "dropped": s.dropped, "errors": s.errors}
             for s in result.stats]
    drops = result.drops.select([*SYNTHESIZED_COLUMNS, "operator", "reason"]).cast(DROP_SCHEMA)
    return result.kept.select(SYNTHESIZED_COLUMNS).cast(SYNTHESIZED_SCHEMA), drops, steps

