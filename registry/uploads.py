"""Versions sent over HTTP: a tar archive of the version's folder, unpacked safely (regular
files and folders only, every path inside the archive) before it is registered."""

import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from core.errors import ErrorCode
from registry.errors import RegistryError

_CHUNK = 1 << 20


def _refuse(message: str) -> RegistryError:
    return RegistryError(ErrorCode.INVALID, message, param="archive")


def unpack_archive(archive: BinaryIO, dest: Path) -> None:
    """Unpack a tar stream (plain, gzip, bzip2 or xz) into the empty folder `dest`. Links,
    devices and paths that leave the folder are refused."""
    try:
        with tarfile.open(fileobj=archive, mode="r|*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if not parts or member.name.startswith("/") or ".." in parts:
                    raise _refuse(f"archive entry {member.name[:200]!r} leaves the version folder")
                target = dest.joinpath(*parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isfile():
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
