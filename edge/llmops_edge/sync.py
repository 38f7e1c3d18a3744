"""`llm-edge sync` and `llm-edge rollback`.

A sync asks the gateway for the signed manifest of the bundle an alias points at, refuses it
unless its signature verifies against the enrolled key (and it is for that alias, not older
than one already seen, and not expired), re-hashes the running bundle when the manifest names
it (a damaged file is fetched again), puts the new bundle together in a staging folder (files whose
digests are already on the device are reused, the others downloaded and checked against the
manifest), renames it into place and only then moves `current`, keeping the old one as
`previous`. Whatever fails before that last rename, the running bundle stays as it was."""

import hashlib
import os
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llmops_edge.client import GatewayClient
from llmops_edge.device import CURRENT, PREVIOUS, STAGING_PREFIX, Device
from llmops_edge.errors import EdgeError
from llmops_edge.manifest import BundleFile, Manifest, verify_bundle

_CHUNK = 1 << 20
CLOCK_SKEW_MS = 5 * 60 * 1000  # how far the device's clock may lag the gateway's
# `on_progress(bytes_in_place, bytes_in_all)` as a new bundle is put together.
OnProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class SyncResult:
    status: Literal["installed", "up-to-date"]
    manifest: Manifest
    folder: Path
    downloaded: tuple[str, ...] = ()  # paths fetched from the gateway
    reused: tuple[str, ...] = ()  # paths taken from bundles already on the device


def matches(path: Path, entry: BundleFile) -> bool:
    """Whether the file at `path` has the entry's size and sha256."""
    try:
        if path.stat().st_size != entry.size:
            return False
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == entry.sha256


def _intact(folder: Path, manifest: Manifest) -> bool:
    found = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    return found == {f.path for f in manifest.files} and all(
        matches(folder / f.path, f) for f in manifest.files
    )


def _local_files(device: Device) -> dict[str, Path]:
    """Files of the bundles on the device (current and previous), by sha256, as their
    manifests list them; each is checked again before it is reused."""
    found: dict[str, Path] = {}
    for link in (PREVIOUS, CURRENT):
        folder = device.bundle(link)
        if folder is None:
            continue
        try:
            manifest = device.manifest_of(folder)
        except EdgeError:
            continue
        found.update({f.sha256: folder / f.path for f in manifest.files})
    return found


def _place(source: Path, target: Path) -> None:
    """A hard link of a verified, read-only file (a copy where links are not possible)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
        target.chmod(0o444)


def _assemble(
    device: Device, client: GatewayClient, manifest: Manifest, on_progress: OnProgress | None
) -> SyncResult:
    local = _local_files(device)
    staging = Path(tempfile.mkdtemp(dir=device.versions, prefix=STAGING_PREFIX))
    downloaded, reused = [], []
    done, total = 0, sum(f.size for f in manifest.files)

    def advance(size: int) -> None:
        nonlocal done
        done += size
        if on_progress is not None:
            on_progress(done, total)

    try:
        for entry in manifest.files:
            target = staging / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            source = local.get(entry.sha256)
            if source is not None and matches(source, entry):
                _place(source, target)
                reused.append(entry.path)
                advance(entry.size)
                continue
            version = urllib.parse.quote(manifest.version, safe=":")
            client.download(
                f"/v1/edge/bundles/{version}/files/{entry.sha256}", target, entry, advance
            )
            target.chmod(0o444)
            local[entry.sha256] = target
            downloaded.append(entry.path)
        for path in staging.rglob("*"):
            if path.is_file():
                with path.open("rb") as f:
                    os.fsync(f.fileno())
        folder = device.versions / manifest.folder_name
        if folder.exists():  # a damaged copy: neither link points at an intact one
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SyncResult("installed", manifest, folder, tuple(downloaded), tuple(reused))


def sync(
    device: Device, client: GatewayClient, model: str, on_progress: OnProgress | None = None
) -> tuple[Device, SyncResult]:
    """Bring the device to the bundle `model` (an alias reference such as `demo-onnx@edge`)
    points at; the device as it is afterwards, and what was done. `on_progress` follows the
    bytes of a new bundle, reused or downloaded."""
    with device.locked():
        document = client.get_json(f"/v1/edge/bundles/{urllib.parse.quote(model, safe=':@')}")
        manifest = verify_bundle(document, device.public_key)
        if manifest.model != model:
            raise EdgeError(
                f"the gateway sent a bundle signed for {manifest.model!r}, not for {model!r}; "
                "refusing it"
            )
        if manifest.issued_at < device.last_issued_at:
            raise EdgeError(
                f"the gateway sent a manifest of {manifest.version} issued before one this "
                "device already accepted; refusing a replayed, older manifest"
            )
        if manifest.expires_at < time.time_ns() // 1_000_000 - CLOCK_SKEW_MS:
            raise EdgeError(
                f"the gateway sent a manifest of {manifest.version} that has expired; refusing "
                "it (a replayed manifest, or this device's clock is wrong)"
            )
        current = device.bundle(CURRENT)
        if (
            current is not None
            and current.name == manifest.folder_name
            and _intact(current, manifest)
        ):
            device = device.saw(manifest)
            device.save()
            return device, SyncResult("up-to-date", manifest, current)
        folder = device.versions / manifest.folder_name
        if folder.is_dir() and _intact(folder, manifest):
            result = SyncResult(
                "installed", manifest, folder, (), tuple(f.path for f in manifest.files)
            )
        else:
            result = _assemble(device, client, manifest, on_progress)
        device.record(manifest, document)
        if current is not None and current.name != result.folder.name:  # not a repair
            device.point(PREVIOUS, current)
        device.point(CURRENT, result.folder)
        device = device.saw(manifest)
        device.save()
        device.prune()
        return device, result


def rollback(device: Device) -> tuple[Manifest, Manifest]:
    """Swap `current` and `previous`: the manifests of the bundle left and the one now
    running. A second rollback goes forward again."""
    with device.locked():
        current, previous = device.bundle(CURRENT), device.bundle(PREVIOUS)
        if previous is None or current is None:
            raise EdgeError(f"{device.root} has no previous bundle to roll back to")
        left, running = device.manifest_of(current), device.manifest_of(previous)
        if not _intact(previous, running):
            raise EdgeError(
                f"the previous bundle ({running.version}) no longer matches its manifest; "
                "run sync instead"
            )
        device.point(PREVIOUS, current)
        device.point(CURRENT, previous)
        return left, running
