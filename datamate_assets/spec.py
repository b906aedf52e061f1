"""Dataset specs: one YAML file under `datasets/` declares a dataset and what each stage does with it.

Every model forbids unknown fields, so a typo is reported with the file, the field and why instead of being
silently ignored. A stage's assets exist only when its section is present.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from operators.registry import OperatorConfigError, build_operator

DATASET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- collection ---------------------------------------------------------------------------------------
class ReaderOptions(Section):
    text_field: str = Field("text", description="Field holding the text in json/jsonl/csv/parquet inputs")
    id_field: str | None = Field(None, description="Field holding a source id in json/jsonl/csv/parquet")
    title_field: str | None = Field(None, description="Field holding a title in json/jsonl/csv/parquet")
    max_bytes: int = Field(50_000_000, gt=0, description="Larger inputs are rejected as oversized")


class FolderSource(ReaderOptions):
    type: Literal["folder"]
    path: str = Field(description="Folder, relative to the repository root or absolute")
    include: list[str] = Field(["**/*"], description="Glob patterns of files to read")
    exclude: list[str] = Field([], description="Glob patterns of files to skip")


class S3Source(ReaderOptions):
    type: Literal["s3"]
    url: str = Field(description="s3://bucket/prefix/ to read from")
    include: list[str] = Field(["**/*"], description="Glob patterns, relative to the prefix")
    exclude: list[str] = Field([], description="Glob patterns of objects to skip")

    @field_validator("url")
    @classmethod
    def _is_s3_url(cls, url: str) -> str:
        if not url.startswith("s3://"):
            raise ValueError("must start with s3://")
        return url


class WebSource(ReaderOptions):
    type: Literal["web"]
    urls: list[str] = Field([], description="Pages to fetch")
    sitemap: str | None = Field(None, description="A sitemap.xml whose pages are fetched")
    allowed_hosts: list[str] | None = Field(
        None, description="Hosts that may be fetched (default: the hosts of `urls` and `sitemap`)"
    )
    allow_private_addresses: bool = Field(False, description="Allow link-local/metadata addresses")
    timeout_seconds: float = Field(20.0, gt=0)
    max_pages: int = Field(1000, gt=0)


class SqlSource(ReaderOptions):
    type: Literal["sql"]
    url_env: str = Field(description="Environment variable holding the SQLAlchemy URL (it may hold a password)")
    query: str = Field(description="SELECT returning one row per document")


Source = Annotated[FolderSource | S3Source | WebSource | SqlSource, Field(discriminator="type")]


# --- cleaning -----------------------------------------------------------------------------------------
class CleaningSection(Section):
    executor: Literal["local", "ray"] = Field("local", description="Run in-process or on the Ray resource")
    text_key: str = "text"
    process: list[dict[str, dict[str, Any] | None]] = Field(
        default_factory=list, description="Data-Juicer style list of {operator_name: {params}}"
    )

    @field_validator("process")
    @classmethod
    def _one_operator_per_step(cls, steps: list[dict]) -> list[dict]:
        for index, step in enumerate(steps):
            if len(step) != 1:
                raise ValueError(f"step {index} must name exactly one operator, got {sorted(step)}")
        return steps


# --- annotation ---------------------------------------------------------------------------------------
class LabelStudioSection(Section):
    export: bool = Field(True, description="Write Label Studio tasks with pre-annotations to storage")
    inbox: str = Field("label_studio/inbox", description="Storage prefix where completed exports are dropped")


class AnnotationSection(Section):
    language: bool = True
    labels: list[str] = Field([], description="Topic labels for zero-shot classification")
    labeler: Literal["embeddings", "llm"] = "embeddings"
    quality: bool = True
    label_studio: LabelStudioSection | None = None


# --- synthesis ----------------------------------------------------------------------------------------
class SynthesisSection(Section):
    kinds: list[Literal["qa", "cot_qa", "instruction"]] = ["qa"]
    language: Literal["en", "zh"] = "en"
    per_chunk: int = Field(1, ge=1, le=20)
    max_records: int = Field(50, ge=1)
    templates: dict[str, str] = Field({}, description="Prompt template overrides by kind")
    process: list[dict[str, dict[str, Any] | None]] = Field(
        default_factory=list, description="Operators applied to synthetic records (dedup, quality filters)"
    )
    schedule: str | None = Field(None, description="Cron: run on a schedule instead of eagerly")


# --- evaluation ---------------------------------------------------------------------------------------
class JudgeDimension(Section):
    name: str
    description: str


class EvaluationChecks(Section):
    min_judge_pass_rate: float | None = Field(None, ge=0, le=1)
    max_duplicate_rate: float | None = Field(None, ge=0, le=1)


class EvaluationSection(Section):
    judge_dimensions: list[JudgeDimension] = []
    max_judged: int = Field(50, ge=0, description="Judge at most this many synthetic records")
    checks: EvaluationChecks = EvaluationChecks()


# --- indexing -----------------------------------------------------------------------------------------
class IndexChecks(Section):
    k: int = Field(5, ge=1)
    min_recall_at_k: float | None = Field(None, ge=0, le=1)


class IndexSection(Section):
    splitter: Literal["recursive", "token", "markdown", "html"] = "recursive"
    chunk_size: int = Field(800, gt=0)
    chunk_overlap: int = Field(100, ge=0)
    hybrid: bool = Field(True, description="Dense + BM25 where the Milvus deployment supports it")
    index_type: str = "HNSW"
    executor: Literal["local", "ray"] = Field("local", description="Embed in-process or on the Ray resource")
    checks: IndexChecks = IndexChecks()


# --- automation ---------------------------------------------------------------------------------------
class AutomationSection(Section):
    schedule: str | None = Field(None, description="Cron for re-collecting the sources")
    timezone: str = "UTC"
    inbox_sensor: bool = False
    inbox: str | None = Field(None, description="Local folder or s3:// prefix watched for new files")


class DatasetSpec(Section):
    name: str
    description: str = ""
    sources: list[Source] = Field(min_length=1)
    cleaning: CleaningSection | None = None
    annotation: AnnotationSection | None = None
    synthesis: SynthesisSection | None = None
    evaluation: EvaluationSection | None = None
    index: IndexSection | None = None
    automation: AutomationSection | None = None
    # Set by the loader, not by users.
    spec_path: Path | None = Field(None, exclude=True)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not DATASET_NAME.match(name):
            raise ValueError("must be lowercase letters, digits and underscores, starting with a letter")
        return name


@dataclass(frozen=True)
class SpecError:
    file: Path
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field or '(file)'}: {self.reason}"


def _field_path(location: tuple) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def load_spec(path: Path) -> DatasetSpec:
    """Parse and validate one spec; raises SpecFileError listing every mistake in the file."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise SpecFileError([SpecError(path, "", f"cannot be read as YAML: {error}")]) from error
    if not isinstance(raw, dict):
        raise SpecFileError([SpecError(path, "", "must be a mapping with at least `name` and `sources`")])
    raw.setdefault("name", path.stem)
    try:
        spec = DatasetSpec.model_validate(raw)
    except ValidationError as error:
        errors = [SpecError(path, _field_path(e["loc"]), e["msg"]) for e in error.errors()]
        raise SpecFileError(errors + recipe_errors(path, raw)) from error
    errors = recipe_errors(path, raw)
    if errors:
        raise SpecFileError(errors)
    return spec.model_copy(update={"spec_path": path})


def recipe_errors(path: Path, raw: dict[str, Any]) -> list[SpecError]:
    """Build every operator of `cleaning.process` and `synthesis.process` the way their stages will, so an unknown
    operator or a bad parameter is a spec mistake (`datamate validate`), not a failure of the first run.
    Steps of the wrong shape are left to the models, which report them."""
    errors = []
    for section in ("cleaning", "synthesis"):
        settings = raw.get(section)
        steps = settings.get("process") if isinstance(settings, dict) else None
        if not isinstance(steps, list):
            continue
        # The synthesis stage runs its operators on the joined question and answer (see synthesis.py).
        text_key = settings.get("text_key", "text") if section == "cleaning" else "text"
        for index, step in enumerate(steps):
            if not (isinstance(step, dict) and len(step) == 1):
                continue
            (name, params), = step.items()
            if not isinstance(name, str) or not (params is None or isinstance(params, dict)):
                continue
            where = f"{section}.process[{index}]"
            try:
                operator = build_operator(name, params, text_key=text_key if isinstance(text_key, str) else "text")
            except OperatorConfigError as error:
                errors.append(SpecError(path, where, str(error)))
                continue
            except TypeError as error:  # e.g. a parameter name that is not a string
                errors.append(SpecError(path, where, f"operator {name!r}: {error}"))
                continue
            if section == "synthesis" and operator.kind == "mapper":
                # A mapper would rewrite the joined text, which cannot be split back into question and answer.
                errors.append(SpecError(path, where, f"{name} is a mapper; synthesis.process takes filters and "
                                                     "deduplicators only"))
    return errors


class SpecFileError(ValueError):
    def __init__(self, errors: list[SpecError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def load_specs(directory: Path) -> tuple[list[DatasetSpec], list[SpecError]]:
    """All valid specs in `directory`, and the mistakes of the others (one bad file spoils no other)."""
    specs: list[DatasetSpec] = []
    errors: list[SpecError] = []
    seen: dict[str, Path] = {}
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            spec = load_spec(path)
        except SpecFileError as error:
            errors.extend(error.errors)
            continue
        if spec.name in seen:
            errors.append(SpecError(path, "name", f"dataset '{spec.name}' is already defined in {seen[spec.name]}"))
            continue
        seen[spec.name] = path
        specs.append(spec)
    return specs, errors
