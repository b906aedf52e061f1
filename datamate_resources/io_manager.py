"""The IO manager: stage outputs are Delta tables at `<storage root>/<dataset>/<stage>/`, inputs are `TableRef`s.

An asset returns a `pa.Table`, a `pa.RecordBatchReader` (streamed into the table as it is produced) or the
`TableRef` of a version it committed itself through `datamate_resources.tables` (a step writing several tables
while it streams). Downstream steps get a `TableRef` to exactly the version the upstream materialization
recorded, and read it lazily. Every output gets the metadata the Dagster UI shows: table URI, Delta version,
rows, bytes, files, schema and a preview read from the head of the table.
"""

import dagster as dg
import pyarrow as pa

from datamate_resources import tables
from datamate_resources.storage import ObjectStore
from datamate_resources.tables import TableRef

PREVIEW_ROWS = 5
PREVIEW_CELL_CHARS = 80
# Columns a person reads first in a preview; ids (long hashes) are shortened.
PREVIEW_FIRST = ("text", "title", "source_uri", "question", "answer", "reason", "operator")
ID_COLUMNS = ("doc_id", "chunk_id", "record_id")
VERSION_KEY = "delta_version"


def markdown_preview(table: pa.Table, rows: int = PREVIEW_ROWS) -> str:
    """The first rows as a Markdown table: readable columns first, long cells and ids cut."""
    if table.num_columns == 0:
        return "_(no columns)_"
    order = [c for c in PREVIEW_FIRST if c in table.column_names]
    table = table.select(order + [c for c in table.column_names if c not in order])

    def cell(name: str, value: object) -> str:
        text = "" if value is None else str(value)
        text = " ".join(text.split()).replace("|", "\\|")
        if name in ID_COLUMNS and len(text) > 12:
            return text[:12] + "…"
        return text if len(text) <= PREVIEW_CELL_CHARS else text[: PREVIEW_CELL_CHARS - 1] + "…"

    header = "| " + " | ".join(table.column_names) + " |"
    rule = "|" + "---|" * table.num_columns
    body = ["| " + " | ".join(cell(k, v) for k, v in row.items()) + " |" for row in table.slice(0, rows).to_pylist()]
    return "\n".join([header, rule, *body])


def table_metadata(ref: TableRef) -> dict[str, dg.MetadataValue]:
    """What the UI shows of a table version; computed from the Delta log and the head, never the whole table."""
    head = ref.head(PREVIEW_ROWS)
    return {
        "dagster/uri": dg.MetadataValue.path(ref.uri),
        VERSION_KEY: dg.MetadataValue.int(ref.version),
        "dagster/row_count": dg.MetadataValue.int(ref.num_rows),
        "bytes": dg.MetadataValue.int(ref.num_bytes),
        "files": dg.MetadataValue.int(ref.num_files),
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name=f.name, type=str(f.type)) for f in ref.schema]
        ),
        "preview": dg.MetadataValue.md(markdown_preview(head)),
    }


def dataset_and_stage(asset_key: dg.AssetKey) -> tuple[str, str]:
    *folders, name = asset_key.path
    return "/".join(folders), name


class DeltaIOManager(dg.ConfigurableIOManager):
    storage: dg.ResourceDependency[ObjectStore]

    def handle_output(self, context: dg.OutputContext, obj: pa.Table | pa.RecordBatchReader | TableRef | None) -> None:
        if obj is None:
            return
        dataset, stage = dataset_and_stage(context.asset_key)
        if isinstance(obj, TableRef):
            ref = obj
        elif isinstance(obj, pa.Table | pa.RecordBatchReader):
            ref = tables.write(self.storage, dataset, stage, obj, run_id=context.run_id)
        else:
            raise TypeError(
                f"Asset {context.asset_key.to_user_string()} returned {type(obj).__name__}; DataMate assets return a "
                "pyarrow.Table, a pyarrow.RecordBatchReader, a TableRef, or a MaterializeResult for non-table outputs."
            )
        context.add_output_metadata(table_metadata(ref))

    def load_input(self, context: dg.InputContext) -> TableRef:
        key = context.upstream_output.asset_key if context.upstream_output else context.asset_key
        dataset, stage = dataset_and_stage(key)
        ref = tables.current(self.storage, dataset, stage, recorded_version(context.instance, key))
        if ref is None:
            raise FileNotFoundError(
                f"{tables.table_uri(self.storage, dataset, stage)} does not exist: materialize "
                f"{key.to_user_string()} first."
            )
        return ref


def recorded_version(instance: dg.DagsterInstance | None, key: dg.AssetKey) -> int | None:
    """The Delta version the latest materialization of `key` recorded (None: read the latest version)."""
    if instance is None:
        return None
    event = instance.get_latest_materialization_event(key)
    materialization = event.asset_materialization if event else None
    value = materialization.metadata.get(VERSION_KEY) if materialization else None
    return int(value.value) if value is not None else None
