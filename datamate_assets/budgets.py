"""LLM budgets of one materialization of an LLM stage (synthesized, evaluation, annotated with the LLM labeler).

Two limits apply, whichever is reached first: the stage's own (`synthesis.budget`, `evaluation.budget`,
`annotation.budget`), and what is left of the run's (the dataset's top-level `budget`), which is the run budget
minus what the LLM stages of this Dagster run that finished earlier recorded in `<dataset>/llm_usage`. A stage
that reaches either sends no more requests (cache hits stay free), commits what it has and says which budget
stopped it; the next materialization, a new run with a budget of its own, resumes from the cache.
"""

from dataclasses import dataclass
from typing import Any

import dagster as dg

from datamate_assets.spec import Budget
from datamate_resources.llm import LLMClient, LLMResource, RunSpend, run_spend
from datamate_resources.storage import ObjectStore


@dataclass(frozen=True)
class StageBudget:
    stage: Budget | None
    run: Budget | None
    spent_before: RunSpend  # by the LLM stages of this run that finished before this one

    @classmethod
    def for_run(cls, storage: ObjectStore, dataset: str, run_id: str, stage: Budget | None,
                run: Budget | None) -> "StageBudget":
        # Read with or without a run budget: the metadata shows the run's total so far either way.
        return cls(stage, run, run_spend(storage, dataset, run_id))

    def limits(self) -> tuple[int | None, float | None]:
        """(max tokens, max USD) this materialization may spend; 0 when the run's budget is already spent."""
        tokens, costs = [], []
        if self.stage:
            tokens.append(self.stage.max_tokens)
            costs.append(self.stage.max_cost)
        if self.run and self.run.max_tokens is not None:
            tokens.append(max(0, self.run.max_tokens - self.spent_before.tokens))
        if self.run and self.run.max_cost is not None:
            costs.append(max(0.0, self.run.max_cost - self.spent_before.cost_usd))
        return (min((t for t in tokens if t is not None), default=None),
                min((c for c in costs if c is not None), default=None))

    def client(self, llm: LLMResource, storage: ObjectStore, log: Any) -> LLMClient:
        max_tokens, max_cost = self.limits()
        return llm.client(storage, log, max_tokens=max_tokens, max_cost=max_cost)

    def metadata(self, client: LLMClient, prefix: str) -> dict[str, Any]:
        """The run's spend so far (this stage included) and, when requests were held back, which budget did it."""
        usage = client.usage
        run_tokens = self.spent_before.tokens + usage.input_tokens + usage.output_tokens
        run_cost = self.spent_before.cost_usd + usage.cost_usd
        metadata: dict[str, Any] = {f"{prefix}run_tokens": run_tokens, f"{prefix}run_cost_usd": round(run_cost, 6)}
        if not usage.budget_stopped:
            return metadata
        reached = []
        if self.stage and _over(self.stage, usage.input_tokens + usage.output_tokens, usage.cost_usd):
            reached.append(f"the stage's ({_limits(self.stage)})")
        if self.run and _over(self.run, run_tokens, run_cost):
            reached.append(f"the run's ({_limits(self.run)}; earlier stages of this run spent "
                           f"{self.spent_before.tokens} tokens / {self.spent_before.cost_usd:.4f} USD)")
        metadata[f"{prefix}budget_reached"] = dg.MetadataValue.md(
            f"**Budget reached**: {' and '.join(reached) or 'a budget'}. {usage.budget_stopped} requests were not "
            "sent. What was generated is committed and cached; materialize again (a new run has a run budget of its "
            "own) or raise the budget to resume from the cache.")
        return metadata


def _over(budget: Budget, tokens: int, cost: float) -> bool:
    return ((budget.max_tokens is not None and tokens >= budget.max_tokens)
            or (budget.max_cost is not None and cost >= budget.max_cost))


def _limits(budget: Budget) -> str:
    return f"{budget.max_tokens or '-'} tokens / {budget.max_cost or '-'} USD"
