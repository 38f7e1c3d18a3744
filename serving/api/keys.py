"""API keys over HTTP, for admin keys: create (the secret is shown once), list, revoke."""

from typing import Annotated

from fastapi import APIRouter, Depends

from core.callers import Caller, admin_caller
from core.http import error_responses
from core.listing import ListPage, page
from serving.api.deps import GatewayDep
from serving.protocol import CreatedKey, KeyObject, KeyRequest

router = APIRouter(
    prefix="/v1/keys",
    tags=["keys"],
    dependencies=[Depends(admin_caller)],
    responses=error_responses(400, 401, 403, 413),
)


@router.post("", status_code=201)
def create_key(
    gateway: GatewayDep, body: KeyRequest, caller: Annotated[Caller, Depends(admin_caller)]
) -> CreatedKey:
    key, secret = gateway.keys.create(
        body.name,
        models=tuple(body.models),
        admin=body.admin,
        rpm=body.rpm,
        tpm=body.tpm,
        log_traffic=body.log_traffic,
        maker=caller,
    )
    return CreatedKey(**KeyObject.model_validate(key).model_dump(), key=secret)


@router.get("")
def list_keys(gateway: GatewayDep) -> ListPage[KeyObject]:
    keys = [KeyObject.model_validate(k) for k in gateway.keys.list_keys()]
    return page(keys, None, lambda k: k.id)


@router.delete("/{key_id}", responses=error_responses(404))
def revoke_key(gateway: GatewayDep, key_id: str) -> KeyObject:
    return KeyObject.model_validate(gateway.keys.revoke(key_id))
