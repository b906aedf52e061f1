"""`<dataset>/synthesized` materialized against the real packaged model served on loopback."""

import json

import dagster as dg
import pyarrow as pa
import pytest

from datamate_assets import synthesis
from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec
from datamate_resources.io_manager import ParquetIOManager
from datamate_resources.storage import ObjectStore
from operators.recipe import RecipeError
from operators.synthesis import SYNTHESIZED_COLUMNS, resolve_template
from tests.llm.conftest import openai_resource

PASSAGES = {
    "apt": "APT, the Advanced Package Tool, installs, upgrades and removes software on Debian. The command "
    "apt update downloads the package lists from the repositories named in /etc/apt/sources.list, and "
    "apt upgrade then installs newer versions of the packages already on the system.",
    "ssh": "OpenSSH lets an administrator log in to a remote Debian machine over an encrypted connection. "
    "The server package is openssh-server; its configuration lives in /etc/ssh/sshd_config, where "
    "PasswordAuthentication no forces users to authenticate with keys instead of passwords.",
    "backup": "A good backup policy keeps several copies of the data on different media. On Debian, rsync "
    "copies only the files that changed since the last run, which makes nightly backups of /home and /etc "
    "fast; a copy kept off-site protects against fire and theft.",
}
GERMAN = ("APT installiert, aktualisiert und entfernt Software unter Debian. Der Befehl apt update lädt die "
          "Paketlisten herunter, die in der Datei sources.list eingetragen sind, und apt upgrade installiert "
          "danach neuere Versionen der Pakete, die bereits auf dem System vorhanden sind.")


def make_spec(**synthesis_section) -> DatasetSpec:
    return DatasetSpec.model_validate({
        "name": "synth_test",
        "sources": [{"type": "folder", "path": "unused"}],
        "index": {},
        "synthesis": {"kinds": ["qa", "instruction"], "per_chunk": 1, "max_records": 3, **synthesis_section},
    })


def chunk_table() -> pa.Table:
    texts = [*PASSAGES.items(), ("german", GERMAN), ("short", "Debian 12 Bookworm.")]
    return pa.Table.from_pylist([
        {"chunk_id": f"chunk-{name}", "doc_id": f"doc-{name}", "text": text, "position": 0, "headings": "[]",
         "source_uri": f"file:///{name}.txt", "recipe_hash": "r"}
        for name, text in texts
    ])


@pytest.fixture
def storage(tmp_path) -> ObjectStore:
    store = ObjectStore(url=f"file://{tmp_path / 'storage'}")
    store.write_table(chunk_table(), "synth_test", "chunks.parquet")  # where the io_manager keeps `chunks`
    return store


def materialize(spec: DatasetSpec, storage: ObjectStore, llm) -> dg.ExecuteInProcessResult:
    defs = synthesis.build_defs(spec)
    return dg.materialize(
        [dg.AssetSpec(key(spec, "chunks")), *defs.assets],
        selection=[key(spec, "synthesized")],
        resources={"llm": llm, "storage": storage, "io_manager": ParquetIOManager(storage=storage)},
    )


def output_metadata(result: dg.ExecuteInProcessResult) -> dict:
    [event] = result.get_asset_materialization_events()
    return {name: value.value for name, value in event.materialization.metadata.items()}


def test_synthesized_records_keep_lineage_export_jsonl_and_rerun_from_cache(storage, llm_server):
    spec = make_spec(process=[{"document_deduplicator": {"lowercase": True}}])
    llm = openai_resource(llm_server, max_tokens=400)
    first = materialize(spec, storage, llm)
    assert first.success
    table = storage.read_table("synth_test", "synthesized.parquet")
    meta = output_metadata(first)

    # Contract columns, lineage back to real chunks, the model and the template version of each kind.
    assert tuple(table.column_names) == SYNTHESIZED_COLUMNS
    versions = {kind: resolve_template(kind, "en").version for kind in ("qa", "instruction")}
    chunks = {row["chunk_id"]: row["doc_id"] for row in chunk_table().to_pylist()}
    for row in table.to_pylist():
        assert chunks[row["chunk_id"]] == row["doc_id"]
        assert row["chunk_id"] in {f"chunk-{name}" for name in PASSAGES}  # German and short chunks skipped
        assert row["template_version"] == versions[row["kind"]]
        assert row["model"] == llm.model_name and row["question"] and row["answer"]
    assert meta["requests"] == 3 and meta["chunks_skipped"] == {
        "language de, not en": 1, "shorter than 200 characters": 1}

    # Every request and record is accounted for: kept, or set aside with operator and reason.
    drops = storage.read_table("synth_test", "synthesized_drops.parquet")
    assert meta["records_kept"] == table.num_rows <= 3
    assert meta["records_generated"] + meta["request_failures"] == table.num_rows + drops.num_rows
    assert all(drops.column("reason").to_pylist())

    # JSONL exports hold the same records.
    alpaca = storage.read_bytes("synth_test", "synthesized.alpaca.jsonl").decode().splitlines()
    chat = storage.read_bytes("synth_test", "synthesized.openai_chat.jsonl").decode().splitlines()
    assert [json.loads(line)["instruction"] for line in alpaca] == table.column("question").to_pylist()
    assert [json.loads(line)["messages"][0]["content"] for line in chat] == table.column("question").to_pylist()

    # Materializing again calls no model: every answer comes from the cache in object storage.
    second = materialize(spec, storage, llm)
    again = output_metadata(second)
    assert (again["llm_calls"], again["llm_cache_hits"]) == (0, meta["requests"] - meta["request_failures"])
    assert storage.read_table("synth_test", "synthesized.parquet").equals(table)


def test_bad_synthesis_sections_fail_when_definitions_load():
    with pytest.raises(ValueError, match="must use \\{text\\}"):
        synthesis.build_defs(make_spec(templates={"qa": "Ask {count} questions."}))
    with pytest.raises(ValueError, match="not in synthesis.kinds"):
        synthesis.build_defs(make_spec(kinds=["qa"], templates={"cot_qa": "{text}"}))
    with pytest.raises(RecipeError, match="mappers"):
        synthesis.build_defs(make_spec(process=[{"clean_html_mapper": {}}]))
    with pytest.raises(RecipeError, match="unknown operator"):
        synthesis.build_defs(make_spec(process=[{"no_such_filter": {}}]))
