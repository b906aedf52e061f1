-- What the retrieval knowledge base holds per dataset.
select
    dataset,
    count(*) as chunks,
    count(distinct doc_id) as documents,
    sum(length(text)) as characters,
    avg(length(text)) as mean_chunk_chars
from ({{ stage_rows('chunks', {'chunk_id': 'varchar', 'doc_id': 'varchar', 'text': 'varchar'}) }})
group by dataset
