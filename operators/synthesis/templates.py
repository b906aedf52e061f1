"""Prompt templates for synthetic data: one file per template and language (`prompts/<language>/<name>.txt`,
English and Chinese), each overridable from the spec (`synthesis.templates: {name: text or path/to/file.txt}`).

A template is LangChain f-string text. Its version is derived from its text, so editing a template gives new
records a new `template_version` and a new cache key: old and new generations never get mixed up.
"""

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from langchain_core.prompts import PromptTemplate

PROMPTS = Path(__file__).parent / "prompts"
KINDS = ("qa", "cot_qa", "instruction", "evol_instruct", "self_instruct", "multi_turn", "preference")
LANGUAGES = ("en", "zh")
# The templates each kind renders, in the order it uses them.
KIND_TEMPLATES: dict[str, tuple[str, ...]] = {
    "qa": ("qa",), "cot_qa": ("cot_qa",), "instruction": ("instruction",),
    "evol_instruct": ("instruction", "evol_depth", "evol_breadth"),  # seeds, then evolutions
    "self_instruct": ("self_instruct",),
    "multi_turn": ("multi_turn",),
    "preference": ("qa", "preference_answer"),  # the prompt, then the candidate answers
}
# (variables a template must use, variables it may use)
TEMPLATE_VARIABLES: dict[str, tuple[set[str], set[str]]] = {
    "qa": ({"text"}, {"text", "count"}),
    "cot_qa": ({"text"}, {"text", "count"}),
    "instruction": ({"text"}, {"text", "count"}),
    "evol_depth": ({"instruction", "operation"}, {"instruction", "operation", "text"}),
    "evol_breadth": ({"instruction"}, {"instruction", "text"}),
    "self_instruct": ({"examples"}, {"examples", "text", "count"}),
    "multi_turn": ({"text"}, {"text", "turns"}),
    "preference_answer": ({"question"}, {"question", "text", "style"}),
}


@cache
def _default_text(name: str, language: str) -> str:
    return (PROMPTS / language / f"{name}.txt").read_text(encoding="utf-8").rstrip("\n")


class _Defaults(dict):
    """DEFAULT_TEMPLATES[language][name], read from the packaged files."""

    def __missing__(self, language: str) -> dict[str, str]:
        return {name: _default_text(name, language) for name in TEMPLATE_VARIABLES}


DEFAULT_TEMPLATES = _Defaults()


@dataclass(frozen=True)
class SynthesisTemplate:
    kind: str  # the template's name (for the simple kinds, the kind itself)
    language: str
    text: str

    @property
    def version(self) -> str:
        digest = hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:8]
        return f"{self.kind}-{self.language}-{digest}"

    def render(self, **variables: object) -> str:
        template = PromptTemplate.from_template(self.text)
        return template.format(**{name: variables[name] for name in template.input_variables})


def templates_for_kinds(kinds: list[str]) -> list[str]:
    """The template names the kinds use, each once."""
    return list(dict.fromkeys(name for kind in kinds for name in KIND_TEMPLATES[kind]))


def resolve_template(kind: str, language: str = "en", override: str | None = None,
                     base_dir: Path | None = None) -> SynthesisTemplate:
    """The spec's template `kind` (a template name) when given, else the default in `language`; checked
    before any call. An override naming an existing `.txt` file (relative to `base_dir`) is read from it."""
    if kind not in TEMPLATE_VARIABLES:
        raise ValueError(f"synthesis kind {kind!r} is unknown; expected one of {', '.join(TEMPLATE_VARIABLES)}")
    if language not in LANGUAGES:
        raise ValueError(f"synthesis language {language!r} is unknown; expected one of {', '.join(LANGUAGES)}")
    text = _default_text(kind, language) if override is None else _read_override(kind, override, base_dir)
    try:
        variables = set(PromptTemplate.from_template(text).input_variables)
    except ValueError as error:  # unbalanced braces
        raise ValueError(f"synthesis template for {kind!r} is not a valid f-string template: {error}") from None
    required, allowed = TEMPLATE_VARIABLES[kind]
    if not required <= variables or not variables <= allowed:
        must = " and ".join(f"{{{v}}}" for v in sorted(required))
        may = ", ".join(f"{{{v}}}" for v in sorted(allowed - required))
        raise ValueError(
            f"synthesis template for {kind!r} must use {must}" + (f" and may use {may}" if may else "")
            + f"; it uses {sorted(variables)} (write literal braces as {{{{ and }}}})"
        )
    return SynthesisTemplate(kind=kind, language=language, text=text)


def _read_override(name: str, override: str, base_dir: Path | None) -> str:
    if "\n" in override or not override.endswith(".txt"):
        return override
    path = Path(override) if base_dir is None else base_dir / override
    try:
        return path.read_text(encoding="utf-8").rstrip("\n")
    except OSError as error:
        raise ValueError(f"synthesis template file for {name!r} cannot be read: {path}: {error}") from None
