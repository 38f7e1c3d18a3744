"""API keys: stored as sha256 hashes, checked in constant time, each with its allowed models,
rate limits, traffic-log opt-out and optional scopes: admin, teach (its corrections through
`/v1/feedback` may train models) and device (an edge device's key, made by `llm-serve edge
add`: only the edge routes admit it, and it uses no model through the API)."""

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, Row, select

from core.callers import Caller
from core.database import as_utc, reading, utc_now
from core.errors import ErrorCode, StackError
from core.refs import parse_ref
from serving.errors import ServingError
from serving.tables import api_keys

KEY_PREFIX = "llmops-"
KEY_ID_PATTERN = "key_[0-9a-f]{16}"  # the ids `KeyStore.create` makes
MAX_RATE = 10**12  # the largest rpm or tpm a key may have (the columns hold 64-bit integers)
ALL_MODELS = "*"
DEVICE_ROUTES = "/v1/edge/"  # the only routes a device key may call
_MIN_RELOAD_S = 0.25  # unknown secrets reload the keys at most this often


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    models: tuple[str, ...]
    admin: bool
    rpm: int | None
    tpm: int | None
    log_traffic: bool
    created_at: datetime
    revoked_at: datetime | None
    teach: bool = False
    device: bool = False
    # who made it, and who made the keys that made it: (actor, when), its own maker last
    made_by: tuple[tuple[str, datetime], ...] = ()

    @property
    def created_by(self) -> str | None:
        """Who made this key (an admin key's actor, or the operator on the command line)."""
        return self.made_by[-1][0] if self.made_by else None

    @property
    def may_teach(self) -> bool:
        """Whether corrections this key gives may train models: the teach scope, or an admin
        (who approves corrections anyway)."""
        return self.teach or self.admin

    def allows(self, model: str) -> bool:
        """Whether this key may use `model` (`demo` also covers `demo@alias`, `demo:N` and
        the fine-tuned `ft:demo:...`). A device key uses none: it fetches its device's bundles,
        which the edge routes check against the device."""
        if self.device:
            return False
        if ALL_MODELS in self.models or model in self.models:
            return True
        try:
            return parse_ref(model).name in self.models
        except StackError:
            return False

    def admits(self, path: str) -> bool:
        """Whether this key may call the route at `path`: a device key only the edge routes."""
        return not self.device or path.startswith(DEVICE_ROUTES)

    def refusal(self, path: str) -> ServingError:
        """The 403 for a route this key may not call (see `admits`)."""
        return ServingError(
            ErrorCode.PERMISSION_DENIED,
            f"key {self.name!r} is an edge device's key: it may call only the edge routes "
            f"({DEVICE_ROUTES}...), not {path[:200]}",
            api_code="device_key_not_allowed",
        )


def secret_hash(secret: str) -> str:
    """How a secret (an API key, a console session's token) is stored: its sha256."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _key(row: Row) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        models=tuple(row.models),
        admin=row.admin,
        rpm=row.rpm,
        tpm=row.tpm,
        log_traffic=row.log_traffic,
        created_at=as_utc(row.created_at),
        revoked_at=as_utc(row.revoked_at),
        teach=row.teach,
        device=row.device,
        made_by=tuple((actor, datetime.fromisoformat(when)) for actor, when in row.made_by or ()),
    )


class KeyStore:
    """Keys in the database, with a short cache so that every request does not query it;
    a revocation takes effect within `ttl` seconds."""

    def __init__(self, engine: Engine, ttl: float = 2.0):
        self.engine = engine
        self.ttl = ttl
        # (expires, earliest reload, active keys by hash)
        self._cache: tuple[float, float, dict[str, ApiKey]] | None = None
        self._lock = threading.Lock()

    def create(
        self,
        name: str,
        *,
        models: tuple[str, ...] = (ALL_MODELS,),
        admin: bool = False,
        rpm: int | None = None,
        tpm: int | None = None,
        log_traffic: bool = True,
        teach: bool = False,
        device: bool = False,
        maker: Caller | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret; the secret is shown once and only its hash is stored.
        `maker` is who makes it (recorded with who made the maker's key)."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        now = utc_now()
        made_by = [*maker.made_by, (maker.actor, now)] if maker is not None else []
        row = {
            "id": "key_" + secrets.token_hex(8),
            "name": name,
            "key_hash": secret_hash(secret),
            "prefix": secret[: len(KEY_PREFIX) + 4],
            "models": list(models),
            "admin": admin,
            "rpm": rpm,
            "tpm": tpm,
            "log_traffic": log_traffic,
            "teach": teach,
            "device": device,
            "created_at": now,
            "revoked_at": None,
            "made_by": [[actor, when.isoformat()] for actor, when in made_by],
        }
        with self.engine.begin() as conn:
            conn.execute(api_keys.insert().values(**row))
        self._cache = None
        return self.get(row["id"]), secret

    def get(self, key_id: str) -> ApiKey:
        with reading(self.engine) as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        if row is None:
            raise ServingError(
                ErrorCode.NOT_FOUND,
                f"no API key {key_id!r}; `llm-serve keys list` shows the keys",
                param="key_id",
                api_code="key_not_found",
            )
        return _key(row)

    def list_keys(self, include_revoked: bool = False) -> list[ApiKey]:
        stmt = select(api_keys).order_by(api_keys.c.created_at)
        if not include_revoked:
            stmt = stmt.where(api_keys.c.revoked_at.is_(None))
        with reading(self.engine) as conn:
            return [_key(row) for row in conn.execute(stmt)]

    def revoke(self, key_id: str) -> ApiKey:
        key = self.get(key_id)
        if key.revoked_at is None:
            with self.engine.begin() as conn:
                conn.execute(
                    api_keys.update().where(api_keys.c.id == key_id).values(revoked_at=utc_now())
                )
        self._cache = None
        return self.get(key_id)

    def needs_database(self, secret: str) -> bool:
        """Whether checking `secret` (or that keys are required, for "") would query the
        database rather than the cache."""
        now = time.monotonic()
        cached = self._cache
        if cached is None or cached[0] <= now:
            return True
        return bool(secret) and secret_hash(secret) not in cached[2] and cached[1] <= now

    def _active(self, refresh: bool = False) -> dict[str, ApiKey]:
        """Active keys by hash, from the cache while it is fresh (or `refresh` is refused
        because the cache was loaded a moment ago)."""
        now = time.monotonic()
        cached = self._cache
        if cached is not None and (cached[0] > now if not refresh else cached[1] > now):
            return cached[2]
        with self._lock:
            stmt = select(api_keys).where(api_keys.c.revoked_at.is_(None))
            with reading(self.engine) as conn:
                active = {row.key_hash: _key(row) for row in conn.execute(stmt)}
            self._cache = (now + self.ttl, now + _MIN_RELOAD_S, active)
            return active

    def active(self, key_id: str) -> ApiKey | None:
        """The key with `key_id` unless it is unknown or revoked (cached as `authenticate` is)."""
        return next((key for key in self._active().values() if key.id == key_id), None)

    def auth_required(self) -> bool:
        """Keys are enforced once at least one active key exists."""
        return bool(self._active())

    def authenticate(self, secret: str) -> ApiKey | None:
        """The active key whose hash matches; an unknown secret reloads the keys once, so a
        key works as soon as it is created."""
        digest = secret_hash(secret)
        key = self._find(digest, self._active())
        return key or self._find(digest, self._active(refresh=True))

    @staticmethod
    def _find(digest: str, active: dict[str, ApiKey]) -> ApiKey | None:
        found = None
        for stored, key in active.items():  # every key, compared in constant time
            if hmac.compare_digest(stored, digest):
                found = key
        return found
