"""The one parser of model references."""

import re

import pytest

from core.errors import ErrorCode, StackError
from core.refs import (
    REF_PATTERN,
    ModelRef,
    fine_tuned_name,
    parse_ref,
    validate_alias,
    validate_name,
)


@pytest.mark.parametrize("name", ["demo", "Llama-3.1-8B", "a", "x_y.z", "9lives", "a..b"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "empty"),
        ("../x", "invalid model name"),
        ("a/b", "invalid model name"),
        (".hidden", "starting with a letter or digit"),
        ("x" * 129, "129 characters long; the limit is 128"),
        ("demo space", "invalid model name"),
    ],
)
def test_invalid_names(name: str, fragment: str) -> None:
    with pytest.raises(StackError) as err:
        validate_name(name)
    assert err.value.code is ErrorCode.INVALID
    assert fragment in err.value.message


@pytest.mark.parametrize("alias", ["", "Prod", "1st", "a/b", "x" * 65])
def test_invalid_aliases(alias: str) -> None:
    with pytest.raises(StackError, match="invalid alias"):
        validate_alias(alias)


def test_parse_refs() -> None:
    assert parse_ref("demo") == ModelRef("demo", alias="production")
    assert parse_ref("demo@staging") == ModelRef("demo", alias="staging")
    assert parse_ref("demo:3") == ModelRef("demo", version=3)
    assert str(parse_ref("demo:3")) == "demo:3"
    name = fine_tuned_name("demo", "rev", "ftjob-abc123")
    assert name == "ft:demo:rev:ftjob-abc123"
    assert parse_ref(name) == ModelRef("demo", fine_tuned=name)
    assert str(parse_ref(name)) == name
    assert parse_ref("ft:demo::ftjob-1").name == "demo"


@pytest.mark.parametrize(
    "ref",
    [
        "demo:",
        "demo:0",
        "demo:0001",
        "demo:x",
        "demo:-1",
        "../x:1",
        "demo@",
        "ft:demo:rev",
        "ft:x",
        "ft:../x:rev:ftjob-1",
        "ft:demo:Rev:ftjob-1",
        "ft:demo:rev:",
        "ft:demo:rev:job:extra",
    ],
)
def test_bad_refs(ref: str) -> None:
    with pytest.raises(StackError) as err:
        parse_ref(ref)
    assert err.value.code is ErrorCode.INVALID


@pytest.mark.parametrize(
    "ref",
    ["demo", "demo:7", "demo@staging", "ft:demo:rev:ftjob-1", "ft:demo::ftjob-1", "ft:3", "a..b"],
)
def test_the_openapi_pattern_accepts_what_the_parser_accepts(ref: str) -> None:
    parse_ref(ref)
    assert re.fullmatch(REF_PATTERN, ref)


@pytest.mark.parametrize("ref", ["demo:0", "demo:", "ft:demo:Rev:ftjob-1", "x" * 129, "Demo@A"])
def test_the_openapi_pattern_refuses_what_the_parser_refuses(ref: str) -> None:
    with pytest.raises(StackError):
        parse_ref(ref)
    assert not re.fullmatch(REF_PATTERN, ref)
