-- Documents in and out of each stage, per dataset: where the corpus shrinks and by how much.
with counts as (
    select dataset, 'collected' as stage, 1 as step, count(distinct doc_id) as documents, count(*) as rows
    from ({{ stage_rows('collected', {'doc_id': 'varchar'}) }}) group by dataset
    union all
    select dataset, 'cleaned', 2, count(distinct doc_id), count(*)
    from ({{ stage_rows('cleaned', {'doc_id': 'varchar'}) }}) group by dataset
    union all
    select dataset, 'annotated', 3, count(distinct doc_id), count(*)
    from ({{ stage_rows('annotated', {'doc_id': 'varchar'}) }}) group by dataset
    union all
    select dataset, 'chunks', 4, count(distinct doc_id), count(*)
    from ({{ stage_rows('chunks', {'doc_id': 'varchar'}) }}) group by dataset
    union all
    select dataset, 'synthesized', 5, count(distinct doc_id), count(*)
    from ({{ stage_rows('synthesized', {'doc_id': 'varchar'}) }}) group by dataset
)
select
    dataset,
    stage,
    step,
    lag(documents) over (partition by dataset order by step) as documents_in,
    documents as documents_out,
    rows
from counts
