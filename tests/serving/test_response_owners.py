"""Who may read and delete a stored response: the key that made it and admins; another key
finds nothing (404), as with every other owned resource. No model is needed: the response is
stored directly."""

import time
from pathlib import Path

import httpx

from serving.responses.protocol import ResponsesRequest
from serving.responses.translate import new_id, response_object
from tests.serving.conftest import running_gateway


def test_an_admin_sees_every_keys_stored_response(tmp_path: Path) -> None:
    with running_gateway(tmp_path, None) as gw:
        keys = gw.gateway.keys
        (alice, alice_secret), (_, bob_secret), (_, admin_secret) = (
            keys.create("alice"),
            keys.create("bob"),
            keys.create("ops", admin=True),
        )
        request = ResponsesRequest(model="demo", input="What is 1 + 1?")
        response = response_object(request, new_id("resp"), time.time(), [], None, "stop")
        gw.gateway.responses.store.save(response, alice.id, [{"role": "user", "content": "1+1"}])
        url = f"{gw.base_url}/v1/responses/{response.id}"

        def call(method: str, secret: str) -> httpx.Response:
            return httpx.request(method, url, headers={"Authorization": f"Bearer {secret}"})

        for method in ("GET", "DELETE"):
            refused = call(method, bob_secret)
            assert refused.status_code == 404, refused.text
            assert refused.json()["error"]["param"] == "response_id"
        assert call("GET", alice_secret).json()["id"] == response.id
        seen = call("GET", admin_secret)
        assert seen.status_code == 200 and seen.json()["id"] == response.id
        assert call("DELETE", admin_secret).json() == {
            "id": response.id,
            "object": "response.deleted",
            "deleted": True,
        }
        assert call("GET", alice_secret).status_code == 404
