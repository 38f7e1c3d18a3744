"""What the gateway's routes ask for: the gateway's services, and the caller's API key."""

from typing import Annotated

from fastapi import Depends, Request

from serving.gateway import Gateway
from serving.keys import ApiKey


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def request_key(request: Request) -> ApiKey | None:
    """The caller's API key (None on a gateway without keys); 401 when it is not valid."""
    return get_gateway(request).auth.key(request)


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
KeyDep = Annotated[ApiKey | None, Depends(request_key)]
