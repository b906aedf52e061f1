"""Settings from environment variables: a production variable of the wrong form is an error naming the variable
and the form expected, never a silent fallback (a Milvus URI without a scheme used to become a Milvus Lite file)."""

import pytest

from datamate_resources.settings import Settings, SettingsError


def test_embedded_defaults_and_production_values(tmp_path):
    local = Settings.from_env({"DATAMATE_HOME": str(tmp_path)})
    assert local.milvus_provider == "local" and local.milvus_uri == str(tmp_path / "milvus.db")
    production = Settings.from_env({
        "DATAMATE_HOME": str(tmp_path), "DATAMATE_STORAGE_URL": "s3://datamate/prod",
        "DATAMATE_S3_ENDPOINT_URL": "http://minio:9000", "DATAMATE_MILVUS_URI": "http://milvus:19530",
        "DATAMATE_RAY_ADDRESS": "ray://ray-head:10001", "DATAMATE_LLM_BASE_URL": "http://vllm:8000/v1",
    })
    assert production.milvus_provider == "server" and production.uses_s3


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("DATAMATE_MILVUS_URI", "milvus:19530", "http(s)://host:19530"),
    ("DATAMATE_MILVUS_URI", "/data/milvus", "a path ending in .db"),
    ("DATAMATE_STORAGE_URL", "datamate/prod", "s3://bucket/prefix"),
    ("DATAMATE_S3_ENDPOINT_URL", "minio:9000", "http(s)://host[:port]"),
    ("DATAMATE_RAY_ADDRESS", "http://ray-head:8265", "ray://host:10001"),
    ("DATAMATE_LLM_BASE_URL", "vllm:8000/v1", "OpenAI-compatible endpoint"),
])
def test_a_production_variable_with_a_typo_names_the_variable_and_the_form(tmp_path, variable, value, expected):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"DATAMATE_HOME": str(tmp_path), variable: value})
    assert f"{variable}={value!r}" in str(raised.value)
    assert expected in str(raised.value)
