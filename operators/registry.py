"""Operators by name: ``@register`` a class, ``build_operator(name, params)`` an instance.

Every module under the built-in operator packages is imported on first look-up, so a new module
registers itself just by existing.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import types
import typing
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticUndefined

from operators.base import DEFAULT_TEXT_KEY, Operator, OperatorParams

_REGISTRY: dict[str, type[Operator]] = {}
_BUILTIN_PACKAGES = ("operators.mappers", "operators.filters", "operators.dedup")
_loaded = False

# Data-Juicer per-operator runtime options (parallelism, hardware, ...) that do not change results;
# accepted and ignored so that a Data-Juicer recipe's `process:` list runs unchanged.
DATA_JUICER_RUNTIME_KEYS = frozenset({
    "accelerator", "audio_key", "batch_size", "cpu_required", "gpu_required", "history_key",
    "image_bytes_key", "image_key", "index_key", "mem_required", "memory", "num_cpus", "num_gpus",
    "num_proc", "query_key", "ray_execution_mode", "response_key", "runtime_env", "skip_op_error",
    "stats_export_path", "turbo", "video_key", "work_dir",
})


class OperatorConfigError(ValueError):
    """A recipe names an unknown operator or gives it a bad parameter."""

    def __init__(self, operator: str, parameter: str | None, reason: str):
        self.operator, self.parameter, self.reason = operator, parameter, reason
        where = f"operator {operator!r}" + (f", parameter {parameter!r}" if parameter else "")
        super().__init__(f"{where}: {reason}")


def register(name: str):
    """Class decorator: make the operator available under ``name`` in recipes."""

    def decorate(cls: type[Operator]) -> type[Operator]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"operator name {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        if not (isinstance(cls, type) and issubclass(cls, Operator)) or not cls.kind:
            raise TypeError(f"{cls!r} must subclass Mapper, Filter or Deduplicator")
        if not issubclass(cls.Params, OperatorParams):
            raise TypeError(f"{cls.__qualname__}.Params must subclass OperatorParams")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    for package_name in _BUILTIN_PACKAGES:
        try:
            package = importlib.import_module(package_name)
        except ModuleNotFoundError as error:
            if error.name == package_name:  # that kind has no package yet
                continue
            raise
        for module in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            importlib.import_module(module.name)
    _loaded = True


def registered() -> dict[str, type[Operator]]:
    """All operator classes by name, sorted by name."""
    _load_builtins()
    return dict(sorted(_REGISTRY.items()))


def get_operator_class(name: str) -> type[Operator]:
    operators = registered()
    if name not in operators:
        close = difflib.get_close_matches(name, operators, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; run `datamate ops list` for the catalogue"
        raise OperatorConfigError(name, None, f"unknown operator{hint}")
    return operators[name]


def build_operator(name: str, params: dict[str, Any] | None = None, text_key: str = DEFAULT_TEXT_KEY) -> Operator:
    """Validate ``params`` against the operator's declared parameters and build it; fail fast."""
    cls = get_operator_class(name)
    if params is not None and not isinstance(params, dict):
        raise OperatorConfigError(name, None, f"parameters must be a mapping, got {type(params).__name__}")
    params = dict(params or {})
    text_key = params.pop("text_key", text_key)
    for key in DATA_JUICER_RUNTIME_KEYS & params.keys():
        del params[key]
    try:
        validated = cls.Params(**params)
    except ValidationError as error:
        first = error.errors()[0]
        parameter = ".".join(str(part) for part in first["loc"]) or None
        reason = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(first["loc"][0]), cls.Params.model_fields, n=3)
            reason = "unknown parameter" + (f"; did you mean {', '.join(close)}?" if close else "")
            reason += f" (accepted: {', '.join(cls.Params.model_fields) or 'none'})"
        raise OperatorConfigError(name, parameter, reason) from error
    try:
        return cls(validated, text_key=text_key)
    except (ValueError, TypeError) as error:  # cross-parameter checks done in __init__
        raise OperatorConfigError(name, None, str(error)) from error


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not isinstance(annotation, types.GenericAlias):
        return annotation.__name__
    text = str(annotation).replace("typing.", "")
    return text.replace("NoneType", "None")


def catalogue() -> list[dict[str, Any]]:
    """Every operator with kind, description and parameters (name, type, default, description)."""
    entries = []
    for name, cls in registered().items():
        params = []
        for param_name, info in cls.Params.model_fields.items():
            default = None if info.default is PydanticUndefined else info.default
            params.append({
                "name": param_name,
                "type": _type_name(typing.get_type_hints(cls.Params).get(param_name, info.annotation)),
                "default": default,
                "required": info.is_required(),
                "description": info.description or "",
            })
        entries.append({"name": name, "kind": cls.kind, "description": cls.description(), "params": params})
    return entries
