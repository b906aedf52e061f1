"""One place that decides embedded defaults versus production, from environment variables.

Unset variables mean the embedded default: a local directory for storage, Milvus Lite, in-process or local
Ray, the packaged LLM and embedding models. Secrets are never read here: resources take them through
`dg.EnvVar` so they stay out of run config and metadata.
"""

import os
import re
from pathlib import Path

from pydantic import BaseModel, ValidationError, field_validator

# Each setting's variable, and the forms it takes (what an error shows when a value has another form).
VARIABLES = {
    "storage_url": ("DATAMATE_STORAGE_URL", "s3://bucket/prefix or file:///absolute/directory"),
    "s3_endpoint_url": ("DATAMATE_S3_ENDPOINT_URL", "http(s)://host[:port], e.g. http://minio:9000"),
    "milvus_uri": ("DATAMATE_MILVUS_URI", "a Milvus server URL, http(s)://host:19530 or tcp://host:19530, or a "
                                          "Milvus Lite file, a path ending in .db"),
    "ray_address": ("DATAMATE_RAY_ADDRESS", "ray://host:10001, host:6379, or auto"),
    "llm_base_url": ("DATAMATE_LLM_BASE_URL", "an OpenAI-compatible endpoint, http(s)://host[:port]/v1"),
    "embeddings_base_url": ("DATAMATE_EMBEDDINGS_BASE_URL", "an OpenAI-compatible endpoint, http(s)://host[:port]/v1"),
}
HTTP_URL = re.compile(r"^https?://[^\s/:]+(:\d+)?(/\S*)?$")
MILVUS_SERVER = re.compile(r"^(https?|tcp)://[^\s/:]+(:\d+)?/?$")
RAY_ADDRESS = re.compile(r"^(auto|local|(ray://)?[^\s/:]+:\d+)$")


class SettingsError(ValueError):
    """A variable set to a value of the wrong form: names the variable, the value and the form expected."""


class Settings(BaseModel):
    home: Path
    storage_url: str
    s3_endpoint_url: str | None = None
    milvus_uri: str
    ray_address: str | None = None
    llm_base_url: str | None = None
    llm_model: str | None = None
    embeddings_base_url: str | None = None
    embeddings_model: str | None = None
    datasets_dir: Path
    # The dg project's defs/ datasets are served too, unless DATAMATE_DATASETS_DIR names the datasets to serve.
    project_datasets: bool = True

    @field_validator("storage_url")
    @classmethod
    def _storage(cls, url: str) -> str:
        if not re.match(r"^(s3://[^\s/]+|file:///)", url):
            raise ValueError("is not a storage URL")
        return url

    @field_validator("s3_endpoint_url", "llm_base_url", "embeddings_base_url")
    @classmethod
    def _http(cls, url: str | None) -> str | None:
        if url is not None and not HTTP_URL.match(url):
            raise ValueError("is not an http(s) URL")
        return url

    @field_validator("milvus_uri")
    @classmethod
    def _milvus(cls, uri: str) -> str:
        # Anything else would silently become a Milvus Lite database file of that name.
        if not (MILVUS_SERVER.match(uri) or (uri.endswith(".db") and "://" not in uri)):
            raise ValueError("is neither a Milvus server URL nor a Milvus Lite .db file")
        return uri

    @field_validator("ray_address")
    @classmethod
    def _ray(cls, address: str | None) -> str | None:
        if address is not None and not RAY_ADDRESS.match(address):
            raise ValueError("is not a Ray address")
        return address

    @property
    def uses_s3(self) -> bool:
        return self.storage_url.startswith("s3://")

    @property
    def milvus_provider(self) -> str:
        return "server" if self.milvus_uri.startswith(("http://", "https://", "tcp://")) else "local"

    @property
    def llm_provider(self) -> str:
        return "openai" if self.llm_base_url else "local"

    @property
    def embeddings_provider(self) -> str:
        return "openai" if self.embeddings_base_url else "local"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        home = Path(env.get("DATAMATE_HOME", ".datamate")).resolve()
        try:
            return cls._from_values(env, home)
        except ValidationError as error:
            problems = []
            for e in error.errors():
                variable, form = VARIABLES.get(str(e["loc"][0]), (str(e["loc"][0]), ""))
                problems.append(f"{variable}={e['input']!r} {e['msg'].removeprefix('Value error, ')}; "
                                f"expected {form}")
            raise SettingsError("; ".join(problems)) from None

    @classmethod
    def _from_values(cls, env, home: Path) -> "Settings":
        return cls(
            home=home,
            storage_url=env.get("DATAMATE_STORAGE_URL") or f"file://{home / 'storage'}",
            s3_endpoint_url=env.get("DATAMATE_S3_ENDPOINT_URL") or None,
            milvus_uri=env.get("DATAMATE_MILVUS_URI") or str(home / "milvus.db"),
            ray_address=env.get("DATAMATE_RAY_ADDRESS") or None,
            llm_base_url=env.get("DATAMATE_LLM_BASE_URL") or None,
            llm_model=env.get("DATAMATE_LLM_MODEL") or None,
            embeddings_base_url=env.get("DATAMATE_EMBEDDINGS_BASE_URL") or None,
            embeddings_model=env.get("DATAMATE_EMBEDDINGS_MODEL") or None,
            datasets_dir=Path(env.get("DATAMATE_DATASETS_DIR") or "datasets").resolve(),
            project_datasets=not env.get("DATAMATE_DATASETS_DIR"),
        )
