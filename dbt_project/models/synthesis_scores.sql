-- Synthetic records per kind and model, with the judge's mean score (1-5) where they were judged.
with records as (
    {{ stage_rows('synthesized', {'record_id': 'varchar', 'kind': 'varchar', 'model': 'varchar',
                                  'question': 'varchar', 'answer': 'varchar'}) }}
),
judged as (
    {{ stage_rows('evaluation', {'record_id': 'varchar', 'score': 'double'}) }}
)
select
    records.dataset,
    records.kind,
    records.model,
    count(*) as records,
    avg(length(records.answer)) as mean_answer_chars,
    count(judged.score) as judged,
    avg(judged.score) as mean_judge_score
from records
left join judged on judged.dataset = records.dataset and judged.record_id = records.record_id
group by all
