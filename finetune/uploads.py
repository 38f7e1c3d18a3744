"""Uploaded files, streamed to disk in chunks under a size cap and hashed on the way."""

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fastapi import UploadFile

from finetune.errors import file_too_large

_CHUNK = 1 << 20


@dataclass(frozen=True)
class StagedFile:
    path: Path  # a temporary file in the destination folder; the caller renames or removes it
    sha256: str
    size: int


async def stage_upload(upload: UploadFile, folder: Path, max_bytes: int) -> StagedFile:
    """Write `upload` to a new temporary file in `folder`; 413 once it passes `max_bytes`
    (nothing is left behind)."""
    folder.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    handle, staged = tempfile.mkstemp(dir=folder, prefix=".upload-")
    try:
        with os.fdopen(handle, "wb") as out:
            while chunk := await upload.read(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise file_too_large(max_bytes)
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    return StagedFile(Path(staged), "sha256:" + digest.hexdigest(), size)
