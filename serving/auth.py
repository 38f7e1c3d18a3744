"""Who is calling: the API key in `Authorization: Bearer ...`, its models and its scope.

Without any key the gateway is open only when it listens on a loopback address, and even
then its admin routes stay closed over HTTP (keys are created with `llm-serve keys create`).
A gateway listening elsewhere always needs a key, also after its last key is revoked."""

import asyncio
import ipaddress

from fastapi import Request

from core.callers import Caller, admin_caller
from core.errors import ErrorCode
from core.logs import tag_request
from serving.errors import ServingError
from serving.keys import ApiKey, KeyStore


def _secret(request: Request) -> str:
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else ""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Authenticator:
    def __init__(self, keys: KeyStore, *, open_without_keys: bool):
        self.keys = keys
        self.open_without_keys = open_without_keys

    async def key_async(self, request: Request, *, model: str | None = None) -> ApiKey | None:
        """`key`, for async routes: off the event loop when the keys cache must be reloaded."""
        if self.keys.needs_database(_secret(request)):
            return await asyncio.to_thread(self.key, request, model=model)
        return self.key(request, model=model)

    async def admit(self, request: Request, *, admin: bool) -> None:
        """Refuse a request before any of its body is read: 401 without a valid key, and on
        an `admin` route 403 for anyone but an admin key. The route authenticates again (from
        the keys cache) for what it needs to know."""
        await self.key_async(request)
        if admin:
            admin_caller(request)

    def key(self, request: Request, *, model: str | None = None) -> ApiKey | None:
        """The caller's key, or None on an open gateway (loopback, no keys). 401 for a
        missing or unknown key, 403 for a model it may not use."""
        given = _secret(request)
        if not given:
            if self._open():
                return None
            raise ServingError(
                ErrorCode.UNAUTHENTICATED,
                "no API key given; send it as 'Authorization: Bearer <key>'",
                api_code="invalid_api_key",
            )
        key = self.keys.authenticate(given)
        if key is None:
            if self._open():
                return None
            raise ServingError(
                ErrorCode.UNAUTHENTICATED,
                "the API key is not valid (unknown or revoked); ask an admin for a key "
                "(`llm-serve keys create`)",
                api_code="invalid_api_key",
            )
        tag_request(key_id=key.id)
        if not key.admits(request.url.path):
            raise key.refusal(request.url.path)
        if model is not None and not key.allows(model):
            raise model_not_allowed(key, model)
        return key

    def caller(self, request: Request) -> Caller:
        """The caller other packages' routers see."""
        return self.caller_of(self.key(request))

    @staticmethod
    def caller_of(key: ApiKey | None) -> Caller:
        if key is None:
            return Caller(None, admin=False, name="anonymous (no API keys exist)")
        return Caller(
            key.id,
            admin=key.admin,
            name=key.name,
            may_use=key.allows,
            teach=key.may_teach,
            made_by=key.made_by,
        )

    def _open(self) -> bool:
        return self.open_without_keys and not self.keys.auth_required()


def model_not_allowed(key: ApiKey, model: str) -> ServingError:
    return ServingError(
        ErrorCode.PERMISSION_DENIED,
        f"key {key.name!r} may not use model {model!r}; it may use: {', '.join(key.models)}",
        param="model",
        api_code="model_not_allowed",
    )
