"""The synthesis methods: how each kind turns planned requests into `synthesized` rows (no dagster).

Every method calls the model only through `generate(prompts, schema) -> answers` (the LLM resource's cached
batch call, or anything with the same shape: each answer has `.ok`, `.value`, `.error`), so methods are
tested with the served packaged model and wired to any OpenAI-compatible endpoint by the asset.

- qa, cot_qa, instruction: one request asks for `per_chunk` records about the chunk.
- evol_instruct (Xu et al. 2023, WizardLM): a seed instruction from the chunk is evolved for `rounds` rounds,
  each round in depth (add constraints, deepen, concretize, more reasoning steps) or in breadth (a new, rarer
  instruction of the same domain); an evolution hitting one of the paper's elimination rules ends its lineage.
- self_instruct (Wang et al. 2023): a new task from a few seed tasks (from a file) and the chunk, kept only if
  its ROUGE-L against every task kept so far (seeds included) is below a threshold (0.7 in the paper).
- multi_turn: a conversation of N turns grounded in the chunk.
- preference: a question from the chunk, several candidate answers in different styles, each rated by the
  rubric judge; the best and the worst become chosen/rejected with both ratings (ties are set aside).
"""

import functools
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from operators.evaluation.judge import DEFAULT_RUBRICS, grade_schema, render_rubric_prompt
from operators.evaluation.metrics import normalize, tokens
from operators.filters.words import stopwords
from operators.synthesis.plan import SynthesisRequest
from operators.synthesis.schemas import (
    SYNTHESIZED_COLUMNS,
    CandidateAnswer,
    make_record,
    output_schema,
    record_id,
    to_records,
)
from operators.synthesis.templates import SynthesisTemplate

Generate = Callable[[list[str], type[BaseModel]], Sequence[Any]]

EVOL_DEPTH_OPERATIONS = {
    "en": {
        "constraints": "add one more constraint or requirement to the instruction",
        "deepening": "increase the depth and breadth of the inquiry of the instruction",
        "concretizing": "replace general concepts in the instruction with more specific ones",
        "reasoning": "rewrite it so that it explicitly asks for multiple-step reasoning",
    },
    "zh": {
        "constraints": "给指令再加一个约束或要求",
        "deepening": "加深并拓宽指令所问的问题",
        "concretizing": "把指令中的一般概念换成更具体的概念",
        "reasoning": "改写成明确要求多步推理的指令",
    },
}
EVOL_OPERATIONS = (*EVOL_DEPTH_OPERATIONS["en"], "breadth")
# Elimination rule 4 of the paper: the evolved instruction copies words of the evolving prompt.
EVOL_PROMPT_WORDS = ("given prompt", "rewritten prompt", "#rewritten prompt#", "given instruction",
                     "rewritten instruction", "prompt rewriter", "prompt creator", "给定指令", "改写后的指令")
REFUSALS = ("sorry", "抱歉", "对不起")
PREFERENCE_STYLES = {
    "en": ("Answer in one short sentence.", "Answer in detail, quoting the passage where it helps.",
           "Explain your answer step by step."),
    "zh": ("用一句简短的话回答。", "详细回答，必要时引用文本。", "逐步解释你的答案。"),
}


@dataclass
class MethodSettings:
    per_chunk: int = 1
    evol_rounds: int = 2
    self_instruct_seeds: list[str] = field(default_factory=list)
    self_instruct_examples: int = 3
    self_instruct_max_rouge_l: float = 0.7
    turns: int = 3
    preference_candidates: int = 2
    preference_rubric: dict[int, str] | None = None
    seed: int = 0


@dataclass
class Synthesizer:
    """Runs the methods for one materialization; `rows` and `drops` collect what they produce."""

    generate: Generate
    templates: dict[str, SynthesisTemplate]
    model: str
    language: str = "en"
    chunks_version: int | None = None
    settings: MethodSettings = field(default_factory=MethodSettings)
    rows: list[dict] = field(default_factory=list)
    drops: list[dict] = field(default_factory=list)

    def run(self, kind: str, requests: Sequence[SynthesisRequest]) -> None:
        if not requests:
            return
        method = {"evol_instruct": self.evol_instruct, "self_instruct": self.self_instruct,
                  "multi_turn": self.multi_turn, "preference": self.preference}.get(kind)
        if method is None:
            self.simple(kind, requests)
        else:
            method(requests)

    # --- helpers --------------------------------------------------------------------------------------
    def _record(self, kind: str, request: SynthesisRequest, template: SynthesisTemplate, prompt: str,
                question: str, answer: str, **extra: Any) -> dict:
        return make_record(kind, question, answer, doc_id=request.doc_id, chunk_id=request.chunk_id,
                           model=self.model, template_version=template.version, prompt=prompt,
                           chunks_version=self.chunks_version, **extra)

    def _drop(self, kind: str, request: SynthesisRequest, template: SynthesisTemplate, operator: str, reason: str,
              record: dict | None = None) -> None:
        row = dict.fromkeys(SYNTHESIZED_COLUMNS)
        row.update({"kind": kind, "doc_id": request.doc_id, "chunk_id": request.chunk_id, "model": self.model,
                    "template_version": template.version, "chunks_version": self.chunks_version})
        row.update(record or {})
        self.drops.append({**row, "operator": operator, "reason": reason})

    def _ask(self, prompts: list[str], schema: type[BaseModel]) -> list[Any]:
        return list(self.generate(prompts, schema)) if prompts else []

    # --- methods --------------------------------------------------------------------------------------
    def simple(self, kind: str, requests: Sequence[SynthesisRequest]) -> None:
        template = self.templates[kind]
        prompts = [template.render(text=r.text, count=self.settings.per_chunk) for r in requests]
        for request, prompt, result in zip(requests, prompts, self._ask(prompts, output_schema(
                kind, self.settings.per_chunk)), strict=True):
            if not result.ok:
                self._drop(kind, request, template, "llm", result.error or "no answer")
                continue
            records = to_records(kind, result.value, doc_id=request.doc_id, chunk_id=request.chunk_id,
                                 model=self.model, template_version=template.version, prompt=prompt,
                                 chunks_version=self.chunks_version)
            self.rows += records
            for _ in range(len(result.value.items) - len(records)):  # set aside with a reason, so counts add up
                self._drop(kind, request, template, "empty_field", "the model left the question or the answer empty")

    def evol_instruct(self, requests: Sequence[SynthesisRequest]) -> None:
        kind, seed_template = "evol_instruct", self.templates["instruction"]
        prompts = [seed_template.render(text=r.text, count=1) for r in requests]
        # A lineage: (request, current instruction, its record id)
        alive = []
        for request, result in zip(requests, self._ask(prompts, output_schema("instruction", 1)), strict=True):
            if not result.ok:
                self._drop(kind, request, seed_template, "llm", result.error or "no answer")
                continue
            seed = result.value.items[0]
            alive.append((request, seed.instruction.strip(),
                          record_id("instruction", request.chunk_id, seed.instruction.strip(), seed.response.strip())))
        operations = EVOL_DEPTH_OPERATIONS[self.language]
        for round_number in range(1, self.settings.evol_rounds + 1):
            planned = []
            for request, instruction, parent in alive:
                operation = evol_operation(request.chunk_id, round_number, self.settings.seed)
                if operation == "breadth":
                    template = self.templates["evol_breadth"]
                    prompt = template.render(instruction=instruction, text=request.text)
                else:
                    template = self.templates["evol_depth"]
                    prompt = template.render(instruction=instruction, operation=operations[operation],
                                             text=request.text)
                planned.append((request, instruction, parent, template, prompt))
            answers = self._ask([p[-1] for p in planned], output_schema("evol_instruct", 1))
            alive = []
            for (request, instruction, parent, template, prompt), result in zip(planned, answers, strict=True):
                if not result.ok:
                    self._drop(kind, request, template, "llm", result.error or "no answer")
                    continue
                item = result.value.items[0]
                evolved, response = item.instruction.strip(), item.response.strip()
                record = self._record(kind, request, template, prompt, evolved, response, parent_id=parent)
                reason = evol_elimination_reason(instruction, evolved, response, self.language)
                if reason:
                    self._drop(kind, request, template, "evol_elimination", reason, record)
                    continue
                self.rows.append(record)
                alive.append((request, evolved, record["record_id"]))

    def self_instruct(self, requests: Sequence[SynthesisRequest]) -> None:
        kind, template, settings = "self_instruct", self.templates["self_instruct"], self.settings
        if not settings.self_instruct_seeds:
            raise ValueError("self_instruct needs seed tasks (synthesis.self_instruct.seed_file)")
        prompts = []
        for request in requests:
            rng = random.Random(f"{settings.seed}\x1f{request.chunk_id}")
            examples = rng.sample(settings.self_instruct_seeds,
                                  min(settings.self_instruct_examples, len(settings.self_instruct_seeds)))
            prompts.append(template.render(examples="\n".join(f"{i}. {e}" for i, e in enumerate(examples, 1)),
                                           text=request.text, count=1))
        novelty = NoveltyFilter(settings.self_instruct_seeds, settings.self_instruct_max_rouge_l)
        for request, prompt, result in zip(requests, prompts, self._ask(prompts, output_schema(kind, 1)),
                                           strict=True):
            if not result.ok:
                self._drop(kind, request, template, "llm", result.error or "no answer")
                continue
            item = result.value.items[0]
            record = self._record(kind, request, template, prompt, item.instruction.strip(), item.response.strip())
            reason = novelty.reject_reason(record["question"])
            if reason:
                self._drop(kind, request, template, "rouge_l_novelty", reason, record)
                continue
            self.rows.append(record)

    def multi_turn(self, requests: Sequence[SynthesisRequest]) -> None:
        kind, template, turns = "multi_turn", self.templates["multi_turn"], self.settings.turns
        prompts = [template.render(text=r.text, turns=turns) for r in requests]
        for request, prompt, result in zip(requests, prompts, self._ask(prompts, output_schema(kind, turns)),
                                           strict=True):
            if not result.ok:
                self._drop(kind, request, template, "llm", result.error or "no answer")
                continue
            pairs = [(t.user.strip(), t.assistant.strip()) for t in result.value.items]
            if not all(user and assistant for user, assistant in pairs):
                self._drop(kind, request, template, "multi_turn", "a turn has an empty message")
                continue
            messages = [m for user, assistant in pairs
                        for m in ({"role": "user", "content": user}, {"role": "assistant", "content": assistant})]
            self.rows.append(self._record(kind, request, template, prompt, pairs[0][0], pairs[0][1],
                                          conversation=json.dumps(messages, ensure_ascii=False)))

    def preference(self, requests: Sequence[SynthesisRequest]) -> None:
        kind = "preference"
        question_template, answer_template = self.templates["qa"], self.templates["preference_answer"]
        prompts = [question_template.render(text=r.text, count=1) for r in requests]
        questions = []
        for request, result in zip(requests, self._ask(prompts, output_schema("qa", 1)), strict=True):
            if result.ok and result.value.items[0].question.strip():
                questions.append((request, result.value.items[0].question.strip()))
            else:
                self._drop(kind, request, question_template, "llm", result.error or "empty question")
        styles = PREFERENCE_STYLES[self.language][: self.settings.preference_candidates]
        candidate_prompts = [answer_template.render(question=q, text=r.text, style=s)
                             for r, q in questions for s in styles]
        answers = self._ask(candidate_prompts, CandidateAnswer)
        rubric = self.settings.preference_rubric or DEFAULT_RUBRICS[self.language]
        grade_prompts = [render_rubric_prompt(self.language, rubric, {"question": q, "answer": a.value.answer},
                                              source=r.text)
                         for (r, q), chunk_answers in zip(questions, _groups(answers, len(styles)), strict=True)
                         for a in chunk_answers if a.ok]
        grades = iter(self._ask(grade_prompts, grade_schema(rubric)))
        for index, (request, question) in enumerate(questions):
            rated = []
            for offset, answer in enumerate(answers[index * len(styles): (index + 1) * len(styles)]):
                if not answer.ok:
                    continue
                grade = next(grades)
                if grade.ok:
                    rated.append((grade.value.score, answer.value.answer.strip(),
                                  candidate_prompts[index * len(styles) + offset]))
            if len(rated) < 2:
                self._drop(kind, request, answer_template, "llm", "fewer than two rated candidate answers")
                continue
            best, worst = max(rated, key=lambda r: r[0]), min(rated, key=lambda r: r[0])
            record = self._record(kind, request, answer_template, best[2], question, best[1], rejected=worst[1],
                                  chosen_rating=best[0], rejected_rating=worst[0])
            if best[0] == worst[0]:
                self._drop(kind, request, answer_template, "preference", f"tie: every candidate rated {best[0]}",
                           record)
                continue
            self.rows.append(record)


def _groups(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i: i + size] for i in range(0, len(items), size)]


def evol_operation(chunk_id: str, round_number: int, seed: int = 0) -> str:
    """Which evolution a lineage gets in a round: depth or breadth, chosen by a seeded draw (reproducible)."""
    return random.Random(f"{seed}\x1f{chunk_id}\x1f{round_number}").choice(EVOL_OPERATIONS)


def evol_elimination_reason(original: str, evolved: str, response: str, language: str = "en") -> str | None:
    """The Evol-Instruct paper's elimination rules (section 3.3), or None when the evolution is kept.
    Rule 1 (no information gain) is judged by ROUGE-L instead of asking ChatGPT."""
    lowered = evolved.casefold()
    copied = [words for words in EVOL_PROMPT_WORDS if words in lowered]
    if copied:
        return f"copies the evolving prompt ({copied[0]!r})"
    if not evolved.strip() or normalize(evolved) == normalize(original) or rouge_l(original, evolved) >= 0.9:
        return "no information gain over the original instruction"
    words = tokens(response)
    if any(refusal in response.casefold() for refusal in REFUSALS) and len(words) < 80:
        return "the response is a short refusal"
    stop = stopwords(language if language in ("en", "zh") else "en")
    if all(word in stop for word in words):
        return "the response has only punctuation and stop words"
    return None


class _Tokenizer:
    """rouge_score's tokenizer drops non-ASCII text; ours splits CJK into characters, so Chinese works too."""

    def tokenize(self, text: str) -> list[str]:
        return tokens(text)


@functools.cache
def _rouge_scorer():
    from rouge_score.rouge_scorer import RougeScorer  # imports nltk and scipy (~95 MB): only where ROUGE is scored

    return RougeScorer(["rougeL"], tokenizer=_Tokenizer())


def rouge_l(reference: str, candidate: str) -> float:
    return _rouge_scorer().score(reference, candidate)["rougeL"].fmeasure


class NoveltyFilter:
    """Self-Instruct's filter: a task is new when its ROUGE-L against every task kept so far is below the
    threshold. The kept tasks are bounded by the stage's record cap, so they are held in memory."""

    def __init__(self, seeds: Sequence[str], max_rouge_l: float):
        self.kept = list(seeds)
        self.max_rouge_l = max_rouge_l

    def reject_reason(self, task: str) -> str | None:
        if len(tokens(task)) < 3:
            return "fewer than 3 words"
        best, closest = 0.0, ""
        for other in self.kept:
            score = rouge_l(other, task)
            if score > best:
                best, closest = score, other
        if best >= self.max_rouge_l:
            return f"ROUGE-L {best:.2f} >= {self.max_rouge_l} against {closest[:80]!r}"
        self.kept.append(task)
        return None
