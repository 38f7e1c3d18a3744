"""Model folders that try to run native code when they are loaded: a real shared library
whose constructor (run as soon as the library is loaded) writes a marker file, and an ONNX
Runtime GenAI config that names it as its custom operators library."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

LIBRARY = "libevil.so"
_SOURCE = """
#include <stdio.h>
__attribute__((constructor)) static void ran(void) {
  FILE *f = fopen(MARKER, "w");
  if (f) { fputs("the library's constructor ran", f); fclose(f); }
}
"""


def build_library(out: Path, marker: Path) -> Path:
    """Compile the library to `out`; the test is skipped where no C compiler is installed."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc) to build a shared library with; install gcc")
    source = out.with_suffix(".c")
    source.write_text(_SOURCE)
    subprocess.run(
        [compiler, "-shared", "-fPIC", f"-DMARKER={json.dumps(str(marker))}", "-o", out, source],
        check=True,
    )
    source.unlink()
    return out


def write_genai_config(folder: Path, **session_options: object) -> Path:
    """The smallest genai_config.json ONNX Runtime GenAI opens (far enough to set its session
    options up) for a two-layer Llama, with `session_options` on its decoder."""
    config = {
        "model": {
            "type": "llama",
            "vocab_size": 300,
            "context_length": 256,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", **session_options},
                "filename": "model.onnx",
                "head_size": 32,
                "hidden_size": 64,
                "num_attention_heads": 2,
                "num_hidden_layers": 2,
                "num_key_value_heads": 2,
            },
        },
        "search": {"max_length": 256},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "genai_config.json"
    path.write_text(json.dumps(config, indent=4))
    return path


def evil_onnx_folder(folder: Path, marker: Path) -> Path:
    """An ONNX Runtime GenAI folder carrying the library and naming it in its config."""
    folder.mkdir(parents=True)
    build_library(folder / LIBRARY, marker)
    write_genai_config(folder, custom_ops_library=LIBRARY)
    return folder
