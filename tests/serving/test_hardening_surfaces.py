"""What the gateway shows outside its API: /metrics, /docs and /openapi.json behind a key off
loopback, metrics without key ids, and the console's cookies behind a TLS proxy."""

import hashlib
import re
from pathlib import Path

import httpx
import openai
import pytest

from serving.config import ServingConfig
from serving.console.session import LOGIN_CSRF_COOKIE, SESSION_COOKIE
from tests.serving.conftest import make_adapter, running_gateway

SURFACES = ("/metrics", "/docs", "/redoc", "/openapi.json")
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def _statuses(base_url: str, secret: str | None = None) -> dict[str, int]:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return {path: httpx.get(base_url + path, headers=headers).status_code for path in SURFACES}


def test_metrics_docs_and_openapi_need_a_key_off_loopback(tmp_path: Path) -> None:
    """Off loopback any valid key reads them (admin scope is not needed), and none or a wrong
    one gets the API's 401; /health stays open for load balancers."""
    with running_gateway(tmp_path / "home", None, host="0.0.0.0") as gw:
        _, secret = gw.gateway.keys.create("prometheus")
        refused = httpx.get(gw.base_url + "/openapi.json")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert set(_statuses(gw.base_url).values()) == {401}
        assert set(_statuses(gw.base_url, "llmops-wrong").values()) == {401}
        assert set(_statuses(gw.base_url, secret).values()) == {200}
        assert httpx.get(gw.base_url + "/health").status_code == 200


@pytest.mark.parametrize(
    ("host", "private", "status"),
    [
        ("127.0.0.1", None, 200),  # Prometheus on the same host, as before
        ("127.0.0.1", True, 401),
        ("0.0.0.0", False, 200),
    ],
)
def test_metrics_docs_and_openapi_follow_the_setting(
    tmp_path: Path, host: str, private: bool | None, status: int
) -> None:
    with running_gateway(
        tmp_path / "home", None, host=host, private_docs_and_metrics=private
    ) as gw:
        gw.gateway.keys.create("someone")  # keys exist, so the API itself needs one
        assert set(_statuses(gw.base_url).values()) == {status}


def test_metrics_labels_carry_no_key_ids(tmp_path: Path, random_model_dir: Path) -> None:
    """An API key's adapters are registered under a model named after the key; its metrics
    name a pseudonym of the key instead, the same for every series of that model."""
    with running_gateway(tmp_path / "home", random_model_dir) as gw:
        alice, secret = gw.gateway.keys.create("alice")
        model = f"demo-rev-{alice.id}"
        gw.registry.register(
            model,
            make_adapter(random_model_dir, tmp_path / "adapter", seed=1),
            kind="adapter",
            format="peft-lora",
            parent="demo:1",
            owner=alice.id,
        )
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=secret, max_retries=0)
        chat = {"model": f"{model}:1", "messages": [{"role": "user", "content": "hi"}]}
        assert client.chat.completions.create(**chat, max_tokens=2).choices
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(**chat, max_tokens=100_000)
        text = httpx.get(gw.base_url + "/metrics").text
        assert alice.id not in text
        label = f"demo-rev-owner-{hashlib.sha256(alice.id.encode()).hexdigest()[:12]}:1"
        assert f'llmops_requests_total{{backend="local",endpoint="chat",model="{label}"}}' in text
        assert f'llmops_request_errors_total{{code="400",model="{label}"}}' in text


def _login(base_url: str, secret: str, forwarded: dict[str, str]) -> list[str]:
    """The Set-Cookie headers of the login page and of logging in, each request sent with
    `forwarded` as a proxy would add it."""
    page = httpx.get(base_url + "/ui/login", headers=forwarded)
    token = TOKEN.search(page.text).group(1)
    done = httpx.post(
        base_url + "/ui/login",
        data={"api_key": secret, "csrf_token": token},
        headers={**forwarded, "Cookie": f"{LOGIN_CSRF_COOKIE}={page.cookies[LOGIN_CSRF_COOKIE]}"},
    )
    assert done.status_code == 303, done.text
    cookies = page.headers.get_list("set-cookie") + done.headers.get_list("set-cookie")
    assert any(c.startswith(f"{SESSION_COOKIE}=") for c in cookies)
    return [c for c in cookies if "Max-Age=0" not in c]  # not the login cookie's deletion


@pytest.mark.parametrize(
    ("trusted", "forwarded", "secure"),
    [
        (["127.0.0.1"], {"X-Forwarded-Proto": "https"}, True),
        (["127.0.0.0/8"], {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}, True),
        (["127.0.0.1"], {}, False),  # plain HTTP through the proxy
        ([], {"X-Forwarded-Proto": "https"}, False),  # anyone may send the header
        (["192.0.2.0/24"], {"X-Forwarded-Proto": "https"}, False),
    ],
)
def test_the_console_cookie_is_secure_behind_a_trusted_tls_proxy(
    tmp_path: Path, trusted: list[str], forwarded: dict[str, str], secure: bool
) -> None:
    with running_gateway(tmp_path / "home", None, trusted_proxies=trusted) as gw:
        _, secret = gw.gateway.keys.create("ops", admin=True)
        cookies = _login(gw.base_url, secret, forwarded)
        assert [("; secure" in c.lower()) for c in cookies] == [secure] * len(cookies), cookies


def test_trusted_proxies_are_addresses_or_networks() -> None:
    with pytest.raises(ValueError, match="IP addresses or networks"):
        ServingConfig(trusted_proxies=["proxy.internal"])
