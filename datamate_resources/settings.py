"""One place that decides embedded defaults versus production, from environment variables.

Unset variables mean the embedded default: a local directory for storage, Milvus Lite, in-process or local
Ray, the packaged LLM and embedding models. Secrets are never read here: resources take them through
`dg.EnvVar` so they stay out of run config and metadata.
"""

import os
from pathlib import Path

from pydantic import BaseModel


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
            datasets_dir=Path(env.get("DATAMATE_DATASETS_DIR", "datasets")).resolve(),
        )
