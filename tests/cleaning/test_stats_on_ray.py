"""The Ray executor keeps the same per-document stats, record filters, selectors and splitting mappers as the
streaming runner (both through `tests.cleaning.test_ray_executor.clean`)."""

import pyarrow as pa

from bench.corpus import generate
from operators.recipe import Recipe
from tests.cleaning.test_ray_executor import clean, counts

PROCESS = [
    {"clean_html_mapper": {}},
    {"text_length_filter": {"min_len": 100}},
    {"specified_numeric_field_filter": {"field_key": "meta.n", "max_value": 500}},
    {"words_num_filter": {"min_num": 20}},
    {"document_deduplicator": {"lowercase": True}},
    {"topk_specified_field_selector": {"field_key": "meta.n", "topk": 150}},
]


def test_ray_and_local_agree_on_stats_and_selection(local_ray, tmp_path):
    table = generate(400, seed=5).table.select(["doc_id", "text"])
    table = table.append_column("meta", pa.array([{"n": i} for i in range(table.num_rows)]))
    recipe = Recipe.from_process(PROCESS)
    local_kept, local_drops, local_stats = clean("local", recipe, table, tmp_path)
    ray_kept, ray_drops, ray_stats = clean("ray", recipe, table, tmp_path)
    assert local_kept.num_rows == 150
    assert ray_kept.equals(local_kept)

    def by_row(rows: pa.Table) -> list:  # drops leave the streaming runner step by step, Ray's in input order
        return sorted(rows.to_pylist(), key=lambda row: row["meta"]["n"])

    assert by_row(ray_drops) == by_row(local_drops)  # same operator, reason and stats per document
    assert ray_drops.schema == local_drops.schema
    assert counts(ray_stats) == counts(local_stats)
    assert set(local_kept.column("stats").type.names) == {"text_len", "meta.n", "num_words"}


def test_ray_and_local_agree_on_a_recipe_that_splits_documents(local_ray, tmp_path):
    """text_chunk_mapper multiplies rows mid-recipe; the dedup after it sees the pieces on both executors."""
    table = generate(200, seed=7).table.select(["doc_id", "text"])
    recipe = Recipe.from_process([{"text_chunk_mapper": {"max_len": 300, "split_pattern": r"\n"}},
                                  {"text_length_filter": {"min_len": 20}}, {"document_deduplicator": {}}])
    local_kept, local_drops, local_stats = clean("local", recipe, table, tmp_path)
    ray_kept, ray_drops, ray_stats = clean("ray", recipe, table, tmp_path)
    assert local_stats[0].added > 0 and local_kept.num_rows > table.num_rows
    assert ray_kept.equals(local_kept)
    assert sorted(ray_drops.to_pylist(), key=str) == sorted(local_drops.to_pylist(), key=str)
    assert counts(ray_stats) == counts(local_stats)
