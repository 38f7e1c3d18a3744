"""Redaction of personal data in text: the built-in `pii` redactor, or a `module:callable` of
the user's; one redactor for the traffic log and for cleaned training data."""

import re
from collections.abc import Callable

from core.plugins import load_plugin

Redactor = Callable[[str], str]

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
_LONG_NUMBER = re.compile(r"\b(?:\d[ -]?){9,}\d\b")  # card, phone and account numbers


def redact_pii(text: str) -> str:
    """Replace e-mail addresses and long digit runs (10 or more digits) with placeholders."""
    return _LONG_NUMBER.sub("[NUMBER]", _EMAIL.sub("[EMAIL]", text))


def load_redactor(spec: str | None, setting: str = "redactor") -> Redactor | None:
    """None, 'pii' (the built-in `redact_pii`) or 'package.module:callable'; `setting` names
    where the spec came from, for the error."""
    if not spec:
        return None
    if spec == "pii":
        return redact_pii
    return load_plugin(spec, setting)
