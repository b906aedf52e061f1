"""The recipe runner on real operators: accounting, errors set aside, Data-Juicer recipe files, hashing, CLI."""

import json
import os

import pyarrow as pa
import pytest

from datamate_assets.cli import main
from operators import Mapper, register
from operators.recipe import Recipe, RecipeError, run_local
from operators.stream import SharedPool, ordered_map


@register("test_explode_on_marker_mapper")
class ExplodeOnMarker(Mapper):
    """Raises on texts containing BOOM (a record that breaks an operator)."""

    def process_text(self, text: str) -> str:
        if "BOOM" in text:
            raise ValueError("cannot handle BOOM")
        return text.replace("colour", "color")


BODY = "The pipeline cleans web pages before training, and every step reports what it changed. "
DOCS = [
    {"doc_id": "a", "text": "<p>Write to admin@example.com about the colour scheme.</p> " + BODY * 3},
    {"doc_id": "b", "text": "<p>Write to admin@example.com about the colour scheme.</p> " + BODY * 3},  # exact dup
    {"doc_id": "c", "text": "too short"},
    {"doc_id": "d", "text": "BOOM " + BODY * 3},
    {"doc_id": "e", "text": "A different page on storage layouts and Parquet files. " + BODY * 2},
]
PROCESS = [
    {"clean_html_mapper": {}},
    {"clean_email_mapper": {}},
    {"test_explode_on_marker_mapper": {}},
    {"text_length_filter": {"min_len": 50}},
    {"document_deduplicator": {"lowercase": True}},
    {"document_minhash_deduplicator": {"jaccard_threshold": 0.7}},
]


def test_every_document_is_kept_or_dropped_once_with_a_reason():
    result = run_local(Recipe.from_process(PROCESS), pa.Table.from_pylist(DOCS))
    assert result.kept.column("doc_id").to_pylist() == ["a", "e"]
    drops = {row["doc_id"]: (row["operator"], row["reason"]) for row in result.drops.to_pylist()}
    assert drops["b"] == ("document_deduplicator", "exact duplicate of doc a")
    assert drops["c"][0] == "text_length_filter" and "< 50" in drops["c"][1]
    assert drops["d"] == ("test_explode_on_marker_mapper", "error: ValueError: cannot handle BOOM")
    assert result.kept.num_rows + result.drops.num_rows == len(DOCS)
    stats = {s.operator: s for s in result.stats}
    assert stats["clean_email_mapper"].changed == 2 and stats["test_explode_on_marker_mapper"].errors == 1
    for s in result.stats:
        assert s.docs_in == s.docs_out + s.dropped
    assert "admin@example.com" in stats["clean_email_mapper"].examples[0]["before"]
    assert "admin@example.com" not in result.kept.column("text")[0].as_py()
    assert "color" in result.kept.column("text")[0].as_py()


def test_bad_configuration_fails_before_reading_data(tmp_path):
    with pytest.raises(RecipeError, match=r"process\[1\].*text_length_filter.*min_len"):
        Recipe.from_process([{"clean_html_mapper": {}}, {"text_length_filter": {"min_len": "many"}}])
    with pytest.raises(RecipeError, match="did you mean"):
        Recipe.from_process([{"document_minhash_dedup": {}}])


def test_recipe_hash_follows_parameters_and_defaults():
    base = Recipe.from_process(PROCESS)
    assert base.hash == Recipe.from_process(PROCESS).hash
    explicit = [*PROCESS[:-1], {"document_minhash_deduplicator": {"jaccard_threshold": 0.7, "window_size": 5}}]
    assert Recipe.from_process(explicit).hash == base.hash  # defaults spelled out: same recipe
    changed = [*PROCESS[:-1], {"document_minhash_deduplicator": {"jaccard_threshold": 0.8}}]
    assert Recipe.from_process(changed).hash != base.hash


def test_data_juicer_recipe_file_and_cli(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "project_name: demo\nnp: 4\ntext_keys: content\nprocess:\n"
        "  - clean_email_mapper:\n  - text_length_filter:\n      min_len: 50\n      num_proc: 4\n"
        "  - document_deduplicator:\n      lowercase: true\n"
    )
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps({"content": d["text"], "id": d["doc_id"]}) for d in DOCS[:3]) + "\n")
    output, stats = tmp_path / "out.jsonl", tmp_path / "stats.json"
    assert main(["clean", "--recipe", str(recipe), str(source), str(output), "--stats", str(stats)]) == 0
    kept = [json.loads(line) for line in output.read_text().splitlines()]
    assert [k["id"] for k in kept] == ["a"]
    report = json.loads(stats.read_text())
    assert report["input"] == 3 and report["kept"] == 1
    assert [op["dropped"] for op in report["operators"]] == [0, 1, 1]
    assert "kept 1 of 3 records" in capsys.readouterr().out


def test_cli_reports_bad_recipe_and_bad_input(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("process:\n  - text_length_filter: {min_len: -1x}\n")
    assert main(["clean", "--recipe", str(recipe), "in.jsonl", "out.jsonl"]) == 2
    recipe.write_text("process:\n  - clean_email_mapper: {}\n")
    bad = tmp_path / "in.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    assert main(["clean", "--recipe", str(recipe), str(bad), str(tmp_path / "o.jsonl")]) == 2
    assert f"{bad}:2" in capsys.readouterr().err


def test_process_pool_gives_the_same_result():
    table = pa.Table.from_pylist(DOCS * 3)
    recipe = Recipe.from_process(PROCESS)
    one, two = run_local(recipe, table), run_local(recipe, table, num_proc=2)
    assert one.kept.equals(two.kept) and one.drops.equals(two.drops)


def _pid_or_fail(n: int) -> tuple[int, int]:
    if n == 7:
        raise ValueError("job 7 failed")
    return n, os.getpid()


def test_shared_pool_runs_every_num_proc_th_job_here_in_order():
    pool = SharedPool(3)
    try:
        done = list(ordered_map(pool, _pid_or_fail, range(7), ahead=6))
        assert [n for n, _ in done] == list(range(7))
        here = [n for n, pid in done if pid == os.getpid()]
        assert here == [2, 5]  # every third job; the others ran in the two worker processes
        assert len({pid for _, pid in done} - {os.getpid()}) in (1, 2)
        with pytest.raises(ValueError, match="job 7 failed"):
            list(ordered_map(pool, _pid_or_fail, range(6, 10), ahead=6))
    finally:
        pool.shutdown()
