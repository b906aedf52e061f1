"""Data-Juicer config files run as published: global keys, command-line overrides, ignored and unknown keys,
exports, custom operators, `datamate recipes check`, and the per-document `stats` column."""

import json
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datamate_assets.cli import main as datamate
from operators import registry
from operators.dj_config import load_config
from operators.recipe import Recipe, RecipeError, run_local, stats_type
from tests.language_models import build_models

DOCS = [
    {"text": "Today is Sunday and it's a happy day! We need a cup of coffee before work.", "meta": {"star": 5}},
    {"text": "short", "meta": {"star": 1}},
    {"text": "Do you need a cup of coffee? People like to walk in the park on a happy Sunday.", "meta": {"star": 3}},
    {"text": "qkc zzv xxq wpt fgh jjk lqw zzv xxq wpt fgh jjk lqw bnm", "meta": {"star": 4}},
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    directory = build_models(tmp_path_factory.mktemp("models"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATAMATE_MODELS_DIR", str(directory))
        yield directory


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def config(tmp_path, body: str, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


RECIPE = """\
    project_name: demo
    dataset_path: ./data.jsonl
    export_path: ./out/result.jsonl
    np: 1
    text_keys: text
    open_tracer: true
    use_cache: false
    op_fusion: false
    process:
      - whitespace_normalization_mapper:
      - text_length_filter:
          min_len: 10
      - perplexity_filter:
          lang: en
          max_ppl: 40
      - specified_numeric_field_filter:
          field_key: meta.star
          min_value: 2
"""


def test_config_run_reads_global_keys_logs_ignored_keys_once_and_exports_stats(tmp_path, models, capsys):
    write_jsonl(tmp_path / "data.jsonl", DOCS)
    path = config(tmp_path, RECIPE)
    assert datamate(["clean", "--config", str(path), "--drops", str(tmp_path / "drops.jsonl")]) == 0
    out, err = capsys.readouterr()
    for key in ("open_tracer", "use_cache", "op_fusion"):
        assert err.count(f"`{key}` is ignored here") == 1
    kept = read_jsonl(tmp_path / "out" / "result.jsonl")
    assert [row["text"] for row in kept] == [DOCS[0]["text"], DOCS[2]["text"]]
    assert "stats" not in kept[0]  # keep_stats_in_res_ds: false (Data-Juicer's default): stats go beside
    stats = read_jsonl(tmp_path / "out" / "result_stats.jsonl")
    assert [sorted(row["stats"]) for row in stats] == [["meta.star", "perplexity", "text_len"]] * 2
    assert all(row["stats"]["perplexity"] <= 40 for row in stats)
    drops = {row["text"]: row for row in read_jsonl(tmp_path / "drops.jsonl")}
    assert drops["short"]["operator"] == "text_length_filter" and drops["short"]["stats"]["text_len"] == 5
    assert drops["short"]["stats"]["perplexity"] is None  # later filters never saw it
    assert drops[DOCS[3]["text"]]["operator"] == "perplexity_filter"
    assert "kept 2 of 4 records" in out


def test_command_line_overrides_the_file_and_shards_the_export(tmp_path, models):
    write_jsonl(tmp_path / "other.jsonl", DOCS * 50)
    extra = "np: 1\n    export_shard_size: 4000\n    keep_stats_in_res_ds: true"
    path = config(tmp_path, RECIPE.replace("np: 1", extra))
    args = ["clean", "--config", str(path), "--dataset_path", str(tmp_path / "other.jsonl"),
            "--export_path", str(tmp_path / "sharded" / "part.jsonl"), "--np", "2"]
    assert datamate(args) == 0
    shards = sorted((tmp_path / "sharded").glob("part-*-of-*.jsonl"))
    assert len(shards) > 1 and all(shard.stat().st_size > 0 for shard in shards)
    rows = [row for shard in shards for row in read_jsonl(shard)]
    assert len(rows) == 100 and "perplexity" in rows[0]["stats"]
    assert load_config(path, {"np": 3}).np == 3 and load_config(path).np == 1


def test_unknown_key_is_an_error_listing_close_names_and_unsupported_keys_say_why(tmp_path, capsys):
    path = config(tmp_path, "dataset_pth: x.jsonl\nprocess:\n  - text_length_filter:\n")
    with pytest.raises(RecipeError, match="unknown key 'dataset_pth'; did you mean dataset_path"):
        load_config(path)
    assert datamate(["clean", "--config", str(path)]) == 2
    assert "dataset_pth" in capsys.readouterr().err
    path = config(tmp_path, "dataset: {configs: []}\nprocess:\n  - text_length_filter:\n")
    with pytest.raises(RecipeError, match="'dataset' is not supported: use dataset_path"):
        load_config(path)


def test_old_recipe_form_keeps_working(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", DOCS)
    recipe = config(tmp_path, "process:\n  - text_length_filter: {min_len: 10}\n")
    assert datamate(["clean", "--recipe", str(recipe), str(tmp_path / "in.jsonl"), str(tmp_path / "out.parquet")]) == 0
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.num_rows == 3 and table.schema.field("stats").type == pa.struct([("text_len", pa.float64())])


def test_folder_input_of_mixed_formats(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    write_jsonl(folder / "a.jsonl", DOCS[:2])
    pq.write_table(pa.Table.from_pylist([{"text": "a parquet document that is long enough"}]), folder / "b.parquet")
    (folder / "sub" / "c.txt").write_text("a plain text file, one record", encoding="utf-8")
    (folder / "d.csv").write_text("text,n\nfrom a csv file with two columns,1\n", encoding="utf-8")
    path = config(tmp_path, f"dataset_path: {folder}\nexport_path: {tmp_path / 'o.parquet'}\n"
                            "process:\n  - text_length_filter: {min_len: 10}\n")
    assert datamate(["clean", "--config", str(path)]) == 0
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 4


def test_custom_operator_paths_and_entry_points_register_operators(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    ops = tmp_path / "my_ops"
    ops.mkdir()
    (ops / "shout.py").write_text(textwrap.dedent('''\
        from operators import Mapper, register

        @register("shout_mapper")
        class Shout(Mapper):
            """Upper-case the text."""

            def process_text(self, text):
                return text.upper()
    '''))
    path = config(tmp_path, f"custom_operator_paths: ['{ops}']\nprocess:\n  - shout_mapper:\n")
    assert load_config(path).recipe.names == ["shout_mapper"]

    # a pip-installed package: a module and an entry point in the `datamate.operators` group
    site = tmp_path / "site"
    (site / "whisper_ops").mkdir(parents=True)
    (site / "whisper_ops" / "__init__.py").write_text((ops / "shout.py").read_text().replace("shout", "whisper")
                                                      .replace("upper", "lower"))
    dist = site / "whisper_ops-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: whisper-ops\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[datamate.operators]\nwhisper = whisper_ops\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.delitem(sys.modules, "whisper_ops", raising=False)
    assert datamate(["ops", "list"]) == 0
    assert "whisper_mapper  [mapper]  Upper-case the text.  (from whisper_ops)" in capsys.readouterr().out


def test_recipes_check_reports_support_models_and_ignored_keys(tmp_path, models, monkeypatch, capsys):
    path = config(tmp_path, """\
        open_tracer: true
        process:
          - perplexity_filter: {lang: en, max_ppl: 1500}
          - perplexity_filter: {lang: fr}
          - llm_quality_score_filter: {}
          - text_length_filter: {max_len: 2e5}
    """)
    assert datamate(["recipes", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "does NOT run here" in out
    assert f"ok  [0] perplexity_filter: model files: {models / 'en.sp.model'}, {models / 'en.arpa.bin'}" in out
    assert "NO  [1] perplexity_filter" in out and "fr.sp.model" in out and str(models) in out
    assert "NO  [2] llm_quality_score_filter" in out and "not supported yet" in out
    assert "ok  [3] text_length_filter" in out and "max_len=200000" in out  # YAML 1.1 reads 2e5 as a string
    assert "ignored `open_tracer`" in out


def test_stats_schema_is_fixed_by_the_recipe_and_the_same_for_kept_and_dropped():
    recipe = Recipe.from_process([{"text_length_filter": {"min_len": 10}},
                                  {"language_id_score_filter": {"lang": "en", "min_score": 0.5}},
                                  {"gopher_repetition_filter": {"top_n_grams": [[2, 0.5]], "dup_n_grams": []}}])
    kind = stats_type(recipe.operators)
    assert kind.field("text_len").type == pa.float64() and kind.field("lang").type == pa.string()
    assert "top_2_gram_char_frac" in kind.names
    english = "The weather is nice today, so many people are walking their dogs in the park near the river."
    table = pa.Table.from_pylist([{"text": "short"}, {"text": english},
                                  {"text": "Le temps est beau aujourd'hui et le parc est plein de monde."}])
    result = run_local(recipe, table)
    assert result.kept.schema.field("stats").type == kind == result.drops.schema.field("stats").type
    kept_stats = result.kept.column("stats").to_pylist()[0]
    assert kept_stats["lang"] == "en" and kept_stats["text_len"] == len(english)
    by_text = {row["text"]: row["stats"] for row in result.drops.to_pylist()}
    assert by_text["short"]["text_len"] == 5 and by_text["short"]["lang"] is None
    assert by_text[table.column("text")[2].as_py()]["lang"] == "fr"


def test_dataset_spec_points_its_cleaning_stage_at_a_config_file(tmp_path):
    from datamate_assets.spec import SpecFileError, validate_spec

    (tmp_path / "recipes").mkdir()
    config(tmp_path / "recipes", "open_tracer: true\nprocess:\n  - text_length_filter: {min_len: 3}\n", "good.yaml")
    config(tmp_path / "recipes", "process:\n  - text_lenth_filter: {}\n", "bad.yaml")
    spec = {"name": "docs", "sources": [{"type": "folder", "path": str(tmp_path)}]}
    valid = validate_spec({**spec, "cleaning": {"config": "recipes/good.yaml"}}, tmp_path / "docs.yaml")
    assert load_config(tmp_path / valid.cleaning.config).recipe.names == ["text_length_filter"]
    with pytest.raises(SpecFileError, match="cleaning.config: .*bad.yaml: process\\[0\\].*did you mean text_length"):
        validate_spec({**spec, "cleaning": {"config": "recipes/bad.yaml"}}, tmp_path / "docs.yaml")
    with pytest.raises(SpecFileError, match="either `process:` or `config:`"):
        validate_spec({**spec, "cleaning": {"config": "recipes/good.yaml", "process": [{"text_length_filter": {}}]}},
                      tmp_path / "docs.yaml")


def test_input_is_read_in_batches_with_one_schema_for_every_record(tmp_path, capsys):
    """A field that is null in the first batch and a number later, and one that appears late, keep one type."""
    from operators.dj_config import InputDataset

    rows = [{"text": f"document number {i} is long enough", "score": None} for i in range(2100)]
    rows += [{"text": f"later document {i} has a score", "score": i / 2, "meta": {"lang": "en"}} for i in range(300)]
    write_jsonl(tmp_path / "in.jsonl", rows)
    dataset = InputDataset.open(tmp_path / "in.jsonl")
    batches = list(dataset.batches())
    assert [b.num_rows for b in batches] == [2000, 400] and all(b.schema == dataset.schema for b in batches)
    assert dataset.schema.field("score").type == pa.float64()
    recipe = config(tmp_path, "process:\n  - text_length_filter: {min_len: 10}\n")
    assert datamate(["clean", "--recipe", str(recipe), str(tmp_path / "in.jsonl"), str(tmp_path / "out.parquet")]) == 0
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.num_rows == 2400 and out.column("meta").to_pylist()[-1] == {"lang": "en"}
    assert "kept 2400 of 2400 records" in capsys.readouterr().out

    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n\n[1, 2]\n', encoding="utf-8")
    assert datamate(["clean", "--recipe", str(recipe), str(tmp_path / "bad.jsonl"), str(tmp_path / "o.jsonl")]) == 2
    assert f"error: {tmp_path / 'bad.jsonl'}:3: not a JSON object: list" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()  # the input is checked before anything is written
