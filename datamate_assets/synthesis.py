"""`<dataset>/synthesized`: QA, chain-of-thought QA and instruction–response records generated from chunks.

One LLM request per (chunk, kind) asks for `per_chunk` records; requests stop at the total cap. Every
answer goes through the LLM resource's cache in object storage, so materializing again (or resuming a
killed run) calls the model only for what is not cached. The records then pass the spec's filters and
deduplicators (operators library), and are exported as Alpaca and OpenAI-chat JSONL next to the Parquet.
"""

from collections import Counter

import dagster as dg
import pyarrow as pa

from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec, SynthesisSection
from datamate_resources.llm import LLMResource
from datamate_resources.storage import ObjectStore
from operators.base import Mapper
from operators.evaluation.metrics import detect_language
from operators.evaluation.report import markdown_table
from operators.recipe import Recipe, RecipeError, run_local
from operators.synthesis import (
    SYNTHESIZED_COLUMNS,
    SynthesisTemplate,
    alpaca_jsonl,
    chat_jsonl,
    output_schema,
    plan_requests,
    resolve_template,
    to_records,
)

SYNTHESIZED_SCHEMA = pa.schema([(name, pa.string()) for name in SYNTHESIZED_COLUMNS])
DROP_SCHEMA = pa.schema([*SYNTHESIZED_SCHEMA, ("operator", pa.string()), ("reason", pa.string())])
# Text the spec's operators see: the whole record, so a filter judges question and answer together.
RECORD_TEXT = "text"
MIN_CHUNK_CHARS = 200  # shorter chunks (a heading, a stray line) give the model nothing to ask about


def templates_for(section: SynthesisSection) -> dict[str, SynthesisTemplate]:
    unknown = set(section.templates) - set(section.kinds)
    if unknown:
        raise ValueError(f"synthesis.templates has templates for {sorted(unknown)}, which are not in "
                         f"synthesis.kinds {section.kinds}")
    return {kind: resolve_template(kind, section.language, section.templates.get(kind)) for kind in section.kinds}


def recipe_for(section: SynthesisSection) -> Recipe | None:
    if not section.process:
        return None
    recipe = Recipe.from_process(section.process, text_key=RECORD_TEXT)
    mappers = [name for name, op in zip(recipe.names, recipe.operators, strict=True) if isinstance(op, Mapper)]
    if mappers:
        # A mapper would rewrite the joined text, which cannot be split back into question and answer.
        raise RecipeError(f"synthesis.process takes filters and deduplicators only; {mappers} are mappers")
    return recipe


def export_parts(spec: DatasetSpec, fmt: str) -> tuple[str, str]:
    return spec.name, f"synthesized.{fmt}.jsonl"


def build_defs(spec: DatasetSpec) -> dg.Definitions:
    if spec.synthesis is None:
        return dg.Definitions()
    section = spec.synthesis
    templates = templates_for(section)  # a bad template or operator fails when the code location loads
    recipe = recipe_for(section)
    asset_key = key(spec, "synthesized")

    @dg.asset(
        key=asset_key,
        group_name=spec.name,
        ins={"chunks": dg.AssetIn(key(spec, "chunks"))},
        description=f"Synthetic {', '.join(section.kinds)} records ({section.language}) generated from chunks: "
        f"{section.per_chunk} per request, at most {section.max_records}.",
        kinds={"python", "parquet"},
    )
    def synthesized(
        context: dg.AssetExecutionContext, chunks: pa.Table, llm: LLMResource, storage: ObjectStore
    ) -> dg.Output[pa.Table]:
        requests, skipped = plan_requests(
            chunks.select(["chunk_id", "doc_id", "text", "position"]).to_pylist(),
            section.kinds, section.per_chunk, section.max_records,
            skip_reason=lambda chunk: chunk_skip_reason(chunk["text"], section.language),
        )
        context.log.info(f"{len(requests)} requests from {chunks.num_rows} chunks "
                         f"(skipped: {dict(skipped) or 'none'})")
        client = llm.client(storage, context.log)
        rows, failures = [], []
        for kind, template in templates.items():
            batch = [r for r in requests if r.kind == kind]
            results = client.generate_structured(
                [[("user", template.render(text=r.text, count=section.per_chunk))] for r in batch],
                output_schema(kind, section.per_chunk),
            )
            for request, result in zip(batch, results, strict=True):
                if not result.ok:
                    failures.append(_failure(request, template, client.model_name, result.error))
                    continue
                rows += to_records(kind, result.value, doc_id=request.doc_id, chunk_id=request.chunk_id,
                                   model=client.model_name, template_version=template.version)
        generated = pa.Table.from_pylist(rows, schema=SYNTHESIZED_SCHEMA)
        kept, operator_drops, step_rows = _run_recipe(recipe, generated)
        over_cap = kept.slice(section.max_records)
        kept = kept.slice(0, section.max_records)
        drops = pa.concat_tables([
            pa.Table.from_pylist(failures, schema=DROP_SCHEMA),
            operator_drops,
            _with_reason(over_cap, "cap", f"over synthesis.max_records={section.max_records}"),
        ])
        storage.write_table(drops, spec.name, "synthesized_drops.parquet")
        exports = {}
        for fmt, data in (("alpaca", alpaca_jsonl(kept.to_pylist())), ("openai_chat", chat_jsonl(kept.to_pylist()))):
            storage.write_bytes(data, *export_parts(spec, fmt))
            exports[f"export_{fmt}"] = dg.MetadataValue.path(storage.uri(*export_parts(spec, fmt)))
        context.log.info(f"{kept.num_rows} records kept, {drops.num_rows} set aside; {client.usage}")
        by_kind = Counter(kept.column("kind").to_pylist())
        return dg.Output(kept, metadata={
            "requests": len(requests),
            "records_generated": generated.num_rows,
            "records_kept": kept.num_rows,
            "records_set_aside": drops.num_rows,
            "request_failures": len(failures),
            "chunks_skipped": dg.MetadataValue.json(dict(skipped)),
            "by_kind": dg.MetadataValue.md(markdown_table(
                [{"kind": k, "records": by_kind.get(k, 0), "template_version": t.version} for k, t in templates.items()]
            )),
            "operators": dg.MetadataValue.md(markdown_table(step_rows)),
            "set_aside": dg.MetadataValue.md(markdown_table(
                [{"operator": op, "reason": reason, "records": n} for (op, reason), n in Counter(
                    zip(drops.column("operator").to_pylist(), drops.column("reason").to_pylist(), strict=True)
                ).most_common(10)]
            )),
            "set_aside_uri": dg.MetadataValue.path(storage.uri(spec.name, "synthesized_drops.parquet")),
            **exports,
            **client.usage.as_metadata(),
        })

    return dg.Definitions(assets=[synthesized])


def chunk_skip_reason(text: str, language: str) -> str | None:
    if len(text.strip()) < MIN_CHUNK_CHARS:
        return f"shorter than {MIN_CHUNK_CHARS} characters"
    detected = detect_language(text)
    # Prompts are in one language; a chunk in another would give records mixing the two.
    return None if detected == language else f"language {detected}, not {language}"


def _failure(request, template: SynthesisTemplate, model: str, error: str | None) -> dict:
    return {
        "record_id": None, "kind": request.kind, "question": None, "answer": None, "reasoning": None,
        "doc_id": request.doc_id, "chunk_id": request.chunk_id, "model": model,
        "template_version": template.version, "operator": "llm", "reason": error or "no answer",
    }


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
