"""The one loader of `package.module:callable` settings (gates, redactors, job kinds...)."""

import importlib
from typing import Any

from core.errors import ErrorCode, StackError


def load_plugin(spec: str, setting: str) -> Any:
    """The object `spec` names (`package.module:attribute`); INVALID names the `setting` and
    what was wrong."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise StackError(
            ErrorCode.INVALID,
            f"{setting} {spec!r} is not of the form 'package.module:callable'",
            param=setting,
        )
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as err:
        reason = f"module {module!r} cannot be imported ({err})"
    except AttributeError:
        reason = f"module {module!r} has no attribute {name!r}"
    raise StackError(
        ErrorCode.INVALID, f"{setting} {spec!r} cannot be loaded: {reason}", param=setting
    )
