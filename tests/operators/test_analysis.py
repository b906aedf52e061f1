"""Statistics to tune by: every filter's stats without dropping, histograms with the bounds, quantiles, sampling."""

import textwrap

import numpy as np
import pyarrow as pa

from datamate_assets.cli import main as datamate
from operators.analysis import quantile_table, sample_batches, stats_of_batches, summarize
from operators.recipe import Recipe

RECIPE = [{"whitespace_normalization_mapper": {}}, {"text_length_filter": {"min_len": 10, "max_len": 60}},
          {"perplexity_filter": {"max_ppl": 40}}, {"language_id_score_filter": {"lang": "en"}}]
TEXTS = ["Today is Sunday and it's a happy day!", "short", "Do you need a cup of coffee?",
         "qkc zzv xxq wpt fgh jjk lqw zzv xxq wpt fgh jjk lqw bnm " * 3, "A cup of coffee and a good book."]


def test_every_filter_computes_its_stats_on_every_document_nothing_dropped():
    recipe = Recipe.from_process(RECIPE)
    batches = [pa.table({"text": TEXTS[:2]}), pa.table({"text": TEXTS[2:]})]
    stats = stats_of_batches(recipe, batches).column("stats").to_pylist()
    assert len(stats) == 5
    assert [row["text_len"] for row in stats] == [len(t) for t in TEXTS]
    assert all(row["perplexity"] > 0 and row["lang"] for row in stats)
    summaries = {s.name: s for s in summarize(recipe, stats_of_batches(recipe, batches), [0.5])}
    assert set(summaries) == {"text_len", "perplexity", "lang_score"}  # `lang` is a label: no histogram
    text_len = summaries["text_len"]
    assert (text_len.low, text_len.high) == (10, 60)
    assert text_len.outside == 2 / 5  # "short" and the long gibberish
    assert text_len.quantiles[0.5] == float(np.median([len(t) for t in TEXTS]))
    assert summaries["perplexity"].high == 40 and summaries["lang_score"].high is None
    assert text_len.png.startswith(b"\x89PNG")
    table = quantile_table(list(summaries.values()))
    assert "| text_len | 5 |" in table and "40.0%" in table


def test_sample_is_uniform_over_the_stream_and_bounded():
    batches = (pa.table({"i": np.arange(start, start + 1000)}) for start in range(0, 20_000, 1000))
    sample = pa.concat_tables(list(sample_batches(batches, 2000, seed=1))).column("i").to_numpy()
    assert len(sample) == 2000 == len(set(sample.tolist()))
    counts = np.bincount(sample // 1000, minlength=20)
    assert counts.min() > 60 and counts.max() < 140  # ~100 from each batch, early and late ones alike


def test_cli_analyze_writes_histograms_and_quantiles(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(f'{{"text": "{t}"}}\n' for t in TEXTS), encoding="utf-8")
    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent(f"""\
        dataset_path: {data}
        export_path: {tmp_path / 'out' / 'x.jsonl'}
        percentiles: [0.1, 0.9]
        process:
          - text_length_filter: {{min_len: 10, max_len: 60}}
          - perplexity_filter: {{max_ppl: 40}}
    """))
    assert datamate(["analyze", "--config", str(config), "--sample", "4"]) == 0
    output = tmp_path / "out" / "analysis"
    assert (output / "text_len.png").read_bytes().startswith(b"\x89PNG")
    assert (output / "perplexity.png").exists() and (output / "stats.parquet").exists()
    assert "| stat | documents | p10 | p90 |" in (output / "quantiles.md").read_text()
    assert "4 documents analysed" in capsys.readouterr().out


def test_cli_analyze_reads_the_published_stats_of_a_dataset_stage_and_version(tmp_path, monkeypatch, capsys):
    """`datamate analyze DATASET`: the `stats` column of the published table (any version), in batches, with the
    bounds of the dataset's recipe drawn; errors name the table."""
    from datamate_resources import tables
    from datamate_resources.storage import ObjectStore
    from operators.recipe import run_local

    process = [{"text_length_filter": {"min_len": 10, "max_len": 60}}, {"perplexity_filter": {"max_ppl": 40}}]
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "demo.yaml").write_text(
        f"name: demo\nsources: [{{type: folder, path: {tmp_path}}}]\ncleaning:\n  process:\n"
        + "".join(f"    - {step}\n" for step in ("text_length_filter: {min_len: 10, max_len: 60}",
                                                 "perplexity_filter: {max_ppl: 40}")))
    monkeypatch.setenv("DATAMATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DATAMATE_DATASETS_DIR", str(tmp_path / "datasets"))
    monkeypatch.delenv("DATAMATE_STORAGE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    store = ObjectStore(url=f"file://{tmp_path / 'home' / 'storage'}")
    recipe = Recipe.from_process(process)
    texts = TEXTS * 600  # 3,000 documents: several batches
    result = run_local(recipe, pa.table({"doc_id": [f"d{i}" for i in range(len(texts))], "text": texts}))
    kept = result.kept.append_column("recipe_hash", pa.repeat(pa.scalar(recipe.hash), result.kept.num_rows))
    tables.write(store, "demo", "cleaned", kept.slice(0, 10), run_id="first")
    tables.write(store, "demo", "cleaned", kept, run_id="second")
    tables.write(store, "demo", "cleaning_drops", result.drops, run_id="first")
    tables.write(store, "demo", "chunks", pa.table({"chunk_id": ["c"], "text": ["t"]}), run_id="first")

    assert datamate(["analyze", "demo"]) == 0
    out = capsys.readouterr().out
    output = tmp_path / "analysis" / "demo-cleaned-v1"
    assert f"demo/cleaned version 1: all {kept.num_rows:,} of {kept.num_rows:,} documents analysed" in out
    assert str(output) in out and (output / "text_len.png").read_bytes().startswith(b"\x89PNG")
    assert "| text_len |" in (output / "quantiles.md").read_text() and "| 0.0% |" in out  # kept: inside bounds

    assert datamate(["analyze", "demo", "--stage", "cleaning_drops", "--sample", "100",
                     "--output", str(tmp_path / "drops")]) == 0
    out = capsys.readouterr().out
    assert f"a uniform sample of 100 of {result.drops.num_rows:,} documents" in out
    assert "| 10 | 60 | 100.0% |" in (tmp_path / "drops" / "quantiles.md").read_text()  # dropped: all outside

    assert datamate(["analyze", "demo", "--version", "0"]) == 0
    assert "version 0: all 10 of 10 documents" in capsys.readouterr().out

    assert datamate(["analyze", "demo", "--stage", "chunks"]) == 1
    assert "has no `stats` column" in capsys.readouterr().err
    assert datamate(["analyze", "demo", "--stage", "indexed"]) == 1
    assert "demo/indexed has no table" in capsys.readouterr().err
    assert datamate(["analyze"]) == 2
    assert "name a dataset or give --config" in capsys.readouterr().err
