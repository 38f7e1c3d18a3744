"""A version may hold nothing that runs code when it is loaded: native libraries (by name or
by their first bytes), ONNX Runtime GenAI settings that load one, and, unless the operator
allowed it for the model, transformers remote code (`auto_map`, Python files)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ErrorCode
from core.settings import StackSettings
from registry.errors import RegistryError
from registry.model_files import native_library_kind
from registry.service import Registry, open_registry
from registry.settings import RegistrySettings
from tests.native_code import LIBRARY, build_library, write_genai_config


def _refused(registry: Registry, folder: Path, match: str, **fields) -> RegistryError:
    with pytest.raises(RegistryError, match=match) as err:
        registry.register("demo", folder, **fields)
    assert err.value.code is ErrorCode.INVALID and err.value.param == "source_dir"
    assert str(folder) not in err.value.message
    assert registry.list_models() == []
    assert not any(p.is_file() for p in (registry.artifacts.root / "blobs").rglob("*"))
    return err.value


def test_a_folder_with_a_native_library_is_refused_and_nothing_is_registered(
    registry: Registry, model_dir: Path, tmp_path: Path
) -> None:
    build_library(model_dir / LIBRARY, tmp_path / "marker")
    error = _refused(registry, model_dir, r"libevil.so is a native library \(ELF\)")
    assert "remove it" in error.message


def test_an_elf_file_renamed_to_weights_bin_is_refused(
    registry: Registry, model_dir: Path, tmp_path: Path
) -> None:
    build_library(tmp_path / LIBRARY, tmp_path / "marker")
    shutil.copyfile(tmp_path / LIBRARY, model_dir / "weights.bin")
    # Allowing pickles does not let a library through under a weights name.
    _refused(registry, model_dir, r"weights.bin is a native library \(ELF\)", allow_pickle=True)
    (model_dir / "weights.bin").unlink()
    shutil.copyfile(tmp_path / LIBRARY, model_dir / "tokenizer" / "merges.txt")
    _refused(registry, model_dir, r"tokenizer/merges.txt is a native library \(ELF\)")


def _pe_image() -> bytes:
    """The start of a PE image: the DOS header, whose e_lfanew points at the PE signature."""
    header = bytearray(b"MZ" + bytes(126))
    header[0x3C:0x40] = (0x80).to_bytes(4, "little")
    return bytes(header) + b"PE\0\0" + bytes(64)


@pytest.mark.parametrize(
    ("name", "data", "kind"),
    [
        pytest.param("model.safetensors", _pe_image(), "PE", id="pe-image"),
        pytest.param("model.safetensors", b"\xcf\xfa\xed\xfe" + bytes(60), "Mach-O", id="mach-o"),
        pytest.param(
            "model.safetensors", b"\xca\xfe\xba\xbe\0\0\0\2" + bytes(56), "Mach-O", id="fat"
        ),
        pytest.param(
            "Tool.class", b"\xca\xfe\xba\xbe\0\0\0\x34" + bytes(56), None, id="java-class"
        ),
        pytest.param("helper.dylib", b"anything", ".dylib", id="dylib"),
        pytest.param("helper.DLL", b"anything", ".DLL", id="dll"),
        pytest.param("libhelper.so.1.2", b"anything", ".so.1.2", id="versioned-so"),
        # A safetensors file whose header length happens to start with the bytes "MZ".
        pytest.param(
            "model.safetensors",
            (0x5A4D).to_bytes(8, "little") + b'{"a": 1}' + bytes(64),
            None,
            id="safetensors-starting-with-MZ",
        ),
        pytest.param("config.json", b'{"model_type": "llama"}', None, id="json"),
    ],
)
def test_native_libraries_are_told_by_their_bytes_and_names(
    tmp_path: Path, name: str, data: bytes, kind: str | None
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    assert native_library_kind(path) == kind


@pytest.mark.parametrize(
    ("options", "setting"),
    [
        ({"custom_ops_library": LIBRARY}, "model.decoder.session_options.custom_ops_library"),
        (
            {"provider_options": [{"qnn": {"backend_path": "libQnnHtp.so"}}]},
            "model.decoder.session_options.provider_options[0].qnn.backend_path",
        ),
        (
            {"provider_options": [{"VitisAI": {"external_ep_libray": "/opt/ep"}}]},
            "model.decoder.session_options.provider_options[0].VitisAI.external_ep_libray",
        ),
        ({"some_future_entry": "/opt/lib/libx.so.2"}, "some_future_entry"),
    ],
)
def test_a_genai_config_that_loads_a_library_is_refused_at_registration(
    registry: Registry, tmp_path: Path, options: dict, setting: str
) -> None:
    folder = tmp_path / "onnx"
    write_genai_config(folder, **options)
    (folder / "model.onnx").write_bytes(b"onnx")
    error = _refused(registry, folder, "genai_config.json sets", format="onnx")
    assert setting in error.message and "loads a native library" in error.message


def test_a_plain_genai_config_registers(registry: Registry, tmp_path: Path) -> None:
    folder = tmp_path / "onnx"
    write_genai_config(folder, intra_op_num_threads=2, provider_options=[{"cpu": {}}])
    assert registry.register("demo", folder, format="onnx").ref == "demo:1"


def _with_auto_map(model_dir: Path, file: str) -> Path:
    path = model_dir / file
    config = json.loads(path.read_text()) if path.is_file() else {}
    config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig"}
    path.write_text(json.dumps(config))
    return model_dir


@pytest.mark.parametrize(
    ("file", "reason"),
    [
        ("config.json", "config.json has an auto_map"),
        ("tokenizer_config.json", "tokenizer_config.json has an auto_map"),
        ("configuration_custom.py", "configuration_custom.py is Python code"),
    ],
)
def test_a_remote_code_folder_is_refused_unless_its_model_is_allowed(
    settings: StackSettings, model_dir: Path, file: str, reason: str
) -> None:
    if file.endswith(".py"):
        (model_dir / file).write_text("print('ran')\n")
    else:
        _with_auto_map(model_dir, file)
    registry = open_registry(settings, RegistrySettings(promotion_gate=None))
    error = _refused(registry, model_dir, reason)
    assert "LLMOPS_TRUST_REMOTE_CODE" in error.message
    allowing = open_registry(settings, RegistrySettings(trust_remote_code=["other", "demo"]))
    assert allowing.register("demo", model_dir).ref == "demo:1"
    with pytest.raises(RegistryError, match=reason):
        allowing.register("third", model_dir)


def test_the_allowed_models_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, settings: StackSettings
) -> None:
    monkeypatch.setenv("LLMOPS_TRUST_REMOTE_CODE", "demo, other")
    registry = open_registry(settings)
    assert registry.trusts_remote_code("demo") and registry.trusts_remote_code("other")
    assert not registry.trusts_remote_code("third")
    monkeypatch.delenv("LLMOPS_TRUST_REMOTE_CODE")
    assert not open_registry(settings).trusts_remote_code("demo")


def test_the_command_line_refuses_a_native_library_in_one_line(
    settings: StackSettings, model_dir: Path, tmp_path: Path
) -> None:
    build_library(model_dir / "weights.bin", tmp_path / "marker")
    env = {
        **os.environ,
        "LLMOPS_HOME": str(settings.home),
        "LLMOPS_DATABASE_URL": settings.resolved_database_url,
    }
    command = [sys.executable, "-m", "registry", "register", "demo", str(model_dir)]
    result = subprocess.run([*command, "--allow-pickle"], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "llm-registry: error: weights.bin is a native library (ELF), which runs code in every "
        "server and device that loads the model; a version holds weights, configs and "
        "tokenizer files only: remove it"
    ]
    assert open_registry(settings).list_models() == []
