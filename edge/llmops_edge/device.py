"""A device folder, which `llm-edge enroll` makes and `llm-edge sync` keeps up to date:

    device.json             the enrolment: device id, gateway, the pinned public key, the API
                            key (readable by its owner only), the newest manifest date seen
    versions/<hex>/         one bundle per artifact digest; its files are read-only
    versions/<hex>.json     the signed manifest it was installed from
    current -> versions/<hex>     the bundle that runs; replaced atomically (os.replace)
    previous -> versions/<hex>    the bundle `llm-edge rollback` goes back to

Bundles are never changed in place: a new one is put together in `versions/.staging-*` and
renamed into place before `current` moves, so a reader of `current` sees one whole bundle."""

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from llmops_edge.errors import EdgeError
from llmops_edge.manifest import Manifest, PublicKey, verify_bundle

DEVICE_FILE = "device.json"
CURRENT = "current"
PREVIOUS = "previous"
STAGING_PREFIX = ".staging-"


def write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, readable by its owner only."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """Make renames in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Device:
    root: Path
    device_id: str
    gateway: str
    public_key: PublicKey
    api_key: str | None
    last_issued_at: int = 0  # the newest manifest's `issued_at`; older ones are replays

    @classmethod
    def load(cls, root: Path) -> "Device":
        path = root / DEVICE_FILE
        try:
            data = json.loads(path.read_text())
            return cls(
                root=root,
                device_id=data["device_id"],
                gateway=data["gateway"],
                public_key=PublicKey.from_pem(data["public_key"]),
                api_key=data.get("api_key"),
                last_issued_at=int(data.get("last_issued_at", 0)),
            )
        except FileNotFoundError:
            raise EdgeError(
                f"{root} is not an enrolled device folder; run `llm-edge enroll` first"
            ) from None
        except (ValueError, KeyError, TypeError) as err:
            raise EdgeError(f"{path} is damaged ({err!r}); enroll the device again") from None

    def save(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.versions.mkdir(exist_ok=True)
        data = {
            "device_id": self.device_id,
            "gateway": self.gateway,
            "public_key": self.public_key.pem,
            "fingerprint": self.public_key.fingerprint,
            "api_key": self.api_key,
            "last_issued_at": self.last_issued_at,
        }
        write_private(self.root / DEVICE_FILE, json.dumps(data, indent=2))

    def saw(self, manifest: Manifest) -> "Device":
        """This device, having accepted `manifest`."""
        return replace(self, last_issued_at=max(self.last_issued_at, manifest.issued_at))

    @property
    def versions(self) -> Path:
        return self.root / "versions"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Held while a sync or rollback changes the folder; a second one is refused."""
        with (self.root / ".lock").open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise EdgeError(
                    f"another llm-edge sync or rollback is changing {self.root}; try again "
                    "when it is done"
                ) from None
            yield

    def bundle(self, link: str) -> Path | None:
        """The bundle folder `current` or `previous` points at, if any."""
        path = self.root / link
        if not path.is_symlink():
            return None
        folder = path.resolve()
        return folder if folder.parent == self.versions.resolve() and folder.is_dir() else None

    def manifest_of(self, folder: Path) -> Manifest:
        """The manifest `folder` was installed from, verified again."""
        try:
            document = json.loads((self.versions / f"{folder.name}.json").read_text())
        except (OSError, ValueError) as err:
            raise EdgeError(f"the manifest of bundle {folder.name} is unreadable: {err}") from None
        return verify_bundle(document, self.public_key)

    def record(self, manifest: Manifest, document: Any) -> None:
        write_private(self.versions / f"{manifest.folder_name}.json", json.dumps(document))

    def point(self, link: str, folder: Path | None) -> None:
        """Move the link `current` or `previous` to `folder` in one rename (None: remove it)."""
        path = self.root / link
        if folder is None:
            path.unlink(missing_ok=True)
        else:
            tmp = self.root / f".{link}.tmp"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(Path("versions") / folder.name)
            os.replace(tmp, path)
        sync_folder(self.root)

    def prune(self) -> None:
        """Remove bundles neither link points at, and what interrupted syncs left."""
        keep = {f.name for f in (self.bundle(CURRENT), self.bundle(PREVIOUS)) if f is not None}
        for path in self.versions.iterdir():
            name = path.name.removesuffix(".json")
            if name in keep:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
