import pytest

from registry.errors import ErrorCode, RegistryError
from registry.names import ModelRef, parse_ref, validate_alias, validate_name


@pytest.mark.parametrize("name", ["demo", "Llama-3.1-8B", "a", "x_y.z", "9lives"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "empty"),
        ("../x", "invalid model name"),
        ("a/b", "invalid model name"),
        ("a..b", "no '..'"),
        (".hidden", "starting with a letter or digit"),
        ("x" * 129, "129 characters long; the limit is 128"),
        ("demo space", "invalid model name"),
    ],
)
def test_invalid_names(name: str, fragment: str) -> None:
    with pytest.raises(RegistryError) as err:
        validate_name(name)
    assert err.value.code is ErrorCode.INVALID
    assert fragment in err.value.message


@pytest.mark.parametrize("alias", ["", "Prod", "1st", "a/b", "x" * 65])
def test_invalid_aliases(alias: str) -> None:
    with pytest.raises(RegistryError, match="invalid alias"):
        validate_alias(alias)


def test_parse_refs() -> None:
    assert parse_ref("demo") == ModelRef("demo", alias="production")
    assert parse_ref("demo@staging") == ModelRef("demo", alias="staging")
    assert parse_ref("demo:3") == ModelRef("demo", version=3)
    assert str(parse_ref("demo:3")) == "demo:3"


@pytest.mark.parametrize("ref", ["demo:", "demo:0", "demo:x", "demo:-1", "../x:1", "demo@"])
def test_bad_refs(ref: str) -> None:
    with pytest.raises(RegistryError) as err:
        parse_ref(ref)
    assert err.value.code is ErrorCode.INVALID
