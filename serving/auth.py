"""Who is calling: the API key in `Authorization: Bearer ...`, its models and its scope."""

from fastapi import Request

from core.callers import Caller
from core.errors import ErrorCode
from serving.errors import ServingError
from serving.keys import ApiKey, KeyStore


def authorize(keys: KeyStore, request: Request, *, model: str | None = None) -> ApiKey | None:
    """The caller's key, or None while no key exists (the gateway then listens on 127.0.0.1
    only). 401 for a missing or unknown key, 403 for a model it may not use."""
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    given = secret.strip() if scheme.lower() == "bearer" else ""
    if not given and not keys.auth_required():
        return None
    if not given:
        raise ServingError(
            ErrorCode.UNAUTHENTICATED,
            "no API key given; send it as 'Authorization: Bearer <key>'",
            api_code="invalid_api_key",
        )
    key = keys.authenticate(given)
    if key is None:
        if not keys.auth_required():
            return None
        raise ServingError(
            ErrorCode.UNAUTHENTICATED,
            "the API key is not valid (unknown or revoked); ask an admin for a key "
            "(`llm-serve keys create`)",
            api_code="invalid_api_key",
        )
    if model is not None and not key.allows(model):
        raise ServingError(
            ErrorCode.PERMISSION_DENIED,
            f"key {key.name!r} may not use model {model!r}; it may use: {', '.join(key.models)}",
            param="model",
            api_code="model_not_allowed",
        )
    return key


def caller_of(key: ApiKey | None) -> Caller:
    """The caller other packages' routers see: everyone is an admin on a gateway without keys."""
    if key is None:
        return Caller(None, admin=True)
    return Caller(key.id, admin=key.admin, may_use=key.allows)
