"""Operators by name: ``@register`` a class, ``build_operator(name, params)`` an instance.

Every module under the built-in operator packages is imported on first look-up, so a new module
registers itself just by existing. Operators from outside this package come from the modules of the
``datamate.operators`` entry-point group (a pip-installed package of operators) and from files or folders
named by a recipe's ``custom_operator_paths`` (:func:`load_operator_paths`).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import pkgutil
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticUndefined

from operators.base import DEFAULT_TEXT_KEY, Operator, OperatorParams
from operators.unsupported import NOT_SUPPORTED

_REGISTRY: dict[str, type[Operator]] = {}
_BUILTIN_PACKAGES = ("operators.mappers", "operators.filters", "operators.dedup", "operators.selectors")
_loaded = False
ENTRY_POINT_GROUP = "datamate.operators"

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
            raise TypeError(f"{cls!r} must subclass Mapper, Filter, Deduplicator or Selector")
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
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry_point.load()  # importing the module registers its operators


def _import_file(path: Path) -> None:
    # a stable module name per file, so loading the same path twice is a no-op
    name = f"datamate_custom_{path.stem}_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def load_operator_paths(paths: list[Path | str]) -> None:
    """Import operator modules from files or folders (Data-Juicer's ``custom_operator_paths``).

    A folder that is a package (has ``__init__.py``) is imported as that package with every module in it;
    any other folder has each of its ``.py`` files imported.
    """
    _load_builtins()
    for path in map(Path, paths):
        if path.is_file():
            _import_file(path)
        elif (path / "__init__.py").is_file():
            if str(path.parent) not in sys.path:
                sys.path.insert(0, str(path.parent))
            package = importlib.import_module(path.name)
            for module in pkgutil.walk_packages(package.__path__, prefix=f"{path.name}."):
                importlib.import_module(module.name)
        elif path.is_dir():
            for file in sorted(path.glob("*.py")):
                _import_file(file)
        else:
            raise FileNotFoundError(f"custom operator path {path} does not exist")


def registered() -> dict[str, type[Operator]]:
    """All operator classes by name, sorted by name."""
    _load_builtins()
    return dict(sorted(_REGISTRY.items()))


def get_operator_class(name: str) -> type[Operator]:
    operators = registered()
    if name not in operators:
        if name in NOT_SUPPORTED:
            raise OperatorConfigError(name, None, f"Data-Juicer operator not supported yet: {NOT_SUPPORTED[name]}")
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
    except (ValueError, TypeError, OSError) as error:  # checks done in __init__ (model files, user code)
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
        entries.append({"name": name, "kind": cls.kind, "description": cls.description(), "params": params,
                        "module": cls.__module__})
    return entries


def not_supported() -> dict[str, str]:
    """Data-Juicer's general-text operators not available here, with the reason."""
    operators = registered()
    return {name: reason for name, reason in sorted(NOT_SUPPORTED.items()) if name not in operators}
