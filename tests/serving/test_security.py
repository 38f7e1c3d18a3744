"""API keys, scopes, rate limits and the traffic log, on a real gateway."""

import hashlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest

from core.callers import Caller
from core.database import open_database
from core.errors import ErrorCode, StackError
from core.redaction import redact_pii
from registry.entities import FINE_TUNED_TAG
from serving.keys import KeyStore
from serving.ratelimit import WINDOW_S
from serving.tables import CHAIN
from tests.registry.conftest import make_model_dir
from tests.serving.conftest import LIMITS, RunningGateway, make_adapter, running_gateway

CHAT = [{"role": "user", "content": "Uppercase: mail me at ann@example.com or 0123456789"}]


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory, random_model_dir: Path
) -> Iterator[RunningGateway]:
    home = tmp_path_factory.mktemp("keyed-home")
    with running_gateway(home, random_model_dir, limits=LIMITS, traffic={"redactor": "pii"}) as gw:
        yield gw


def _client(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0)


def _envelope(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    return error


def test_keys_are_stored_hashed(database_url: str) -> None:
    keys = KeyStore(open_database(database_url, CHAIN))
    key, secret = keys.create("hashed")
    with keys.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT * FROM serving_api_keys").one()
    assert stored.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret[len(stored.prefix) :] not in " ".join(str(v) for v in stored)
    assert keys.authenticate(secret) == key
    assert keys.authenticate(secret + "x") is None
    keys.revoke(key.id)
    assert keys.authenticate(secret) is None


def test_a_key_revoked_elsewhere_stops_working_within_the_cache_ttl(
    keyed: RunningGateway,
) -> None:
    """`llm-serve keys revoke` runs in another process: the gateway learns of it through
    its key cache, within `ttl` seconds."""
    keyed.gateway.keys.create("stays")  # keys stay required after the revocation
    key, secret = keyed.gateway.keys.create("short-lived")
    client = _client(keyed, secret)
    assert client.models.list().data
    other_process = KeyStore(
        open_database(keyed.registry.store.engine.url.render_as_string(hide_password=False), CHAIN)
    )
    revoked_at = time.monotonic()
    other_process.revoke(key.id)
    deadline = revoked_at + keyed.gateway.keys.ttl + 2
    while True:
        try:
            client.models.list()
        except openai.AuthenticationError:
            break
        assert time.monotonic() < deadline, "the revoked key still works after the cache TTL"


def test_authentication_and_scopes(keyed: RunningGateway) -> None:
    keys = keyed.gateway.keys
    _, user = keys.create("app", models=("demo",))
    _, other = keys.create("other", models=("something-else",))
    _, admin = keys.create("ops", admin=True)
    chat = {"model": "demo", "messages": CHAT, "max_tokens": 2}
    url = f"{keyed.base_url}/v1/chat/completions"

    _envelope(httpx.post(url, json=chat), 401, "invalid_api_key")
    bad = httpx.post(url, json=chat, headers={"Authorization": "Bearer nope"})
    assert "not valid" in _envelope(bad, 401, "invalid_api_key")["message"]
    with pytest.raises(openai.AuthenticationError):
        _client(keyed, "llmops-wrong").chat.completions.create(**chat)
    with pytest.raises(openai.PermissionDeniedError) as err:
        _client(keyed, other).chat.completions.create(**chat)
    assert err.value.body["code"] == "model_not_allowed"

    reply = _client(keyed, user).chat.completions.create(**chat)
    assert reply.usage.completion_tokens > 0
    assert {m.id for m in _client(keyed, user).models.list().data} == {"demo", "demo@production"}
    assert _client(keyed, other).models.list().data == []

    registry_url = f"{keyed.base_url}/v1/registry/models"
    headers = {"Authorization": f"Bearer {user}"}
    _envelope(httpx.get(registry_url, headers=headers), 403, "insufficient_permissions")
    listing = httpx.get(registry_url, headers={"Authorization": f"Bearer {admin}"})
    assert listing.json()["data"][0]["name"] == "demo"

    created = httpx.post(
        f"{keyed.base_url}/v1/keys",
        json={"name": "made-over-http", "models": ["demo"]},
        headers={"Authorization": f"Bearer {admin}"},
    ).json()
    assert _client(keyed, created["key"]).chat.completions.create(**chat).choices
    httpx.delete(
        f"{keyed.base_url}/v1/keys/{created['id']}", headers={"Authorization": f"Bearer {admin}"}
    )
    with pytest.raises(openai.AuthenticationError):
        _client(keyed, created["key"]).chat.completions.create(**chat)


@pytest.fixture
def one_minute(keyed: RunningGateway) -> Iterator[None]:
    """Limits count per clock minute: the gateway's limiter sees one instant of one."""
    instant = (time.time() // WINDOW_S) * WINDOW_S + 1
    keyed.gateway.limiter.clock = lambda: instant
    yield
    del keyed.gateway.limiter.clock


@pytest.mark.usefixtures("one_minute")
def test_requests_per_minute_limit(keyed: RunningGateway) -> None:
    _, secret = keyed.gateway.keys.create("limited", rpm=3)
    client = _client(keyed, secret)
    for _ in range(3):
        client.chat.completions.create(model="demo", messages=CHAT, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="demo", messages=CHAT, max_tokens=1)
    assert int(err.value.response.headers["retry-after"]) == WINDOW_S - 1
    assert err.value.body["code"] == "rate_limit_exceeded"


@pytest.mark.usefixtures("one_minute")
def test_tokens_per_minute_limit(keyed: RunningGateway) -> None:
    _, secret = keyed.gateway.keys.create("few-tokens", tpm=100)
    client = _client(keyed, secret)
    with pytest.raises(openai.RateLimitError, match="more than key 'few-tokens' allows"):
        client.chat.completions.create(model="demo", messages=CHAT, max_tokens=64, n=3)
    used = 0
    with pytest.raises(openai.RateLimitError, match="tokens used this minute"):
        for _ in range(10):
            reply = client.chat.completions.create(model="demo", messages=CHAT, max_tokens=20)
            used += reply.usage.total_tokens
    assert used <= 100


def test_traffic_log_records_redacts_and_honours_opt_out(keyed: RunningGateway) -> None:
    keys = keyed.gateway.keys
    logged_key, logged = keys.create("logged")
    quiet_key, quiet = keys.create("quiet", log_traffic=False)
    start = datetime.now(UTC) - timedelta(seconds=1)
    chat = {"model": "demo", "messages": CHAT, "max_tokens": 5}
    reply = _client(keyed, logged).chat.completions.create(**chat)
    _client(keyed, quiet).chat.completions.create(**chat)
    traffic = keyed.gateway.traffic
    traffic.flush()
    records = [r for r in traffic.window(start) if r.key_id in (logged_key.id, quiet_key.id)]
    assert [r.key_id for r in records] == [logged_key.id]
    (record,) = records
    assert record.version == "demo:1" and record.model == "demo" and record.backend == "local"
    assert record.endpoint == "chat" and record.latency_ms >= 0
    assert record.prompt_tokens == reply.usage.prompt_tokens
    assert record.completion_tokens == reply.usage.completion_tokens
    assert "[EMAIL]" in record.prompt and "ann@example.com" not in record.prompt
    assert "[NUMBER]" in record.prompt
    assert record.output == redact_pii(reply.choices[0].message.content)
    assert traffic.window(start, version="demo:9") == []


def test_without_keys_admin_routes_refuse_over_http(gateway_server: RunningGateway) -> None:
    base = gateway_server.base_url
    minted = httpx.post(f"{base}/v1/keys", json={"name": "mine", "admin": True})
    assert "no API key exists" in _envelope(minted, 403, "insufficient_permissions")["message"]
    _envelope(httpx.get(f"{base}/v1/registry/models"), 403, "insufficient_permissions")
    body = {"source_dir": "/etc"}
    registered = httpx.post(f"{base}/v1/registry/models/etc/versions", json=body)
    _envelope(registered, 403, "insufficient_permissions")
    assert gateway_server.gateway.keys.list_keys() == []
    chat = {"model": "demo", "messages": CHAT, "max_tokens": 2}
    assert httpx.post(f"{base}/v1/chat/completions", json=chat).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io"])
def test_the_host_header_must_be_on_the_allow_list(
    gateway_server: RunningGateway, host: str
) -> None:
    """A web page that rebinds its own name to 127.0.0.1 sends its own name as the Host."""
    response = httpx.get(f"{gateway_server.base_url}/v1/models", headers={"Host": host})
    assert "allowed_hosts" in _envelope(response, 400, "invalid_host")["message"]
    for allowed in ("localhost", "127.0.0.1:1234", "[::1]:80"):
        ok = httpx.get(f"{gateway_server.base_url}/v1/models", headers={"Host": allowed})
        assert ok.status_code == 200


def test_off_loopback_the_last_key_revoked_leaves_the_gateway_closed(
    tmp_path: Path, random_model_dir: Path
) -> None:
    with running_gateway(tmp_path / "home", random_model_dir, host="0.0.0.0") as gw:
        url = f"{gw.base_url}/v1/models"
        _envelope(httpx.get(url), 401, "invalid_api_key")  # no key was ever made
        key, secret = gw.gateway.keys.create("only")
        assert httpx.get(url, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
        gw.gateway.keys.revoke(key.id)
        _envelope(httpx.get(url), 401, "invalid_api_key")
        _envelope(
            httpx.get(url, headers={"Authorization": f"Bearer {secret}"}), 401, "invalid_api_key"
        )


def test_fine_tuned_models_belong_to_their_owner(tmp_path: Path, random_model_dir: Path) -> None:
    with running_gateway(tmp_path / "home", random_model_dir) as gw:
        keys, registry = gw.gateway.keys, gw.registry
        alice, alice_secret = keys.create("alice", models=("demo",))
        _, bob_secret = keys.create("bob", models=("demo",))
        _, ops_secret = keys.create("ops", admin=True)
        name = "ft:demo:rev:ftjob-alice1"
        registry.register(
            f"demo-rev-{alice.id}",
            make_adapter(random_model_dir, tmp_path / "adapter", seed=1),
            kind="adapter",
            format="peft-lora",
            parent="demo:1",
            tags={FINE_TUNED_TAG: name},
            owner=alice.id,
        )
        listed = {
            n: {m.id for m in _client(gw, s).models.list().data}
            for n, s in [("alice", alice_secret), ("bob", bob_secret), ("ops", ops_secret)]
        }
        assert name in listed["alice"] and name in listed["ops"] and name not in listed["bob"]
        chat = {"model": name, "messages": CHAT, "max_tokens": 2}
        assert _client(gw, alice_secret).chat.completions.create(**chat).choices
        with pytest.raises(openai.NotFoundError) as err:
            _client(gw, bob_secret).chat.completions.create(**chat)
        assert err.value.body["code"] == "model_not_found"
        with pytest.raises(openai.NotFoundError):
            _client(gw, bob_secret).fine_tuning.jobs.create(model=name, training_file="file-x")
        with pytest.raises(StackError, match="belongs to someone else") as refused:
            registry.register(
                f"demo-rev-{alice.id}",
                make_adapter(random_model_dir, tmp_path / "other", seed=2),
                kind="adapter",
                parent="demo:1",
                owner="key_bob",
            )
        assert refused.value.code is ErrorCode.PERMISSION_DENIED


def test_archived_versions_are_not_served(tmp_path: Path, random_model_dir: Path) -> None:
    with running_gateway(tmp_path / "home", random_model_dir) as gw:
        registry = gw.registry
        registry.register(
            "demo",
            make_adapter(random_model_dir, tmp_path / "a", seed=1),
            kind="adapter",
            parent="demo:1",
        )
        registry.archive("demo:2")
        reply = httpx.post(
            f"{gw.base_url}/v1/chat/completions",
            json={"model": "demo:2", "messages": CHAT, "max_tokens": 2},
        )
        assert "archived" in _envelope(reply, 404, "model_not_found")["message"]
        for padded in ("demo:01", "demo:0001"):
            reply = httpx.post(
                f"{gw.base_url}/v1/completions",
                json={"model": padded, "prompt": "x", "max_tokens": 1},
            )
            _envelope(reply, 404, "model_not_found")


def test_the_audit_log_records_the_api_key_that_made_a_change(keyed: RunningGateway) -> None:
    key, admin = keyed.gateway.keys.create("release-bot", admin=True)
    reply = httpx.put(
        f"{keyed.base_url}/v1/registry/models/demo/aliases/canary",
        json={"version": 1, "reason": "try it"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["actor"] == f"key {key.id} (release-bot)"
    assert keyed.registry.history("demo", "canary")[-1].actor == f"key {key.id} (release-bot)"


def test_metrics_labels_are_resolved_versions_never_client_strings(
    gateway_server: RunningGateway,
) -> None:
    url = f"{gateway_server.base_url}/v1/chat/completions"
    for i in range(3):
        httpx.post(url, json={"model": f"made-up-{i}-zzz", "messages": CHAT})
    httpx.post(url, json={"model": "demo", "messages": CHAT, "max_tokens": 5000})
    text = httpx.get(f"{gateway_server.base_url}/metrics").text
    assert "made-up-" not in text
    assert 'llmops_request_errors_total{code="404",model="invalid"}' in text
    assert 'llmops_request_errors_total{code="400",model="demo:1"}' in text


@pytest.mark.parametrize(
    ("given", "kept"),
    [("trace-42.a:b_c", True), ("x" * 65, False), ("has space", False), ("é", False)],
)
def test_a_clients_request_id_is_kept_only_when_it_is_well_formed(
    gateway_server: RunningGateway, given: str, kept: bool
) -> None:
    reply = httpx.get(f"{gateway_server.base_url}/health", headers={"X-Request-Id": given.encode()})
    returned = reply.headers["x-request-id"]
    assert (returned == given) is kept
    assert kept or len(returned) == 32


def test_error_bodies_carry_no_server_paths(keyed: RunningGateway) -> None:
    _, admin = keyed.gateway.keys.create("auditor", admin=True)
    home = str(keyed.registry.artifacts.home)
    blob = next(p for p in (keyed.registry.artifacts.root / "blobs").rglob("*") if p.is_file())
    original = blob.read_bytes()
    blob.write_bytes(b"tampered")
    try:
        reply = httpx.post(
            f"{keyed.base_url}/v1/registry/versions/demo:1/verify",
            headers={"Authorization": f"Bearer {admin}"},
        )
    finally:
        blob.write_bytes(original)
    error = _envelope(reply, 500, "integrity")
    assert "does not match its digest" in error["message"]
    assert home not in reply.text and "/tmp" not in reply.text


def test_a_request_is_not_approved_with_a_key_its_requester_made_after_asking(
    tmp_path: Path,
) -> None:
    with running_gateway(tmp_path / "home", None) as gw:
        for seed in (0, 1):
            gw.registry.register("demo", make_model_dir(tmp_path / f"m{seed}", seed))
        gw.registry.set_alias("demo", "production", 1)
        alice, alice_secret = gw.gateway.keys.create(
            "alice", admin=True, maker=Caller(None, admin=True, name="ops")
        )
        assert alice.created_by == "ops"

        def post(secret: str, path: str, body: dict) -> httpx.Response:
            headers = {"Authorization": f"Bearer {secret}"}
            return httpx.post(f"{gw.base_url}/v1{path}", json=body, headers=headers)

        asked = post(
            alice_secret,
            "/registry/models/demo/aliases/production/requests",
            {"version": 2, "reason": "better"},
        )
        assert asked.status_code == 201, asked.text
        approve = f"/registry/models/demo/requests/{asked.json()['id']}/approve"
        made = post(alice_secret, "/keys", {"name": "second", "admin": True}).json()
        assert made["created_by"] == f"key {alice.id} (alice)"
        error = _envelope(post(made["key"], approve, {}), 403, "permission_denied")["message"]
        assert f"made by key {alice.id} (alice), who made this key after asking" in error
        third = post(made["key"], "/keys", {"name": "third", "admin": True}).json()
        _envelope(post(third["key"], approve, {}), 403, "permission_denied")

        _, bob_secret = gw.gateway.keys.create(
            "bob", admin=True, maker=Caller(None, admin=True, name="ops")
        )
        approved = post(bob_secret, approve, {"reason": "checked"})
        assert approved.status_code == 200 and approved.json()["to_version"] == 2
