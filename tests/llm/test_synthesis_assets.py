"""`<dataset>/synthesized` materialized against the real packaged model served on loopback."""

import json

import dagster as dg
import pyarrow as pa
import pytest

from datamate_assets import synthesis
from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec
from datamate_resources import tables
from datamate_resources.io_manager import DeltaIOManager
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
    tables.write(store, "synth_test", "chunks", chunk_table())
    return store


def materialize(spec: DatasetSpec, storage: ObjectStore, llm) -> dg.ExecuteInProcessResult:
    defs = synthesis.build_defs(spec)
    return dg.materialize(
        [dg.AssetSpec(key(spec, "chunks")), *defs.assets],
        selection=[key(spec, "synthesized")],
        resources={"llm": llm, "storage": storage, "io_manager": DeltaIOManager(storage=storage)},
    )


def output_metadata(result: dg.ExecuteInProcessResult) -> dict:
    [event] = result.get_asset_materialization_events()
    return {name: value.value for name, value in event.materialization.metadata.items()}


@pytest.mark.timeout(1800)  # three model calls, which take minutes each on the shared 2-core CI machine
def test_synthesized_records_keep_lineage_export_jsonl_and_rerun_from_cache(storage, llm_server):
    spec = make_spec(process=[{"document_deduplicator": {"lowercase": True}}])
    llm = openai_resource(llm_server, max_tokens=400)
    first = materialize(spec, storage, llm)
    assert first.success
    table = tables.read_stage(storage, "synth_test", "synthesized")
    meta = output_metadata(first)

    # Contract columns, lineage back to real chunks and their table version, the model, the template version of
    # each kind and the hash of the prompt.
    assert tuple(table.column_names) == SYNTHESIZED_COLUMNS
    chunks_version = tables.current(storage, "synth_test", "chunks").version
    versions = {kind: resolve_template(kind, "en").version for kind in ("qa", "instruction")}
    chunks = {row["chunk_id"]: row["doc_id"] for row in chunk_table().to_pylist()}
    for row in table.to_pylist():
        assert chunks[row["chunk_id"]] == row["doc_id"]
        assert row["chunk_id"] in {f"chunk-{name}" for name in PASSAGES}  # German and short chunks skipped
        assert row["template_version"] == versions[row["kind"]]
        assert row["model"] == llm.model_name and row["question"] and row["answer"]
        assert row["chunks_version"] == chunks_version and len(row["prompt_hash"]) == 16
    # At most max_records chunks are sampled; each is asked once or skipped with its reason.
    assert meta["chunks_sampled"] == 3 and meta["requests"] + sum(meta["chunks_skipped"].values()) == 3
    assert set(meta["chunks_skipped"]) <= {"language de, not en", "shorter than 200 characters"}

    # Every request and record is accounted for: kept, or set aside with operator and reason.
    drops = tables.read_stage(storage, "synth_test", "synthesized_drops")
    assert meta["records_kept"] == table.num_rows <= 3
    assert meta["records_generated"] + meta["request_failures"] + meta["records_eliminated"] == (
        table.num_rows + drops.num_rows)
    assert all(drops.column("reason").to_pylist())

    # JSONL exports (sharded, URIs in the metadata) hold the same records.
    [alpaca_uri], [chat_uri] = meta["export_alpaca"], meta["export_openai_chat"]
    alpaca = storage.fs.cat_file(alpaca_uri).decode().splitlines()
    chat = storage.fs.cat_file(chat_uri).decode().splitlines()
    assert [json.loads(line)["instruction"] for line in alpaca] == table.column("question").to_pylist()
    assert [json.loads(line)["messages"][0]["content"] for line in chat] == table.column("question").to_pylist()

    # Materializing again calls no model: every answer comes from the cache in object storage.
    second = materialize(spec, storage, llm)
    again = output_metadata(second)
    assert (again["llm_calls"], again["llm_cache_hits"]) == (0, meta["requests"] - meta["request_failures"])
    assert tables.read_stage(storage, "synth_test", "synthesized").equals(table)
    usage = sorted(tables.read_stage(storage, "synth_test", "llm_usage").to_pylist(), key=lambda u: u["recorded_at"])
    assert [(u["stage"], u["calls"], u["cache_hits"]) for u in usage] == [
        ("synthesized", meta["llm_calls"], meta["llm_cache_hits"]), ("synthesized", 0, again["llm_cache_hits"])]


def test_short_and_other_language_chunks_are_skipped_with_the_reason():
    assert synthesis.chunk_skip_reason(GERMAN, "en") == "language de, not en"
    assert synthesis.chunk_skip_reason("Debian 12 Bookworm.", "en") == "shorter than 200 characters"
    assert synthesis.chunk_skip_reason(PASSAGES["apt"], "en") is None


def test_bad_synthesis_sections_fail_when_definitions_load():
    with pytest.raises(ValueError, match="must use \\{text\\}"):
        synthesis.build_defs(make_spec(templates={"qa": "Ask {count} questions."}))
    with pytest.raises(ValueError, match="used by none of synthesis.kinds"):
        synthesis.build_defs(make_spec(kinds=["qa"], templates={"cot_qa": "{text}"}))
    with pytest.raises(RecipeError, match="mappers"):
        synthesis.build_defs(make_spec(process=[{"clean_html_mapper": {}}]))
    with pytest.raises(RecipeError, match="unknown operator"):
        synthesis.build_defs(make_spec(process=[{"no_such_filter": {}}]))
