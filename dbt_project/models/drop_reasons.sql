-- Why inputs and documents were set aside: collection rejects by reason, cleaning drops by operator.
select dataset, 'collection' as stage, 'reader' as operator, reason, count(*) as documents
from ({{ stage_rows('collection_rejects', {'source_uri': 'varchar', 'reason': 'varchar'}) }})
group by all
union all
select dataset, 'cleaning', operator, reason, count(*)
from ({{ stage_rows('cleaning_drops', {'doc_id': 'varchar', 'operator': 'varchar', 'reason': 'varchar'}) }})
group by all
