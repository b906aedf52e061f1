"""Stores each asset's `pyarrow.Table` as Parquet at `<storage root>/<dataset>/<stage>.parquet`.

Partitioned assets go to `<dataset>/<stage>/<partition>.parquet`. The same code serves a local directory and
an S3 endpoint because all I/O goes through `ObjectStore`. Every output gets the metadata the Dagster UI
shows: row count, bytes, schema, path and a Markdown preview of the first rows.
"""

import dagster as dg
import pyarrow as pa

from datamate_resources.storage import ObjectStore

PREVIEW_ROWS = 5
PREVIEW_CELL_CHARS = 80


def asset_parts(asset_key: dg.AssetKey, partition_key: str | None = None) -> list[str]:
    *folders, name = asset_key.path
    if partition_key is not None:
        return [*folders, name, f"{partition_key}.parquet"]
    return [*folders, f"{name}.parquet"]


def markdown_preview(table: pa.Table, rows: int = PREVIEW_ROWS) -> str:
    """The first rows as a Markdown table, long cells cut so the UI stays readable."""
    if table.num_columns == 0:
        return "_(no columns)_"

    def cell(value: object) -> str:
        text = "" if value is None else str(value)
        text = " ".join(text.split()).replace("|", "\\|")
        return text if len(text) <= PREVIEW_CELL_CHARS else text[: PREVIEW_CELL_CHARS - 1] + "…"

    header = "| " + " | ".join(table.column_names) + " |"
    rule = "|" + "---|" * table.num_columns
    body = ["| " + " | ".join(cell(v) for v in row.values()) + " |" for row in table.slice(0, rows).to_pylist()]
    return "\n".join([header, rule, *body])


def table_metadata(table: pa.Table) -> dict[str, dg.MetadataValue]:
    return {
        "dagster/row_count": dg.MetadataValue.int(table.num_rows),
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name=f.name, type=str(f.type)) for f in table.schema]
        ),
        "preview": dg.MetadataValue.md(markdown_preview(table)),
    }


class ParquetIOManager(dg.ConfigurableIOManager):
    storage: dg.ResourceDependency[ObjectStore]

    def handle_output(self, context: dg.OutputContext, obj: pa.Table | None) -> None:
        if obj is None:
            return
        if not isinstance(obj, pa.Table):
            raise TypeError(
                f"Asset {context.asset_key.to_user_string()} returned {type(obj).__name__}; "
                "DataMate assets return pyarrow.Table (or a MaterializeResult for non-table outputs)."
            )
        parts = asset_parts(context.asset_key, context.partition_key if context.has_partition_key else None)
        size = self.storage.write_table(obj, *parts)
        context.add_output_metadata(
            {
                **table_metadata(obj),
                "bytes": dg.MetadataValue.int(size),
                "uri": dg.MetadataValue.path(self.storage.uri(*parts)),
            }
        )

    def load_input(self, context: dg.InputContext) -> pa.Table:
        key = context.upstream_output.asset_key if context.upstream_output else context.asset_key
        if context.has_asset_partitions and len(context.asset_partition_keys) > 1:
            tables = [self._read(key, partition) for partition in context.asset_partition_keys]
            return pa.concat_tables(tables, promote_options="default")
        partition = context.asset_partition_key if context.has_asset_partitions else None
        return self._read(key, partition)

    def _read(self, key: dg.AssetKey, partition: str | None) -> pa.Table:
        parts = asset_parts(key, partition)
        table = self.storage.read_table(*parts)
        if table is None:
            raise FileNotFoundError(
                f"{self.storage.uri(*parts)} does not exist: materialize {key.to_user_string()} first."
            )
        return table
