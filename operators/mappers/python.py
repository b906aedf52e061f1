"""User Python code as a mapper: a lambda from the recipe, or a function from a file (Data-Juicer's names).

The function takes a record (or, with ``batched``, a dict of columns) and returns a dict of the fields it
sets. The code is the recipe author's: it runs with full Python rights, like Data-Juicer's.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import Field

from operators.base import OperatorParams, RecordMapper
from operators.registry import register


@cache
def _compile_lambda(source: str) -> Callable:
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as error:
        raise ValueError(f"Invalid lambda function: {error.msg}") from error
    if not isinstance(tree.body, ast.Lambda):
        raise ValueError("Input string must be a valid lambda function.")
    if len(tree.body.args.args) != 1:
        raise ValueError("Lambda function must have exactly one argument.")
    return eval(compile(tree, "<lambda_str>", "eval"), {"__builtins__": __builtins__})  # noqa: S307 - user code


@cache
def _load_function(file_path: str, function_name: str) -> Callable:
    path = Path(file_path)
    if not path.is_file():
        raise FileNotFoundError(f"The file '{file_path}' does not exist.")
    if path.suffix != ".py":
        raise ValueError(f"The file '{file_path}' is not a Python file.")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, function_name):
        raise ValueError(f"Function '{function_name}' not found in '{file_path}'.")
    function = getattr(module, function_name)
    if not callable(function):
        raise ValueError(f"The attribute '{function_name}' is not callable.")
    if len(inspect.getfullargspec(function).args) != 1:
        raise ValueError(f"The function '{function_name}' must take exactly one argument")
    return function


def _identity(sample: dict) -> dict:
    return sample


class _PythonMapper(RecordMapper):
    what = "Function"

    def function(self) -> Callable: ...

    def _checked(self, result: Any) -> dict[str, Any]:
        if not isinstance(result, dict):
            raise ValueError(f"{self.what} must return a dictionary, got {type(result).__name__} instead.")
        return result

    def process_record(self, record: dict[str, Any]) -> dict[str, Any]:
        return self._checked(self.function()(record))

    def process_columns(self, columns: dict[str, list]) -> dict[str, list]:
        return self._checked(self.function()(columns))

    def process_records(self, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Field updates per record; with ``batched`` the function sees the records as columns."""
        if not self.params.batched:
            return [self.process_record(dict(record)) for record in records]
        columns = {key: [record[key] for record in records] for key in (records[0] if records else {})}
        result = self.process_columns(columns)
        for key, values in result.items():
            if not isinstance(values, list) or len(values) != len(records):
                raise ValueError(f"batched result field {key!r} must be a list of {len(records)} values "
                                 "(the number of records cannot change)")
        return [{key: values[i] for key, values in result.items()} for i in range(len(records))]


@register("python_lambda_mapper")
class PythonLambdaMapper(_PythonMapper):
    """Apply a Python lambda (one argument: the record, or the batch's columns) returning the fields to set."""

    what = "Lambda function"

    class Params(OperatorParams):
        lambda_str: str = Field("", description="e.g. \"lambda d: {'text': d['text'].strip()}\"; empty = identity.")
        batched: bool = Field(False, description="Call the lambda once per batch with a dict of columns.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.function()  # a bad lambda fails when the recipe is loaded

    def function(self) -> Callable:
        return _compile_lambda(self.params.lambda_str) if self.params.lambda_str else _identity


@register("python_file_mapper")
class PythonFileMapper(_PythonMapper):
    """Apply a function from a Python file (one argument: the record, or the columns) returning fields to set."""

    class Params(OperatorParams):
        file_path: str = Field("", description="Path of the .py file; empty = identity.")
        function_name: str = Field("process_single", description="Name of the function in that file.")
        batched: bool = Field(False, description="Call the function once per batch with a dict of columns.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.function()  # a missing file or function fails when the recipe is loaded

    def function(self) -> Callable:
        p = self.params
        return _load_function(p.file_path, p.function_name) if p.file_path else _identity
