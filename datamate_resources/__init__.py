"""Resources around the platform's services. They know nothing of assets."""

from functools import cache

import dagster as dg

from datamate_resources.embeddings import build_embeddings
from datamate_resources.io_manager import DeltaIOManager
from datamate_resources.llm import LLMResource
from datamate_resources.milvus import build_milvus
from datamate_resources.ray import build_ray
from datamate_resources.settings import Settings
from datamate_resources.storage import ObjectStore


def optional_env(name: str) -> dg.EnvVar | None:
    """A secret passed by reference (never by value) when it is set, so it stays out of run config."""
    import os

    return dg.EnvVar(name) if os.environ.get(name) else None


def build_storage(settings: Settings) -> ObjectStore:
    return ObjectStore(
        url=settings.storage_url,
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=optional_env("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=optional_env("AWS_SECRET_ACCESS_KEY"),
        region_name=None,
    )


def open_storage(settings: Settings) -> ObjectStore:
    """The storage resource with its secrets resolved, for use outside a Dagster run (CLI, demo)."""
    return build_storage(settings).process_config_and_initialize()


def build_resources(settings: Settings) -> dict[str, object]:
    """The resources for this environment; the stage engineers add theirs here."""
    storage = build_storage(settings)
    return {
        "storage": storage,
        "io_manager": DeltaIOManager(storage=storage),
        "milvus": build_milvus(settings),
        "embeddings": build_embeddings(settings),
        "ray": build_ray(settings.ray_address),
        "llm": LLMResource.from_settings(settings),
    }


@cache
def _resources_for(settings_json: str) -> dict[str, object]:
    return build_resources(Settings.model_validate_json(settings_json))


def shared_resources(settings: Settings | None = None) -> dict[str, object]:
    """The resources for these settings (default: the environment), the same objects on every call, so each
    dataset's definitions can carry them and still merge (Dagster merges a resource key only with itself)."""
    return _resources_for((settings or Settings.from_env()).model_dump_json())
