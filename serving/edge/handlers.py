"""What the edge routes do. Who may do what:

- bundles and their files: admin keys, for models they may use; and device keys (made by
  `llm-serve edge add`, one per device), for their own device only: the signed manifest of
  the reference the device follows, and the files of the version that reference points at
  now. A file is found by its sha256 among the files of one registered ONNX version, never by
  a path, so no other file of the store can be reached;
- reports: a device key, for its own device and the reference it follows;
- the fleet (list, add, remove devices): admin keys.
The public key is public: any caller the gateway lets in may read it. A device key may call
nothing but these routes (`ApiKey.admits`), and has a rate limit (`DeviceRequest.rpm`)."""

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from core.callers import Caller
from core.errors import ErrorCode
from core.listing import ListPage, page
from core.refs import parse_ref
from registry.entities import ModelVersion, VersionFormat
from registry.service import Registry
from serving.config import EdgeConfig
from serving.edge.protocol import (
    BundleFileObject,
    BundleManifest,
    CreatedDevice,
    DeviceObject,
    DeviceReport,
    DeviceRequest,
    PublicKeyObject,
    SignedBundle,
)
from serving.edge.signing import BundleSigner
from serving.edge.store import Device, DeviceStore
from serving.errors import ServingError, model_not_found
from serving.keys import KeyStore

REQUIRED_FILE = "genai_config.json"  # an ONNX Runtime GenAI model folder


def _denied(message: str) -> ServingError:
    return ServingError(ErrorCode.PERMISSION_DENIED, message, api_code="insufficient_permissions")


def _stamp(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def device_object(device: Device) -> DeviceObject:
    return DeviceObject(
        id=device.id,
        model=device.model,
        key_id=device.key_id,
        version=device.version,
        bundle_digest=device.bundle_digest,
        status=device.status,  # type: ignore[arg-type]
        detail=device.detail,
        created_at=int(device.created_at.timestamp()),
        last_seen_at=_stamp(device.last_seen_at),
        removed_at=_stamp(device.removed_at),
    )


@dataclass
class EdgeHandlers:
    registry: Registry
    keys: KeyStore
    devices: DeviceStore
    signer: BundleSigner
    manifest_ttl_s: int = EdgeConfig().manifest_ttl_s

    def public_key(self) -> PublicKeyObject:
        return PublicKeyObject(key_id=self.signer.fingerprint, public_key=self.signer.public_pem)

    def _device_of(self, caller: Caller) -> Device | None:
        return self.devices.of_key(caller.key_id) if caller.key_id is not None else None

    def _fetcher(self, caller: Caller, model: str) -> Device | None:
        """The caller's device (None for an admin key) if it may fetch bundles of `model`'s
        name; a device key is checked against its own reference later, by what it asks."""
        if caller.key_id is None:
            raise _denied(
                "edge bundles need a device key (`llm-serve edge add DEVICE --model REF`) or "
                "an admin key, sent as 'Authorization: Bearer <key>'"
            )
        if caller.admin:
            if not caller.may_use(model):
                raise _denied(f"key {caller.name!r} may not fetch bundles of {model!r}")
            return None
        device = self._device_of(caller)
        if device is None:
            raise _denied(
                f"key {caller.name!r} is not a device key; bundles are for the keys "
                "`llm-serve edge add` makes, and for admin keys"
            )
        if parse_ref(model).name != parse_ref(device.model).name:
            raise _denied(
                f"key {caller.name!r} may not fetch bundles of {model!r}: device "
                f"{device.id!r} follows {device.model!r}"
            )
        return device

    def _onnx_version(self, caller: Caller, model: str) -> ModelVersion:
        version = self.registry.resolve(model)
        if not caller.sees_model(version.owner):
            raise model_not_found(model, "no such model is visible to this key")
        if version.format is not VersionFormat.ONNX:
            raise ServingError(
                ErrorCode.INVALID,
                f"{model} resolves to {version.ref}, which is {version.format.value}; an edge "
                "bundle is an ONNX version (make one with `llm-finetune export`)",
                param="model",
                api_code="not_an_edge_bundle",
            )
        return version

    def bundle(self, caller: Caller, model: str) -> SignedBundle:
        device = self._fetcher(caller, model)
        if device is not None and model != device.model:
            raise _denied(
                f"key {caller.name!r} may not fetch bundles of {model!r}: device "
                f"{device.id!r} follows {device.model!r}, and only that"
            )
        version = self._onnx_version(caller, model)
        files = self.registry.artifacts.load_manifest(version.artifact_digest).files
        if REQUIRED_FILE not in {f.path for f in files}:
            raise ServingError(
                ErrorCode.INVALID,
                f"{version.ref} has no {REQUIRED_FILE}, so ONNX Runtime GenAI cannot run it; "
                "export it with `llm-finetune export`",
                param="model",
                api_code="not_an_edge_bundle",
            )
        issued = time.time_ns() // 1_000_000
        manifest = BundleManifest(
            model=model,
            version=version.ref,
            artifact_digest=version.artifact_digest,
            files=[BundleFileObject(path=f.path, sha256=f.sha256, size=f.size) for f in files],
            issued_at=issued,
            expires_at=issued + 1000 * self.manifest_ttl_s,
            key_id=self.signer.fingerprint,
        )
        return SignedBundle(
            manifest=manifest, signature=self.signer.sign(manifest.model_dump(mode="json"))
        )

    def file(self, caller: Caller, version_ref: str, sha256: str) -> tuple[Path, str]:
        """The verified stored copy of the file with this digest in the version, and its
        name; only files of ONNX versions the caller may fetch."""
        device = self._fetcher(caller, version_ref)
        version = self._onnx_version(caller, version_ref)
        if device is not None and version.ref != (now := self.registry.resolve(device.model)).ref:
            raise _denied(
                f"key {caller.name!r} may not fetch bundles of {version.ref}: device "
                f"{device.id!r} follows {device.model!r}, which points at {now.ref} now (sync "
                "again for its manifest)"
            )
        manifest = self.registry.artifacts.load_manifest(version.artifact_digest)
        entry = next((f for f in manifest.files if f.sha256 == sha256), None)
        if entry is None:
            raise ServingError(
                ErrorCode.NOT_FOUND,
                f"{version.ref} has no file with sha256 {sha256}; its signed manifest lists "
                "its files",
                param="sha256",
                api_code="file_not_found",
            )
        blob = self.registry.artifacts.verified_file(version.artifact_digest, entry.path)
        return blob, Path(entry.path).name

    def me(self, caller: Caller) -> DeviceObject:
        device = self._device_of(caller)
        if device is None:
            raise _denied(
                "this is not a device key; `llm-serve edge add DEVICE --model REF` makes one"
            )
        return device_object(device)

    def report(self, caller: Caller, body: DeviceReport) -> DeviceObject:
        device = self._device_of(caller)
        if device is None:
            raise _denied("reports come from device keys (`llm-serve edge add`)")
        if device.id != body.device_id:
            raise _denied(f"this key belongs to device {device.id!r}, not {body.device_id!r}")
        if body.model != device.model:
            raise _denied(
                f"device {device.id!r} follows {device.model!r}, not {body.model!r}; "
                "`llm-serve edge add` sets what a device follows"
            )
        updated = self.devices.report(
            device.id,
            model=body.model,
            version=body.version,
            bundle_digest=body.bundle_digest,
            status=body.status,
            detail=body.detail,
        )
        return device_object(updated)

    def fleet(self, after: str | None, limit: int) -> ListPage[DeviceObject]:
        devices = [device_object(d) for d in self.devices.list_devices(after, limit)]
        return page(devices, limit, lambda d: d.id)

    def add(self, body: DeviceRequest) -> CreatedDevice:
        """A device and its API key: a device key, with the device's rate limit."""
        name = parse_ref(body.model).name
        key, secret = self.keys.create(f"edge:{body.id}", models=(name,), device=True, rpm=body.rpm)
        try:
            device = self.devices.add(body.id, body.model, key.id)
        except ServingError:
            self.keys.revoke(key.id)
            raise
        return CreatedDevice(**device_object(device).model_dump(), key=secret)

    def remove(self, device_id: str) -> DeviceObject:
        """Remove a device from the fleet and revoke its key."""
        device = self.devices.get(device_id)
        self.keys.revoke(device.key_id)
        return device_object(self.devices.remove(device_id))
