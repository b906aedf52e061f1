-- How documents spread over languages and topics, with the labeler's mean confidence.
with annotated as (
    {{ stage_rows('annotated', {'doc_id': 'varchar', 'language': 'varchar', 'language_confidence': 'double',
                                'topic': 'varchar', 'topic_confidence': 'double'}) }}
)
select dataset, 'language' as label, language as value, count(*) as documents,
       avg(language_confidence) as mean_confidence
from annotated where language is not null group by all
union all
select dataset, 'topic', topic, count(*), avg(topic_confidence)
from annotated where topic is not null group by all
