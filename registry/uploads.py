"""Versions sent over HTTP: a tar archive of the version's folder, unpacked safely (regular
files and folders only, every path inside the archive, at most a set number of bytes in all)
before it is registered."""

import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from core.errors import ErrorCode
from registry.errors import RegistryError

_CHUNK = 1 << 20


def _refuse(message: str) -> RegistryError:
    return RegistryError(ErrorCode.INVALID, message, param="archive")


def unpack_archive(archive: BinaryIO, dest: Path, max_bytes: int) -> None:
    """Unpack a tar stream (plain, gzip, bzip2 or xz) into the empty folder `dest`. Links,
    devices and paths that leave the folder are refused, and so is an archive whose files hold
    more than `max_bytes` in all (TOO_LARGE). The folder's own entry (`.`, which
    `tar -C DIR -cf x.tar .` writes) is accepted."""
    unpacked = 0
    try:
        with tarfile.open(fileobj=archive, mode="r|*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if member.isdir() and not parts:
                    continue  # "." or "./": the version folder itself
                if not parts or member.name.startswith("/") or ".." in parts:
                    raise _refuse(f"archive entry {member.name[:200]!r} leaves the version folder")
                target = dest.joinpath(*parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    unpacked += member.size
                    if unpacked > max_bytes:
                        raise RegistryError(
                            ErrorCode.TOO_LARGE,
                            f"the archive unpacks to more than {max_bytes} bytes, the most this "
                            "registry accepts for one version (LLMOPS_MAX_UNPACKED_BYTES); "
                            "upload a smaller version, or ask the operator to raise the limit",
                            param="archive",
                        )
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None
                    with target.open("wb") as out:
                        shutil.copyfileobj(source, out, _CHUNK)
                else:
                    raise _refuse(
                        f"archive entry {member.name[:200]!r} is not a regular file or folder; "
                        "archives hold the version's files only"
                    )
    except tarfile.TarError as err:
        raise _refuse(f"the archive is not a readable tar file ({err})") from None
