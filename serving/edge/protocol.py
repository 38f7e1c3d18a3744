"""The edge update channel's requests and objects. A bundle's manifest holds strings and
integers only, so that its canonical JSON (what is signed) is the same on both sides."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from core.refs import VERSION_REF_PATTERN
from serving.keys import MAX_RATE

# What a device follows: a model's alias or version (a fine-tuned adapter's name is no bundle).
FOLLOW_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(?::[1-9][0-9]{0,8}|@[a-z][a-z0-9_-]{0,63})?$"
DEVICE_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
MAX_DETAIL = 500
DEVICE_RPM = 120  # a device key's requests per minute unless given: a sync is a few dozen
ReportStatus = Literal["installed", "up-to-date", "rolled-back", "failed"]


class PublicKeyObject(BaseModel):
    object: Literal["edge.public_key"] = "edge.public_key"
    algorithm: Literal["ed25519"] = "ed25519"
    key_id: str = Field(description="sha256:<hex> of the raw public key: its fingerprint.")
    public_key: str = Field(description="The key in PEM (SubjectPublicKeyInfo).")


class BundleFileObject(BaseModel):
    path: str = Field(description="Where the file goes inside the bundle folder.")
    sha256: str = Field(description="Hex sha256 of its bytes; download it by this digest.")
    size: int


class BundleManifest(BaseModel):
    object: Literal["edge.bundle_manifest"] = "edge.bundle_manifest"
    model: str = Field(description="The reference the device asked for, e.g. demo-onnx@edge.")
    version: str = Field(description="The version it resolved to, name:version.")
    artifact_digest: str = Field(description="The version's artifact digest (sha256:<hex>).")
    files: list[BundleFileObject]
    issued_at: int = Field(
        description="When the gateway signed it, in milliseconds since the epoch; devices "
        "refuse a manifest older than one they accepted (a replay)."
    )
    expires_at: int = Field(
        description="When devices stop accepting it, in milliseconds since the epoch "
        "(`edge.manifest_ttl_s` after issued_at): a device held on an old manifest by someone "
        "replaying it notices once it expires."
    )
    key_id: str = Field(description="The fingerprint of the key that signed it.")


class SignedBundle(BaseModel):
    object: Literal["edge.bundle"] = "edge.bundle"
    manifest: BundleManifest
    signature: str = Field(
        description="Base64 Ed25519 signature of the manifest's canonical JSON (sorted keys, "
        "separators ',' and ':', ASCII escapes)."
    )


class DeviceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=DEVICE_ID_PATTERN, description="The device's id, e.g. kiosk-7.")
    model: str = Field(
        pattern=FOLLOW_PATTERN,
        max_length=256,
        description="The reference it follows, e.g. demo-onnx@edge; its key may fetch that "
        "reference's bundle (and the files of the version it points at) and nothing else.",
    )
    rpm: int = Field(
        DEVICE_RPM,
        ge=1,
        le=MAX_RATE,
        description="Requests per minute its key may make (every edge route counts).",
    )


class DeviceObject(BaseModel):
    object: Literal["edge.device"] = "edge.device"
    id: str
    model: str = Field(description="The reference it follows.")
    key_id: str = Field(description="Its API key; revoked when the device is removed.")
    version: str | None = Field(description="The version it last reported running.")
    bundle_digest: str | None
    status: ReportStatus | None = Field(description="Its last report's outcome.")
    detail: str | None = Field(description="Why its last sync failed, as it reported.")
    created_at: int
    last_seen_at: int | None = Field(description="When it last reported (unix seconds).")
    removed_at: int | None = None


class CreatedDevice(DeviceObject):
    key: str = Field(description="The device's API key; shown only in this response.")


class DeviceReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    model: str = Field(pattern=FOLLOW_PATTERN, max_length=256)
    version: str | None = Field(default=None, pattern=VERSION_REF_PATTERN, max_length=160)
    bundle_digest: str | None = Field(default=None, pattern=DIGEST_PATTERN)
    status: ReportStatus
    detail: str | None = Field(default=None, max_length=MAX_DETAIL)
