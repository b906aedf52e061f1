import dagster as dg
import pyarrow as pa
import pytest

from datamate_resources import build_resources
from datamate_resources.settings import Settings
from datamate_resources.storage import ObjectStore, StorageUnavailableError


def sample_table(rows: int = 12) -> pa.Table:
    return pa.table({"doc_id": [f"d{i}" for i in range(rows)], "text": [f"text | {i} " * 30 for i in range(rows)]})


def materialize_roundtrip(settings: Settings) -> dg.ExecuteInProcessResult:
    @dg.asset(key=["demo", "collected"])
    def collected() -> pa.Table:
        return sample_table()

    @dg.asset(key=["demo", "cleaned"], ins={"collected": dg.AssetIn(key=["demo", "collected"])})
    def cleaned(collected: pa.Table) -> pa.Table:
        return collected.slice(0, 5)

    return dg.materialize([collected, cleaned], resources=build_resources(settings))


def test_parquet_io_manager_on_a_local_directory(tmp_path):
    settings = Settings.from_env({"DATAMATE_HOME": str(tmp_path)})
    result = materialize_roundtrip(settings)
    assert result.success
    assert (tmp_path / "storage" / "demo" / "collected.parquet").exists()
    metadata = result.asset_materializations_for_node("demo__cleaned")[0].metadata
    assert metadata["dagster/row_count"].value == 5
    assert metadata["bytes"].value > 0
    assert metadata["preview"].value.startswith("| doc_id | text |")
    assert "text \\| 0" in metadata["preview"].value  # pipes escaped so the table stays a table


def test_parquet_io_manager_on_an_s3_endpoint(tmp_path, s3_endpoint, s3_bucket):
    settings = Settings.from_env(
        {"DATAMATE_HOME": str(tmp_path), "DATAMATE_STORAGE_URL": f"s3://{s3_bucket}/root",
         "DATAMATE_S3_ENDPOINT_URL": s3_endpoint}
    )
    result = materialize_roundtrip(settings)
    assert result.success
    store = ObjectStore(url=f"s3://{s3_bucket}/root", endpoint_url=s3_endpoint)
    assert store.read_table("demo", "cleaned.parquet").num_rows == 5
    assert store.list("demo") == [f"{s3_bucket}/root/demo/cleaned.parquet", f"{s3_bucket}/root/demo/collected.parquet"]
    metadata = result.asset_materializations_for_node("demo__collected")[0].metadata
    assert metadata["uri"].value == f"s3://{s3_bucket}/root/demo/collected.parquet"


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
