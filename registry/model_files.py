"""What a model version may hold. A version is data that every server and device loads, so
nothing in it may make a loader run code: native libraries (whatever their names), ONNX
Runtime GenAI settings that load a library, and, unless the operator allowed it for the
model, the Python code that transformers imports for `auto_map` (`trust_remote_code`)."""

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import ErrorCode
from registry.errors import RegistryError

GENAI_CONFIG = "genai_config.json"
_NATIVE_NAME = re.compile(r".*(\.(?:so(?:\.\d+)*|dylib|dll))", re.IGNORECASE)
# Mach-O, 32 and 64-bit, in both byte orders; universal (fat) Mach-O, always big-endian.
_MACH_O = (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe")
_FAT_MACH_O = (b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbf")
# Settings that make ONNX Runtime (GenAI) load a library: the custom operators library of any
# session_options, and execution-provider options (QNN's backend, TensorRT plugins, VitisAI's
# external EP). Keys that merely name one of these words are refused too.
_GENAI_CODE_KEYS = frozenset(
    {"custom_ops_library", "backend_path", "trt_extra_plugin_lib_paths", "external_ep_libray"}
)
_GENAI_CODE_KEY_WORDS = re.compile(r"librar|libray|lib_path|plugin", re.IGNORECASE)
_CONFIG_NAME = re.compile(r".*config\.json")  # config.json, tokenizer_config.json, ...


def native_library_kind(path: Path) -> str | None:
    """What kind of native library `path` is ("ELF", "Mach-O", "PE", or its library suffix
    such as ".so.1"), judged by its first bytes, then by its name; None for any other file."""
    with path.open("rb") as file:
        head = file.read(64)
        if head[:4] == b"\x7fELF":
            return "ELF"
        # A fat binary's magic is a Java class file's too; there the next word is a class
        # file version (45 and up), here a count of architectures.
        if head[:4] in _MACH_O or (
            head[:4] in _FAT_MACH_O and 0 < int.from_bytes(head[4:8], "big") < 45
        ):
            return "Mach-O"
        # A PE image (.dll, .exe): the DOS stub's "MZ" and, at the offset it gives, "PE\0\0".
        # "MZ" alone is too common a start (a safetensors header length can begin with it).
        if head[:2] == b"MZ" and len(head) == 64:
            file.seek(int.from_bytes(head[60:64], "little"))
            if file.read(4) == b"PE\0\0":
                return "PE"
    named = _NATIVE_NAME.fullmatch(path.name)
    return named.group(1) if named else None


def _walk_keys(value: Any, where: str) -> Iterator[tuple[str, str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            yield path, str(key), item
            yield from _walk_keys(item, path)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk_keys(item, f"{where}[{i}]")


def genai_code_settings(config: Any) -> list[str]:
    """The settings of a parsed genai_config.json that load native code, as dotted paths
    (`model.decoder.session_options.custom_ops_library`), including any setting whose value
    names a native library file."""
    return [
        path
        for path, key, value in _walk_keys(config, "")
        if key in _GENAI_CODE_KEYS
        or _GENAI_CODE_KEY_WORDS.search(key)
        or (isinstance(value, str) and _NATIVE_NAME.fullmatch(value.strip()))
    ]


def genai_config_problem(path: Path) -> str | None:
    """Why the ONNX Runtime GenAI config at `path` must not be loaded ("sets ..., which ..."),
    or None: loaders check it before they hand a folder to the runtime, however the folder came
    to be there."""
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return "is not valid JSON"
    found = genai_code_settings(config)
    if found:
        return (
            f"sets {', '.join(found[:5])}, which loads a native library into the "
            "process that runs the model; remove the setting (the stack runs ONNX models on "
            "ONNX Runtime's own operators and providers)"
        )
    return None


def _remote_code_reason(relpath: str, path: Path) -> str | None:
    if path.suffix.lower() == ".py":
        return f"{relpath} is Python code"
    if not _CONFIG_NAME.fullmatch(path.name.lower()):
        return None
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return None  # not a config transformers could read either
    if any(key == "auto_map" for _, key, _ in _walk_keys(config, "")):
        return f"{relpath} has an auto_map, which makes transformers import code from the folder"
    return None


def check_version_files(folder: Path, name: str, *, trust_remote_code: bool) -> None:
    """Refuse a folder about to be registered as a version of model `name` if loading it could
    run code it carries (see the module's docstring). INVALID names the first such file."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        relpath = path.relative_to(folder).as_posix()
        kind = native_library_kind(path)
        if kind is not None:
            raise RegistryError(
                ErrorCode.INVALID,
                f"{relpath} is a native library ({kind}), which runs code in every server and "
                "device that loads the model; a version holds weights, configs and tokenizer "
                "files only: remove it",
                param="source_dir",
            )
        if path.name == GENAI_CONFIG and (problem := genai_config_problem(path)):
            raise RegistryError(ErrorCode.INVALID, f"{relpath} {problem}", param="source_dir")
        if not trust_remote_code and (reason := _remote_code_reason(relpath, path)):
            raise RegistryError(
                ErrorCode.INVALID,
                f"{reason}: a version of {name!r} may carry code that transformers runs "
                "(trust_remote_code) only if the registry's operator allows it for that model "
                "(LLMOPS_TRUST_REMOTE_CODE); remove it, or ask for that",
                param="source_dir",
            )
