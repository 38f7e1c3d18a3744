"""`/v1/feedback` on a running gateway with keys: feedback on one's own answers only, stored
with the version that answered; other keys' requests do not exist for the caller."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.serving.conftest import LIMITS, RunningGateway, running_gateway

CHAT = [{"role": "user", "content": "What colour is the zorblax?"}]


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory, random_model_dir: Path
) -> Iterator[RunningGateway]:
    with running_gateway(tmp_path_factory.mktemp("home"), random_model_dir, limits=LIMITS) as gw:
        yield gw


def _answer(gw: RunningGateway, secret: str, request_id: str | None = None) -> str:
    client = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=secret, max_retries=0)
    headers = {"x-request-id": request_id} if request_id else None
    raw = client.chat.completions.with_raw_response.create(
        model="demo", messages=CHAT, max_tokens=4, extra_headers=headers
    )
    return raw.headers["x-request-id"]


def _feedback(gw: RunningGateway, secret: str, **body) -> httpx.Response:
    return httpx.post(
        f"{gw.base_url}/v1/feedback", json=body, headers={"Authorization": f"Bearer {secret}"}
    )


def _listed(gw: RunningGateway, secret: str, **params) -> list[dict]:
    reply = httpx.get(
        f"{gw.base_url}/v1/feedback", params=params, headers={"Authorization": f"Bearer {secret}"}
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]


def test_feedback_belongs_to_the_key_that_made_the_request(keyed: RunningGateway) -> None:
    keys = keyed.gateway.keys
    _, alice = keys.create("alice")
    _, bob = keys.create("bob")
    _, admin = keys.create("ops", admin=True)
    _, quiet = keys.create("quiet", log_traffic=False)

    asked = _answer(keyed, alice)
    given = _feedback(keyed, alice, request_id=asked, rating=2, correction="red")
    assert given.status_code == 200, given.text
    body = given.json()
    assert body["object"] == "feedback" and body["model"] == "demo:1"
    assert (body["request_id"], body["rating"], body["correction"]) == (asked, 2, "red")

    # another key's request does not exist for bob, whatever he sends
    refused = _feedback(keyed, bob, request_id=asked, rating=5)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "request_not_found"
    assert _listed(keyed, bob) == []
    # a request id bob chose to equal alice's: his feedback goes to his own answer
    assert _answer(keyed, bob, request_id=asked) == asked
    mine = _feedback(keyed, bob, request_id=asked, rating=5).json()
    assert [f["id"] for f in _listed(keyed, bob)] == [mine["id"]]
    assert [f["rating"] for f in _listed(keyed, alice, request_id=asked)] == [2]
    assert {f["rating"] for f in _listed(keyed, admin)} == {2, 5}

    # no traffic record, no feedback: unknown ids and keys that opted out of the log
    for secret, request_id in ((alice, "no-such-request"), (quiet, _answer(keyed, quiet))):
        reply = _feedback(keyed, secret, request_id=request_id, rating=1)
        assert reply.status_code == 404 and "traffic log" in reply.json()["error"]["message"]


def test_bad_feedback_is_refused(keyed: RunningGateway) -> None:
    _, secret = keyed.gateway.keys.create("carol")
    asked = _answer(keyed, secret)
    for body, says in (
        ({"request_id": asked}, "a `rating`, a `correction`, or both"),
        ({"request_id": asked, "rating": 9}, "rating"),
        ({"request_id": asked, "correction": ""}, "correction"),
        ({"request_id": "bad id!", "rating": 3}, "request_id"),
    ):
        reply = _feedback(keyed, secret, **body)
        assert reply.status_code == 400, reply.text
        assert says in reply.json()["error"]["message"]
    assert httpx.post(f"{keyed.base_url}/v1/feedback", json={}).status_code == 401
