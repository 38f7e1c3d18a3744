"""Who is calling: the API key in `Authorization: Bearer ...`, its models and its scope."""

from fastapi import Request

from serving.errors import ServingError
from serving.keys import ApiKey, KeyStore


def authorize(
    keys: KeyStore, request: Request, *, model: str | None = None, admin: bool = False
) -> ApiKey | None:
    """The caller's key, or None while no key exists (the gateway then listens on 127.0.0.1
    only). 401 for a missing or unknown key, 403 for a model or scope it does not have."""
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    given = secret.strip() if scheme.lower() == "bearer" else ""
    if not given and not keys.auth_required():
        return None
    if not given:
        raise ServingError(
            401,
            "no API key given; send it as 'Authorization: Bearer <key>'",
            code="invalid_api_key",
        )
    key = keys.authenticate(given)
    if key is None:
        if not keys.auth_required():
            return None
        raise ServingError(
            401,
            "the API key is not valid (unknown or revoked); ask an admin for a key "
            "(`llm-serve keys create`)",
            code="invalid_api_key",
        )
    if admin and not key.admin:
        raise ServingError(
            403, f"key {key.name!r} has no admin scope", code="insufficient_permissions"
        )
    if model is not None and not key.allows(model):
        raise ServingError(
            403,
            f"key {key.name!r} may not use model {model!r}; it may use: {', '.join(key.models)}",
            code="model_not_allowed",
            param="model",
        )
    return key
