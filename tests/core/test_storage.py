import dagster as dg
import pyarrow as pa
import pytest

from datamate_resources import build_resources, tables
from datamate_resources.settings import Settings
from datamate_resources.storage import ObjectStore, StorageUnavailableError
from datamate_resources.tables import TableRef


def sample_table(rows: int = 12) -> pa.Table:
    return pa.table({"doc_id": [f"d{i}" for i in range(rows)], "text": [f"text | {i} " * 30 for i in range(rows)]})


def materialize_roundtrip(settings: Settings, instance: dg.DagsterInstance | None = None) -> dg.ExecuteInProcessResult:
    @dg.asset(key=["demo", "collected"])
    def collected() -> pa.Table:
        return sample_table()

    @dg.asset(key=["demo", "cleaned"], ins={"collected": dg.AssetIn(key=["demo", "collected"])})
    def cleaned(collected: TableRef) -> pa.RecordBatchReader:
        assert isinstance(collected, TableRef) and collected.num_rows == 12
        first = next(collected.batches(batch_size=5))
        return pa.RecordBatchReader.from_batches(first.schema, [first])

    return dg.materialize([collected, cleaned], resources=build_resources(settings), instance=instance)


def test_delta_io_manager_on_a_local_directory(tmp_path):
    settings = Settings.from_env({"DATAMATE_HOME": str(tmp_path)})
    result = materialize_roundtrip(settings)
    assert result.success
    assert (tmp_path / "storage" / "demo" / "collected" / "_delta_log").is_dir()
    metadata = result.asset_materializations_for_node("demo__cleaned")[0].metadata
    assert metadata["dagster/row_count"].value == 5
    assert metadata["delta_version"].value == 0
    assert metadata["bytes"].value > 0 and metadata["files"].value == 1
    assert metadata["dagster/uri"].value == str(tmp_path / "storage" / "demo" / "cleaned")
    assert [c.name for c in metadata["dagster/column_schema"].value.columns] == ["doc_id", "text"]
    assert metadata["preview"].value.startswith("| text | doc_id |")  # readable columns first
    assert "text \\| 0" in metadata["preview"].value  # pipes escaped so the table stays a table


def test_delta_io_manager_on_an_s3_endpoint(tmp_path, s3_endpoint, s3_bucket):
    settings = Settings.from_env(
        {"DATAMATE_HOME": str(tmp_path), "DATAMATE_STORAGE_URL": f"s3://{s3_bucket}/root",
         "DATAMATE_S3_ENDPOINT_URL": s3_endpoint}
    )
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_roundtrip(settings, instance).success
    result = materialize_roundtrip(settings, instance)  # a second materialization: a second version
    assert result.success
    store = ObjectStore(url=f"s3://{s3_bucket}/root", endpoint_url=s3_endpoint)
    assert tables.read_stage(store, "demo", "cleaned").num_rows == 5
    assert tables.stages(store, "demo") == ["cleaned", "collected"]
    metadata = result.asset_materializations_for_node("demo__collected")[0].metadata
    assert metadata["dagster/uri"].value == f"s3://{s3_bucket}/root/demo/collected"
    assert metadata["delta_version"].value == 1
    assert [v["version"] for v in tables.versions(tables.current(store, "demo", "collected"))] == [1, 0]


def test_an_input_is_pinned_to_the_version_its_materialization_recorded(tmp_path):
    """A write outside Dagster (another run's, not yet materialized) does not change what a downstream step reads."""
    settings = Settings.from_env({"DATAMATE_HOME": str(tmp_path)})
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_roundtrip(settings, instance).success
    store = ObjectStore(url=settings.storage_url)
    tables.write(store, "demo", "collected", sample_table(2))  # version 1, recorded by no materialization
    seen = []

    @dg.asset(key=["demo", "chunks"], ins={"collected": dg.AssetIn(key=["demo", "collected"])})
    def chunks(collected: TableRef) -> None:
        seen.append((collected.version, collected.num_rows))

    upstream = dg.AssetSpec(["demo", "collected"]).with_io_manager_key("io_manager")  # materialized above
    assert dg.materialize([upstream, chunks], resources=build_resources(settings), instance=instance).success
    assert seen == [(0, 12)]


def test_unreachable_endpoint_says_what_to_check(s3_bucket):
    store = ObjectStore(url=f"s3://{s3_bucket}/x", endpoint_url="http://127.0.0.1:9", max_attempts=1)
    with pytest.raises(StorageUnavailableError, match=r"127.0.0.1:9 is unreachable.*DATAMATE_S3_ENDPOINT_URL"):
        store.check_reachable()


def test_missing_bucket_is_named(s3_endpoint, s3_bucket):
    store = ObjectStore(url="s3://no-such-bucket/x", endpoint_url=s3_endpoint)
    with pytest.raises(StorageUnavailableError, match="bucket 'no-such-bucket' does not exist"):
        store.check_reachable()


def test_reading_a_missing_table_returns_none(tmp_path):
    store = ObjectStore(url=f"file://{tmp_path}")
    assert store.read_table("nothing.parquet") is None
    store.write_bytes(b"x", "a", "b.txt")
    assert store.read_bytes("a", "b.txt") == b"x"
