"""Content-addressed artifact store under `LLMOPS_HOME/artifacts`.

Each file is stored once as a blob named by its sha256. A version's artifact is a manifest
listing (relative path, sha256, size) for each of its files; the artifact digest is the sha256
of the manifest's canonical JSON, so the same files always give the same digest.
"""

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from core.digests import bytes_digest, hash_file
from core.errors import ErrorCode
from registry.errors import RegistryError

# Files that hold pickled objects, which run code when loaded.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
_CHUNK = 1 << 20
log = logging.getLogger(__name__)
# `on_progress(bytes_done, bytes_in_all)`: how a command line shows a long copy.
OnProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class ManifestEntry:
    path: str  # POSIX path relative to the artifact root
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    files: tuple[ManifestEntry, ...]

    def to_json(self) -> str:
        entries = [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files]
        return json.dumps({"files": entries}, sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        return bytes_digest(self.to_json().encode())

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


class _Meter:
    """Bytes read and written so far out of `total`, reported to `on_progress`."""

    def __init__(self, on_progress: OnProgress | None, total: int):
        self.on_progress, self.total, self.done = on_progress, total, 0
        self.advance(0)

    def advance(self, size: int) -> None:
        self.done += size
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)


def _copy(source: IO[bytes], target: IO[bytes], meter: _Meter) -> None:
    while chunk := source.read(_CHUNK):
        target.write(chunk)
        meter.advance(len(chunk))


def _walk(source_dir: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(source_dir.rglob("*")):
        if path.is_symlink():
            raise RegistryError(
                ErrorCode.INVALID,
                f"{path} is a symbolic link; register a directory of regular files",
                param="source_dir",
            )
        if path.is_file():
            yield path.relative_to(source_dir).as_posix(), path


def _check_copy(
    entry: ManifestEntry, path: Path, on_chunk: Callable[[int], None] | None = None
) -> None:
    if hash_file(path, on_chunk) != (entry.sha256, entry.size):
        raise RegistryError(
            ErrorCode.INTEGRITY,
            f"artifact file {entry.path} does not match its digest: the stored copy (blob "
            f"{entry.sha256[:12]}) "
            "was modified or corrupted",
        )


def _sync(file: IO) -> None:
    file.flush()
    os.fsync(file.fileno())


def _replace(source: str | Path, target: Path) -> None:
    """Rename into place, and make the rename itself durable."""
    os.replace(source, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _write_atomically(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as tmp:
        tmp.write(text)
        _sync(tmp)
    _replace(tmp.name, path)


def _stat_stamp(folder: Path) -> str:
    """The relative path, size and modification time of every file under `folder`."""
    entries = [
        [p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns]
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]
    return json.dumps(entries)


def _check_relative(path: str) -> str:
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or ".." in parts:
        raise RegistryError(ErrorCode.INTEGRITY, f"manifest entry {path!r} escapes the artifact")
    return path


def scan_directory(
    source_dir: Path,
    *,
    allow_pickle: bool = False,
    on_chunk: Callable[[int], None] | None = None,
) -> Manifest:
    """Hash every file under `source_dir` into a manifest, refusing pickle-based weights
    unless `allow_pickle`; `on_chunk(n)` after each n bytes hashed."""
    if not source_dir.is_dir():
        raise RegistryError(
            ErrorCode.INVALID, f"{source_dir} is not a directory", param="source_dir"
        )
    entries = []
    for relpath, path in _walk(source_dir):
        if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
            raise RegistryError(
                ErrorCode.INVALID,
                f"{relpath} is a pickle-based file, which can run code when loaded; convert the "
                "weights to safetensors, or pass allow_pickle (--allow-pickle) if you trust it",
                param="source_dir",
            )
        sha, size = hash_file(path, on_chunk)
        entries.append(ManifestEntry(relpath, sha, size))
    if not entries:
        raise RegistryError(ErrorCode.INVALID, f"{source_dir} holds no files", param="source_dir")
    return Manifest(tuple(entries))


class ArtifactStore:
    def __init__(self, home: Path):
        self.home = home
        self.root = home / "artifacts"
        self._blobs = self.root / "blobs"
        self._manifests = self.root / "manifests"

    def blob_path(self, sha256: str) -> Path:
        return self._blobs / sha256[:2] / sha256

    def manifest_path(self, digest: str) -> Path:
        return self._manifests / f"{digest.removeprefix('sha256:')}.json"

    def put(
        self,
        source_dir: Path,
        *,
        allow_pickle: bool = False,
        on_progress: OnProgress | None = None,
    ) -> tuple[Manifest, str]:
        """Copy the files of `source_dir` in; return the manifest and its path relative to home.

        A file changed while it is copied is caught: the stored blob is re-hashed. A blob
        already stored is trusted only if it still hashes to its name (a damaged one is
        replaced), and every file is on disk (fsync) before it is renamed into place.
        `on_progress` counts each byte three times: hashed, copied, hashed again."""
        size = sum(p.stat().st_size for _, p in _walk(source_dir)) if source_dir.is_dir() else 0
        meter = _Meter(on_progress, 3 * size)
        manifest = scan_directory(source_dir, allow_pickle=allow_pickle, on_chunk=meter.advance)
        for entry in manifest.files:
            blob = self.blob_path(entry.sha256)
            if blob.exists() and hash_file(blob, meter.advance) == (entry.sha256, entry.size):
                meter.advance(entry.size)  # the copy it did not need
                continue
            blob.parent.mkdir(parents=True, exist_ok=True)
            with (
                tempfile.NamedTemporaryFile(dir=blob.parent, delete=False) as tmp,
                (source_dir / entry.path).open("rb") as src,
            ):
                _copy(src, tmp, meter)
                _sync(tmp)
            if hash_file(Path(tmp.name), meter.advance)[0] != entry.sha256:
                os.unlink(tmp.name)
                raise RegistryError(
                    ErrorCode.CONFLICT, f"{entry.path} changed while it was being registered"
                )
            _replace(tmp.name, blob)
        path = self.manifest_path(manifest.digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            _write_atomically(path, manifest.to_json())
        return manifest, path.relative_to(self.home).as_posix()

    def cached_copy(self, digest: str, path: Path) -> Path:
        """A verified copy of `digest`'s files at `path`, fetched once. The sizes and times of
        its files are recorded when it is verified; a copy whose files changed since (edited,
        added, removed) is verified again, and fetched again when it no longer matches.

        Safe across processes: a fetch stages its files and renames them into place, and a
        copy that another process put there first is used as it is."""
        stamp = path.parent / f".{path.name}.verified"
        if path.is_dir() and stamp.is_file() and stamp.read_text() == _stat_stamp(path):
            return path
        if path.is_dir():
            try:
                self._check_copy_dir(digest, path)
            except RegistryError:
                log.warning(
                    "the cached copy %s does not match its artifact; fetching it again", path
                )
                shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            try:
                self.fetch(digest, path)
            except (RegistryError, OSError):
                if not (path.is_dir() and any(path.iterdir())):
                    raise
        _write_atomically(stamp, _stat_stamp(path))
        return path

    def _check_copy_dir(self, digest: str, path: Path) -> None:
        manifest = self.load_manifest(digest)
        found = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
        if found != {e.path for e in manifest.files}:
            raise RegistryError(ErrorCode.INTEGRITY, f"{path.name} holds other files")
        for entry in manifest.files:
            _check_copy(entry, path / entry.path)

    def load_manifest(self, digest: str) -> Manifest:
        """Read the manifest of `digest`, checking that it still hashes to it."""
        path = self.manifest_path(digest)
        try:
            data = json.loads(path.read_text())
            manifest = Manifest(
                tuple(
                    ManifestEntry(_check_relative(f["path"]), f["sha256"], f["size"])
                    for f in data["files"]
                )
            )
        except FileNotFoundError:
            raise RegistryError(
                ErrorCode.INTEGRITY, f"the manifest of {digest} is missing from the store"
            ) from None
        except (ValueError, KeyError, TypeError):
            raise RegistryError(
                ErrorCode.INTEGRITY, f"the manifest of {digest} is unreadable"
            ) from None
        if manifest.digest != digest:
            raise RegistryError(ErrorCode.INTEGRITY, f"the manifest of {digest} was modified")
        return manifest

    def _check_blob(self, entry: ManifestEntry) -> Path:
        blob = self.blob_path(entry.sha256)
        if not blob.is_file():
            raise RegistryError(
                ErrorCode.INTEGRITY,
                f"artifact file {entry.path} is missing from the store (blob {entry.sha256[:12]})",
            )
        return blob

    def verify(self, digest: str) -> Manifest:
        """Re-hash every stored file of `digest`; raise INTEGRITY naming the first bad one."""
        manifest = self.load_manifest(digest)
        for entry in manifest.files:
            blob = self._check_blob(entry)
            _check_copy(entry, blob)
        return manifest

    def verified_file(self, digest: str, path: str) -> Path:
        """The stored blob of file `path` of `digest`, checked against its digest."""
        entry = next((f for f in self.load_manifest(digest).files if f.path == path), None)
        if entry is None:
            raise RegistryError(
                ErrorCode.NOT_FOUND,
                f"the artifact has no file {path!r}; list its files to see what it holds",
                param="path",
                api_code="file_not_found",
            )
        blob = self._check_blob(entry)
        _check_copy(entry, blob)
        return blob

    def fetch(self, digest: str, dest: Path, on_progress: OnProgress | None = None) -> Manifest:
        """Copy the files of `digest` into the new directory `dest`, verifying each as it is
        copied. Nothing is left at `dest` when verification fails. `on_progress` counts each
        byte twice: copied, then hashed."""
        if dest.exists() and any(dest.iterdir()):
            raise RegistryError(
                ErrorCode.INVALID, f"{dest} is not empty; fetch into a new directory", param="dest"
            )
        manifest = self.load_manifest(digest)
        meter = _Meter(on_progress, 2 * manifest.total_size)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
        try:
            for entry in manifest.files:
                blob = self._check_blob(entry)
                target = staging / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                with blob.open("rb") as src, target.open("wb") as out:
                    _copy(src, out, meter)
                _check_copy(entry, target, meter.advance)
            if dest.exists():
                dest.rmdir()
            os.replace(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return manifest
