"""Content digests: `sha256:<hex>` strings that name files and records across the stack."""

import hashlib
from collections.abc import Callable
from pathlib import Path

_CHUNK = 1 << 20


def hash_file(path: Path, on_chunk: Callable[[int], None] | None = None) -> tuple[str, int]:
    """The sha256 hex digest and size of a file, read in chunks; `on_chunk(n)` after each
    chunk of n bytes."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
    return digest.hexdigest(), size


def file_digest(path: Path) -> str:
    """`sha256:<hex>` of a file's bytes."""
    return "sha256:" + hash_file(path)[0]


def bytes_digest(data: bytes) -> str:
    """`sha256:<hex>` of some bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
