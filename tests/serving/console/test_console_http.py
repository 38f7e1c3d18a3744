"""The console over plain HTTP: logging in, CSRF, admin scope, the Host allow-list and bad
input, each answered by a page that says what was wrong, with nothing changed."""

import hashlib
import re
from datetime import timedelta
from pathlib import Path

import httpx
import openai
import optuna
import pytest

from core.database import utc_now
from evals.continuous.events import LoopEvents, Step, new_cycle_id
from evals.drift.checks import DriftCheck, DriftStore, new_check_id
from registry.entities import PromotionStatus
from serving.console.session import SESSION_COOKIE
from serving.tables import console_sessions
from tests.serving.console.conftest import ConsoleWorld, openai_client, submit_job

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def _client(world: ConsoleWorld) -> httpx.Client:
    return httpx.Client(base_url=world.url, follow_redirects=False, timeout=30)


def login(world: ConsoleWorld, secret: str) -> tuple[httpx.Client, str]:
    """A client logged in with `secret`, and its session's CSRF token."""
    client = _client(world)
    form = client.get("/login")
    token = TOKEN.search(form.text).group(1)
    done = client.post("/login", data={"api_key": secret, "csrf_token": token})
    assert done.status_code == 303, done.text
    page = client.get("/jobs")
    return client, TOKEN.search(page.text).group(1)


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _state(world: ConsoleWorld) -> tuple:
    registry = world.gateway.registry
    return (
        registry.resolve("demo@production").version,
        len(registry.history("demo")),
        len(registry.pending("demo")),
    )


def test_pages_need_a_valid_key(console_world: ConsoleWorld) -> None:
    client = _client(console_world)
    refused = client.get("/models/demo")
    assert refused.status_code == 401 and "Log in with an API key" in refused.text
    form = client.get("/login")
    token = TOKEN.search(form.text).group(1)
    wrong = client.post("/login", data={"api_key": "llmops-wrong", "csrf_token": token})
    assert wrong.status_code == 401 and "not valid (unknown or revoked)" in wrong.text
    assert SESSION_COOKIE not in client.cookies
    forged = _client(console_world).post("/login", data={"api_key": console_world.alice})
    assert forged.status_code == 403 and "CSRF" in forged.text
    stale = _client(console_world)
    stale.cookies.set(SESSION_COOKIE, "llmops-not-a-key", path="/ui")
    assert "log in again" in stale.get("/").text


def test_the_session_cookie_is_http_only_and_same_site(console_world: ConsoleWorld) -> None:
    client = _client(console_world)
    token = TOKEN.search(client.get("/login").text).group(1)
    done = client.post("/login", data={"api_key": console_world.alice, "csrf_token": token})
    cookie = done.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie


def test_registry_pages_need_an_admin_key(console_world: ConsoleWorld) -> None:
    client, _ = login(console_world, console_world.alice)
    assert "demo" in client.get("/").text
    viewer = _client(console_world)
    token = TOKEN.search(viewer.get("/login").text).group(1)
    landed = viewer.post("/login", data={"api_key": console_world.viewer, "csrf_token": token})
    assert landed.headers["location"] == "/ui/jobs"  # the pages a key without admin scope has
    for path in ("/", "/models/demo", "/keys"):
        page = viewer.get(path)
        assert page.status_code == 403 and "has no admin scope" in page.text


def test_forms_without_their_csrf_token_change_nothing(console_world: ConsoleWorld) -> None:
    client, token = login(console_world, console_world.alice)
    before = _state(console_world)
    for path, data in (
        ("/models/demo/promote", {"version": "4", "reason": "better"}),
        ("/models/demo/rollback", {"alias": "production", "reason": "undo"}),
        ("/keys", {"name": "sneaky"}),
        ("/models/demo/versions/2/verify", {}),
    ):
        refused = client.post(path, data=data)
        assert refused.status_code == 403 and "no valid CSRF token" in refused.text
        forged = token[:-1] + ("1" if token.endswith("0") else "0")  # never the token itself
        wrong = client.post(path, data={**data, "csrf_token": forged})
        assert wrong.status_code == 403
    assert _state(console_world) == before
    names = [k.name for k in console_world.gateway.gateway.keys.list_keys()]
    assert "sneaky" not in names


def test_bad_input_answers_a_clear_page(console_world: ConsoleWorld) -> None:
    client, token = login(console_world, console_world.alice)
    before = _state(console_world)
    no_reason = client.post(
        "/models/demo/promote", data={"version": "4", "reason": "  ", "csrf_token": token}
    )
    assert no_reason.status_code == 400 and "needs a reason; nothing was changed" in no_reason.text
    unknown = client.get("/models/nope")
    assert unknown.status_code == 404 and "nope" in unknown.text
    missing = client.get("/models/demo/versions/99")
    assert missing.status_code == 404 and "demo" in missing.text
    bad = client.get("/models/demo/versions/zero")
    assert bad.status_code == 400 and "Bad input" in bad.text
    one = client.get("/models/demo/compare", params={"v": 2})
    assert one.status_code == 400 and "two or more versions" in one.text
    assert _state(console_world) == before


def test_the_host_allow_list_covers_the_console(console_world: ConsoleWorld) -> None:
    client, _ = login(console_world, console_world.alice)
    refused = client.get("/", headers={"host": "evil.example"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_host"


def test_a_gate_refusal_and_a_self_approval_change_nothing(console_world: ConsoleWorld) -> None:
    client, token = login(console_world, console_world.alice)
    before = _state(console_world)
    worse = client.post(
        "/models/demo/promote", data={"version": "3", "reason": "try", "csrf_token": token}
    )
    assert worse.status_code == 422 and "failed gate metric:exact_match" in worse.text
    assert _state(console_world) == before
    asked = client.post(
        "/models/demo/promote",
        data={"version": "4", "reason": "better", "approval": "true", "csrf_token": token},
    )
    assert asked.status_code == 303
    request = console_world.gateway.registry.pending("demo", PromotionStatus.PENDING)[0]
    own = client.post(
        f"/models/demo/promotions/{request.id}",
        data={"decision": "approve", "csrf_token": token},
    )
    assert own.status_code == 403 and "a second person must approve" in own.text
    bob, bob_token = login(console_world, console_world.bob)
    rejected = bob.post(
        f"/models/demo/promotions/{request.id}",
        data={"decision": "reject", "reason": "not yet", "csrf_token": bob_token},
    )
    assert rejected.status_code == 303
    assert console_world.gateway.registry.resolve("demo@production").version == before[0]


def test_a_two_person_alias_moves_alone_only_with_a_break_glass_reason(
    console_world: ConsoleWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    # LLMOPS_TWO_PERSON_ALIASES is read once, when the gateway opens its registry.
    registry = console_world.gateway.registry
    monkeypatch.setattr(registry, "two_person_aliases", frozenset({"production"}))
    client, token = login(console_world, console_world.alice)
    before = _state(console_world)
    for path, data in (
        ("/models/demo/promote", {"version": "4", "reason": "better"}),
        ("/models/demo/rollback", {"alias": "production", "reason": "undo"}),
    ):
        refused = client.post(path, data={**data, "break_glass": "  ", "csrf_token": token})
        assert refused.status_code == 403, refused.text
        assert "Second admin or break-glass reason required" in refused.text
        assert "demo@production is a two-person alias" in refused.text
        assert "Nothing was changed" in refused.text
    assert _state(console_world) == before

    promoted = client.post(
        "/models/demo/promote",
        data={"version": "4", "reason": "better", "break_glass": "outage", "csrf_token": token},
    )
    assert promoted.status_code == 303, promoted.text
    assert registry.resolve("demo@production").version == 4
    rolled_back = client.post(
        "/models/demo/rollback",
        data={"alias": "production", "reason": "undo", "break_glass": "still", "csrf_token": token},
    )
    assert rolled_back.status_code == 303, rolled_back.text
    assert registry.resolve("demo@production").version == before[0]
    moves = registry.history("demo")[-2:]
    assert {e.break_glass_reason for e in moves} == {"outage", "still"}
    assert "Break-glass: outage" in client.get("/models/demo").text


@pytest.mark.parametrize("path", ["/", "/models/demo", "/models/demo/versions/4"])
def test_pages_are_html_outside_the_api_schema(console_world: ConsoleWorld, path: str) -> None:
    client, _ = login(console_world, console_world.alice)
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    schema = httpx.get(console_world.gateway.base_url + "/openapi.json").json()
    assert not [p for p in schema["paths"] if p.startswith("/ui")]


def test_live_traffic_counts_each_version(console_world: ConsoleWorld) -> None:
    openai_client(console_world, console_world.viewer).chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    client, _ = login(console_world, console_world.alice)
    page = client.get("/traffic")
    assert page.status_code == 200
    row = re.search(r"<th scope=\"row\">demo:2</th><td>(\d+)</td>", page.text)
    assert row and int(row.group(1)) >= 1


def test_jobs_are_their_keys_own_and_cancel_from_the_page(
    console_world: ConsoleWorld, tmp_path: Path
) -> None:
    job_id = submit_job(console_world, console_world.viewer, tmp_path)
    viewer, token = login(console_world, console_world.viewer)
    assert job_id in viewer.get("/jobs").text
    other = console_world.gateway.gateway.keys.create("other-tenant")[1]
    stranger, stranger_token = login(console_world, other)
    assert job_id not in stranger.get("/jobs").text
    assert stranger.get(f"/jobs/{job_id}").status_code == 404
    refused = stranger.post(f"/jobs/{job_id}/cancel", data={"csrf_token": stranger_token})
    assert refused.status_code == 404
    page = viewer.get(f"/jobs/{job_id}")
    assert page.status_code == 200 and "Created fine-tuning job" in page.text
    assert viewer.post(f"/jobs/{job_id}/cancel").status_code == 403
    done = viewer.post(f"/jobs/{job_id}/cancel", data={"csrf_token": token})
    assert done.status_code == 303
    assert 'id="job-status">cancelled<' in viewer.get(f"/jobs/{job_id}").text


def test_drift_checks_and_the_loop_timeline_link_each_step(console_world: ConsoleWorld) -> None:
    """A loop cycle as the continuous loop records it, read back through the stores."""
    engine = console_world.gateway.gateway.evaluations.runs.engine
    run = console_world.gateway.gateway.evaluations.runs.list_runs(1, version="demo:4")[0]
    now = utc_now()
    check = DriftStore(engine).record(
        DriftCheck(
            id=new_check_id(),
            created_at=now,
            model="demo",
            version="demo:2",
            window_start=now - timedelta(hours=1),
            window_end=now,
            window_n=120,
            reference={"kind": "traffic"},
            signals=[],
            score=0.42,
            drifted=True,
            alarms=["embedding"],
        )
    )
    events = LoopEvents(engine)
    cycle = new_cycle_id()
    steps = [
        (Step.DRIFT, check.id, {"version": "demo:2", "score": 0.42, "alarms": ["embedding"]}),
        (
            Step.EVALUATION,
            run.id,
            {"suite": run.suite, "version": "demo:2", "metrics": {"upper/exact_match": 0.1}},
        ),
        (Step.DECISION, None, {"retrain": True, "below": ["upper/exact_match"]}),
        (Step.VERSION, "demo:4", {"job": "ftjob-0"}),
        (Step.PROMOTED, "1", {"alias": "production", "from_version": 2, "to_version": 4}),
    ]
    for step, ref, detail in steps:
        events.add(cycle, "demo", "upper-policy", step, ref, **detail)
    client, _ = login(console_world, console_world.alice)
    page = client.get("/models/demo/drift")
    assert page.status_code == 200
    for link in (
        f'href="#{check.id}"',
        f'href="/ui/runs/{run.id}"',
        'href="/ui/models/demo/versions/4"',
    ):
        assert link in page.text
    assert (
        f'<tr id="{check.id}">' in page.text
        and "retrain: upper/exact_match below floor" in page.text
    )
    assert client.get("/models/nope/drift").status_code == 404


def test_logging_out_needs_the_token_and_ends_the_session(console_world: ConsoleWorld) -> None:
    client, token = login(console_world, console_world.bob)
    copied = _client(console_world)  # the same cookie, kept by someone who copied it
    copied.cookies.set(SESSION_COOKIE, client.cookies[SESSION_COOKIE], path="/ui")
    assert client.post("/logout").status_code == 403
    assert client.get("/").status_code == 200
    out = client.post("/logout", data={"csrf_token": token})
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert client.get("/").status_code == 401
    assert copied.get("/").status_code == 401  # ended on the server, not only in the browser


def test_the_cookie_holds_a_session_not_the_key(console_world: ConsoleWorld) -> None:
    client, _ = login(console_world, console_world.alice)
    cookie = client.cookies[SESSION_COOKIE]
    assert console_world.alice not in cookie and not cookie.startswith("llmops-")
    api = openai_client(console_world, cookie)
    with pytest.raises(openai.AuthenticationError):
        api.models.list()  # a stolen console cookie is no API key
    second, _ = login(console_world, console_world.alice)
    assert second.cookies[SESSION_COOKIE] != cookie  # every login, a session of its own


def test_expired_sessions_and_revoked_keys_are_refused(console_world: ConsoleWorld) -> None:
    keys = console_world.gateway.gateway.keys
    temp, secret = keys.create("console-temp", admin=True)
    client, _ = login(console_world, secret)
    expired, _ = login(console_world, secret)
    with keys.engine.begin() as conn:
        conn.execute(
            console_sessions.update()
            .where(console_sessions.c.token_hash == _sha256(expired.cookies[SESSION_COOKIE]))
            .values(expires_at=utc_now() - timedelta(seconds=1))
        )
    page = expired.get("/")
    assert page.status_code == 401 and "expired after 12 hours" in page.text
    assert client.get("/").status_code == 200
    keys.revoke(temp.id)
    assert client.get("/").status_code == 401


def test_creating_admin_keys_asks_for_the_key_again(console_world: ConsoleWorld) -> None:
    """A session left open, or a copied cookie, does not mint admin keys: the form needs the
    session's own API key again, checked on the server (another admin's will not do)."""
    client, token = login(console_world, console_world.alice)
    keys = console_world.gateway.gateway.keys
    form = {"name": "second-admin", "admin": "true", "csrf_token": token}
    for given, says in (
        ({}, "none was given"),
        ({"current_key": "llmops-wrong"}, "the key given is not it"),
        ({"current_key": console_world.bob}, "the key given is not it"),
    ):
        refused = client.post("/keys", data={**form, **given})
        assert refused.status_code == 403 and says in refused.text, refused.text
        assert "no key was created" in refused.text
        assert "second-admin" not in [k.name for k in keys.list_keys()]
    done = client.post("/keys", data={**form, "current_key": f" {console_world.alice} "})
    assert done.status_code == 200 and 'id="new-secret"' in done.text
    assert [k.admin for k in keys.list_keys() if k.name == "second-admin"] == [True]
    plain = client.post("/keys", data={"name": "plain-app", "csrf_token": token})
    assert plain.status_code == 200 and 'id="new-secret"' in plain.text


def test_automl_studies_show_their_pareto_front_to_admins(console_world: ConsoleWorld) -> None:
    """A study of two objectives made straight in the stack's database, as Optuna's own tools
    (and workers elsewhere) would; trial 2 is beaten on both by trial 1."""
    admin, _ = login(console_world, console_world.alice)
    assert "No AutoML studies yet." in admin.get("/automl").text
    url = console_world.gateway.gateway.jobs.stack.resolved_database_url
    study = optuna.create_study(
        storage=url, study_name="console-pareto", directions=["minimize", "maximize"]
    )
    space = {"lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)}
    for lr, values in (
        (1e-4, [1.0, 0.1]),
        (2e-4, [2.0, 0.9]),
        (3e-4, [3.0, 0.5]),
        (1e-3, [4.0, 1.0]),
    ):
        study.add_trial(
            optuna.trial.create_trial(params={"lr": lr}, distributions=space, values=values)
        )
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    listing = admin.get("/automl")
    assert listing.status_code == 200
    row = re.search(r'<tr><td><a href="/ui/automl/console-pareto">.*?</tr>', listing.text, re.S)
    assert row and "4 / 5" in row.group(0) and "minimize" in row.group(0)
    page = admin.get("/automl/console-pareto")
    assert page.status_code == 200
    marked = set(re.findall(r'<tr id="trial-(\d+)" class="best">', page.text))
    assert marked == {"0", "1", "3"}
    assert page.text.count('class="marked"') == 3 and page.text.count('class="point"') == 1
    assert admin.get("/automl/no-such-study").status_code == 404
    viewer, _ = login(console_world, console_world.viewer)
    for path in ("/automl", "/automl/console-pareto"):
        assert viewer.get(path).status_code == 403
    assert 'href="/ui/automl"' in admin.get("/jobs").text
    assert 'href="/ui/automl"' not in viewer.get("/jobs").text
