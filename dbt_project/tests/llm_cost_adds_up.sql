-- Every request is answered from the cache, held back by a budget, or sent: never more of those than requests,
-- and no counter below zero.
select * from {{ ref('llm_cost') }}
where cache_hits + budget_stopped > requests
   or least(requests, calls, cache_hits, retries, failures, budget_stopped, input_tokens, output_tokens) < 0
   or cost_usd < 0
