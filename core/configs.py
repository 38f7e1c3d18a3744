"""Configuration files (recipes, suites, gates, policies): loading them, and messages for
those that do not validate: the key that is wrong, and the nearest valid one."""

import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from core.errors import ErrorCode, StackError

M = typing.TypeVar("M", bound=BaseModel)


def unknown_key(key: str, choices: list[str], where: str = "") -> str:
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    hint = (
        f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(choices))}"
    )
    return f"unknown key {where}{key!r}{hint}"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds, directly, in a list or dict, or in an optional."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (
        list,
        dict,
        typing.Union,
        types.UnionType,
        typing.Annotated,
    ):
        for arg in typing.get_args(annotation):
            if (found := _model_in(arg)) is not None:
                return found
    return None


def _fields_at(loc: tuple[Any, ...], root: type[BaseModel]) -> list[str]:
    """The field names of the model found at `loc` inside `root` (list indexes and dict keys
    are passed over)."""
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, str) and model is not None and part in model.model_fields:
            model = _model_in(model.model_fields[part].annotation)
    return list(model.model_fields) if model is not None else []


def _error_line(error: Any, root: type[BaseModel]) -> str:
    loc = [str(part) for part in error["loc"]]
    if error["type"] == "extra_forbidden":
        where = ".".join(loc[:-1])
        choices = _fields_at(error["loc"][:-1], root)
        return unknown_key(loc[-1], choices, f"in {where}: " if where else "")
    return f"{'.'.join(loc) or 'top level'}: {error['msg']}"


def validation_message(err: ValidationError, root: type[BaseModel]) -> str:
    """Every error of `err`, one line each (`where: what`, with the nearest key for an unknown
    one), under a count where there are several; misspelt keys first, since one usually
    explains a missing key."""
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    lines = [_error_line(e, root) for e in errors]
    if len(lines) == 1:
        return lines[0]
    return f"{len(lines)} errors:" + "".join(f"\n  {line}" for line in lines)


def load_yaml_config(path: Path, model: type[M], what: str) -> M:
    """`path` validated as `model`; StackError (INVALID) names `what` and every problem."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise StackError(ErrorCode.INVALID, f"{what} {path} does not exist") from None
    except yaml.YAMLError as err:
        raise StackError(
            ErrorCode.INVALID, f"{what} {path.name} is not valid YAML: {err}"
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as err:
        message = validation_message(err, model)
        raise StackError(ErrorCode.INVALID, f"{what} {path.name}: {message}") from None
