"""Prompt templates for synthetic data, with English and Chinese defaults that a spec can override.

A template is LangChain f-string text with two variables: `{text}` (the chunk) and `{count}` (how many
records to ask for). Its version is derived from its text, so editing a template in the spec gives new
records a new `template_version` and a new cache key: old and new generations never get mixed up.
"""

import hashlib
from dataclasses import dataclass

from langchain_core.prompts import PromptTemplate

KINDS = ("qa", "cot_qa", "instruction")
LANGUAGES = ("en", "zh")
TEMPLATE_VARIABLES = {"text", "count"}

DEFAULT_TEMPLATES: dict[str, dict[str, str]] = {
    "en": {
        "qa": (
            "Read the passage below and write {count} question-answer pairs about it.\n"
            "Each question must be answerable from the passage alone and make sense without it "
            "(no 'according to the passage'). Each answer must be correct, complete and taken from the "
            "passage.\n\nPassage:\n{text}"
        ),
        "cot_qa": (
            "Read the passage below and write {count} questions that need a few steps of reasoning to "
            "answer. For each, give the step-by-step reasoning that uses facts from the passage, then the "
            "short final answer.\n\nPassage:\n{text}"
        ),
        "instruction": (
            "Read the passage below and write {count} instruction-response pairs a user could ask an "
            "assistant, such as explaining, summarizing or applying what the passage says. Each response "
            "must follow its instruction and be faithful to the passage.\n\nPassage:\n{text}"
        ),
    },
    "zh": {
        "qa": (
            "阅读下面的文本，针对其内容写出 {count} 个问答对。\n"
            "每个问题都必须能仅凭文本回答，并且脱离文本也能看懂（不要写“根据文本”）。"
            "每个答案都必须正确、完整，并来自文本。\n\n文本：\n{text}"
        ),
        "cot_qa": (
            "阅读下面的文本，写出 {count} 个需要几步推理才能回答的问题。"
            "对每个问题，先给出利用文本事实的逐步推理过程，再给出简短的最终答案。\n\n文本：\n{text}"
        ),
        "instruction": (
            "阅读下面的文本，写出 {count} 个用户可能向助手提出的指令及其回复，例如解释、总结或应用文本内容。"
            "每个回复都必须遵循指令并忠实于文本。\n\n文本：\n{text}"
        ),
    },
}


@dataclass(frozen=True)
class SynthesisTemplate:
    kind: str
    language: str
    text: str

    @property
    def version(self) -> str:
        digest = hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:8]
        return f"{self.kind}-{self.language}-{digest}"

    def render(self, *, text: str, count: int) -> str:
        return PromptTemplate.from_template(self.text).format(text=text, count=count)


def resolve_template(kind: str, language: str = "en", override: str | None = None) -> SynthesisTemplate:
    """The spec's template for `kind` when given, else the default in `language`; checked before any call."""
    if kind not in KINDS:
        raise ValueError(f"synthesis kind {kind!r} is unknown; expected one of {', '.join(KINDS)}")
    if language not in LANGUAGES:
        raise ValueError(f"synthesis language {language!r} is unknown; expected one of {', '.join(LANGUAGES)}")
    text = override if override is not None else DEFAULT_TEMPLATES[language][kind]
    try:
        variables = set(PromptTemplate.from_template(text).input_variables)
    except ValueError as error:  # unbalanced braces
        raise ValueError(f"synthesis template for {kind!r} is not a valid f-string template: {error}") from None
    if "text" not in variables or not variables <= TEMPLATE_VARIABLES:
        raise ValueError(
            f"synthesis template for {kind!r} must use {{text}} and may use {{count}}; "
            f"it uses {sorted(variables)} (write literal braces as {{{{ and }}}})"
        )
    return SynthesisTemplate(kind=kind, language=language, text=text)

