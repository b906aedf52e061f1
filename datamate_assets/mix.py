"""`<dataset>/mix`: a reproducible training mix drawn from stage tables of any datasets (spec section `mix`).

Each input names a dataset, a stage, optionally a Delta version and filters on its columns, and a weight (a share
of `mix.records`) or a token budget. Rows are chosen by a seeded hash rank while the inputs stream (see
`operators.synthesis.mix`), so materializing again with the same input versions and seed gives byte-identical
exports. The exports (sharded; `datasets.load_dataset("json"|"parquet", data_files=...)` reads them) and a
manifest (input versions, seed, tokenizer, rows and tokens per input, shard checksums) are written under
`<dataset>/exports/mix/`; their URIs are in the metadata.
"""

import hashlib
import json

import dagster as dg
import pyarrow as pa
import pyarrow.dataset as pds

from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec, MixInput
from datamate_assets.synthesis import write_export
from datamate_resources import tables
from datamate_resources.storage import ObjectStore
from operators.evaluation.report import markdown_table
from operators.synthesis.mix import interleave, quotas, select

ROW_KEYS = ("record_id", "chunk_id", "doc_id")  # a row's identity for ranking, when the table has one


def input_name(item: MixInput) -> str:
    return f"{item.dataset}/{item.stage}"


def row_filter(item: MixInput) -> pds.Expression | None:
    conditions = []
    for column, wanted in item.filter.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        conditions.append(pds.field(column).isin(values))
    conditions += [pds.field(column) >= value for column, value in item.min.items()]
    conditions += [pds.field(column) <= value for column, value in item.max.items()]
    expression = None
    for condition in conditions:
        expression = condition if expression is None else expression & condition
    return expression


def build_defs(spec: DatasetSpec) -> dg.Definitions:
    if spec.mix is None:
        return dg.Definitions()
    section = spec.mix
    names = [input_name(item) for item in section.inputs]
    if len(set(names)) != len(names):
        raise ValueError(f"mix.inputs names a dataset/stage twice: {names}")
    weighted = {input_name(i): i.weight for i in section.inputs if i.weight is not None}
    record_quotas = quotas(weighted, section.records) if weighted else {}

    @dg.asset(
        key=key(spec, "mix"),
        group_name=spec.name,
        deps=[dg.AssetKey([item.dataset, item.stage]) for item in section.inputs],
        description=f"Training mix of {', '.join(names)} (seed {section.seed}); exports: "
        f"{', '.join(section.formats)}.",
        kinds={"python", "delta"},
    )
    def mix(context: dg.AssetExecutionContext, storage: ObjectStore) -> dg.Output[pa.Table]:
        selections, versions = {}, {}
        for item in section.inputs:
            name = input_name(item)
            ref = tables.current(storage, item.dataset, item.stage, item.version)
            if ref is None:
                raise FileNotFoundError(f"mix input {name}" + (f" version {item.version}" if item.version is not
                                        None else "") + " does not exist: materialize it first")
            versions[name] = ref.version
            row_key = next((c for c in ROW_KEYS if c in ref.schema.names), None)
            selections[name] = select(
                ref.batches(filter=row_filter(item)), name, section.seed, records=record_quotas.get(name),
                max_tokens=item.max_tokens, key_column=row_key, tokenizer=section.tokenizer)
        rows = [{**row, "mix_input": name} for name, row in interleave(selections)]
        table = pa.Table.from_pylist(rows) if rows else pa.table({"mix_input": pa.array([], pa.string())})
        exports = {fmt: write_export(storage, spec.name, "mix", fmt, table, section.shard_bytes)
                   for fmt in section.formats}
        manifest = {
            "seed": section.seed, "tokenizer": section.tokenizer, "records": table.num_rows,
            "inputs": [{"input": name, "version": versions[name], "rows_available": s.available,
                        "rows": len(s.rows), "tokens": s.tokens, "quota": record_quotas.get(name)}
                       for name, s in selections.items()],
            "exports": {fmt: [{"uri": uri, "sha256": hashlib.sha256(storage.fs.cat_file(uri)).hexdigest()}
                              for uri in uris] for fmt, uris in exports.items()},
        }
        storage.write_bytes(json.dumps(manifest, indent=2, sort_keys=True).encode(), spec.name, "exports", "mix",
                            "manifest.json")
        context.log.info(f"mix of {table.num_rows} rows from {len(selections)} inputs")
        return dg.Output(table, metadata={
            "manifest": dg.MetadataValue.json(manifest),
            "manifest_uri": dg.MetadataValue.path(storage.uri(spec.name, "exports", "mix", "manifest.json")),
            "inputs": dg.MetadataValue.md(markdown_table(manifest["inputs"])),
            "tokens": sum(s.tokens for s in selections.values()),
            **{f"export_{fmt}": dg.MetadataValue.json(uris) for fmt, uris in exports.items()},
        })

    return dg.Definitions(assets=[mix])
