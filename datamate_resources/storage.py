"""Object storage over a local directory (the embedded default) or any S3 endpoint (MinIO, AWS, …).

Built on dagster-aws's `S3Resource` so the S3 settings (endpoint, region, keys, retries) are the ones
Dagster users already know; fsspec gives one file API over both backends, pyarrow reads and writes Parquet.
"""

import io
import uuid
from functools import lru_cache
from typing import Any

import botocore.exceptions
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from dagster_aws.s3 import S3Resource
from pydantic import Field


class StorageUnavailableError(RuntimeError):
    pass


@lru_cache(maxsize=16)
def _filesystem(protocol: str, endpoint_url: str | None, key: str | None, secret: str | None, region: str | None):
    if protocol == "file":
        return fsspec.filesystem("file", auto_mkdir=True)
    client_kwargs = {"region_name": region} if region else {}
    # Listings are cached by s3fs; sensors and incremental collection need to see new objects.
    return fsspec.filesystem(
        "s3", key=key, secret=secret, endpoint_url=endpoint_url, client_kwargs=client_kwargs,
        use_listings_cache=False,
    )


class ObjectStore(S3Resource):
    """Where every stage's output lives: `url` is `file:///abs/dir` or `s3://bucket/prefix`."""

    url: str = Field(description="Storage root: file:///abs/dir or s3://bucket/prefix")

    def get_object_to_set_on_execution_context(self) -> "ObjectStore":
        # S3Resource hands ops a boto3 client; `context.resources.storage` should be this store.
        return self

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if not self.is_s3:
            return _filesystem("file", None, None, None, None)
        return _filesystem(
            "s3", self.endpoint_url, self.aws_access_key_id, self.aws_secret_access_key, self.region_name
        )

    @property
    def root(self) -> str:
        """The storage root as an fsspec path (no scheme)."""
        return self.url.split("://", 1)[1].rstrip("/")

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *(p.strip("/") for p in parts if p)])

    def uri(self, *parts: str) -> str:
        return ("s3://" if self.is_s3 else "file://") + self.path(*parts)

    def with_url(self, url: str) -> "ObjectStore":
        """The same endpoint and keys at another root, e.g. an S3 source bucket beside the storage."""
        return self.model_copy(update={"url": url})

    def arrow_filesystem(self) -> pa.fs.FileSystem:
        return pa.fs.PyFileSystem(pa.fs.FSSpecHandler(self.fs))

    def check_reachable(self) -> None:
        """Fail early with a message that says what to check."""
        if not self.is_s3:
            self.fs.makedirs(self.root, exist_ok=True)
            return
        bucket = self.root.split("/", 1)[0]
        where = self.endpoint_url or "AWS S3"
        try:
            self.get_client().head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
                raise StorageUnavailableError(
                    f"S3 bucket '{bucket}' does not exist at {where}: create it or fix DATAMATE_STORAGE_URL."
                ) from error
            raise StorageUnavailableError(f"S3 at {where} refused access to bucket '{bucket}': {error}") from error
        except botocore.exceptions.BotoCoreError as error:
            raise StorageUnavailableError(
                f"Object storage at {where} is unreachable ({error}). Check DATAMATE_STORAGE_URL, "
                "DATAMATE_S3_ENDPOINT_URL and that the server is running."
            ) from error

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def write_bytes(self, data: bytes, *parts: str) -> str:
        path = self.path(*parts)
        self._atomic_write(path, lambda f: f.write(data))
        return path

    def read_bytes(self, *parts: str) -> bytes:
        return self.fs.cat_file(self.path(*parts))

    def write_table(self, table: pa.Table, *parts: str) -> int:
        """Write a Parquet file; returns its size in bytes."""
        path = self.path(*parts)
        self._atomic_write(path, lambda f: pq.write_table(table, f, compression="zstd"))
        return self.fs.size(path)

    def read_table(self, *parts: str, columns: list[str] | None = None) -> pa.Table | None:
        """The Parquet file at `parts`, or None when it was never written."""
        path = self.path(*parts)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as f:
            return pq.read_table(io.BytesIO(f.read()), columns=columns)

    def list(self, *parts: str, pattern: str = "**") -> list[str]:
        """Paths of the files below `parts` that match a glob `pattern`."""
        base = self.path(*parts)
        return sorted(p for p in self.fs.glob(f"{base}/{pattern}") if not self.fs.isdir(p))

    def delete(self, *parts: str) -> None:
        path = self.path(*parts)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def _atomic_write(self, path: str, write: Any) -> None:
        # A single S3 PUT is atomic; a local file is written aside and renamed so readers never see half.
        if self.is_s3:
            with self.fs.open(path, "wb") as f:
                write(f)
            return
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self.fs.open(tmp, "wb") as f:
            write(f)
        self.fs.mv(tmp, path)
