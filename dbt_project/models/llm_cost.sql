-- LLM tokens, calls and estimated cost per dataset, run, stage and model: one row of `llm_usage` is one
-- materialization of an LLM stage, so a run's row here sums the materializations of that stage in the run.
select
    dataset,
    run_id,
    stage,
    model,
    count(*) as materializations,
    min(recorded_at) as first_recorded_at,
    max(recorded_at) as last_recorded_at,
    sum(requests) as requests,
    sum(calls) as calls,
    sum(cache_hits) as cache_hits,
    sum(retries) as retries,
    sum(failures) as failures,
    sum(budget_stopped) as budget_stopped,
    sum(input_tokens) as input_tokens,
    sum(output_tokens) as output_tokens,
    sum(input_tokens + output_tokens) as total_tokens,
    sum(cost_usd) as cost_usd,
    sum(call_seconds) as call_seconds,
    sum(output_tokens) / nullif(sum(call_seconds), 0) as output_tokens_per_second
from ({{ stage_rows('llm_usage', {
    'run_id': 'varchar', 'stage': 'varchar', 'model': 'varchar', 'recorded_at': 'timestamptz',
    'requests': 'bigint', 'calls': 'bigint', 'cache_hits': 'bigint', 'retries': 'bigint', 'failures': 'bigint',
    'budget_stopped': 'bigint', 'input_tokens': 'bigint', 'output_tokens': 'bigint', 'cost_usd': 'double',
    'call_seconds': 'double'}) }})
group by all
