"""The Ray executor keeps the same per-document stats, record filters and selectors as the local one."""

import pyarrow as pa

from bench.corpus import generate
from operators.recipe import Recipe, run_local, run_ray

PROCESS = [
    {"clean_html_mapper": {}},
    {"text_length_filter": {"min_len": 100}},
    {"specified_numeric_field_filter": {"field_key": "meta.n", "max_value": 500}},
    {"words_num_filter": {"min_num": 20}},
    {"document_deduplicator": {"lowercase": True}},
    {"topk_specified_field_selector": {"field_key": "meta.n", "topk": 150}},
]


def test_ray_and_local_agree_on_stats_and_selection(local_ray):
    table = generate(400, seed=5).table.select(["doc_id", "text"])
    table = table.append_column("meta", pa.array([{"n": i} for i in range(table.num_rows)]))
    recipe = Recipe.from_process(PROCESS)
    local = run_local(recipe, table)
    distributed = run_ray(recipe, table, num_blocks=3)
    assert local.kept.num_rows == 150
    assert local.kept.equals(distributed.kept)
    # drops leave the streaming runner step by step, the Ray one in input order: compare by the unique meta.n
    def by_row(table):
        return sorted(table.to_pylist(), key=lambda row: row["meta"]["n"])

    assert by_row(local.drops) == by_row(distributed.drops)
    assert local.drops.schema == distributed.drops.schema
    assert set(local.kept.column("stats").type.names) == {"text_len", "meta.n", "num_words"}


def test_ray_and_local_agree_on_a_recipe_that_splits_documents(local_ray):
    """text_chunk_mapper multiplies rows mid-recipe; the dedup after it sees the pieces on both executors."""
    table = generate(200, seed=7).table.select(["doc_id", "text"])
    recipe = Recipe.from_process([{"text_chunk_mapper": {"max_len": 300, "split_pattern": r"\n"}},
                                  {"text_length_filter": {"min_len": 20}}, {"document_deduplicator": {}}])
    local = run_local(recipe, table)
    distributed = run_ray(recipe, table, num_blocks=3)
    assert local.stats[0].added > 0 and local.kept.num_rows > table.num_rows
    assert local.kept.equals(distributed.kept)
    assert [(s.docs_in, s.docs_out, s.added, s.dropped) for s in local.stats] == \
        [(s.docs_in, s.docs_out, s.added, s.dropped) for s in distributed.stats]
