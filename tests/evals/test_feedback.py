"""`/v1/feedback` on a running gateway with keys: feedback on one's own answers only, stored
with the version that answered; other keys' requests do not exist for the caller. Only
corrections from keys with the teach scope reach the loop's training set, at most so many
per key, and with review on only those an admin approved (`llm-evals feedback approve`)."""

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from evals.cli import main as evals_main
from evals.continuous.dataset import labelled_rows, write_training_set
from evals.continuous.policy import LabelledConfig
from tests.serving.conftest import LIMITS, RunningGateway, running_gateway

CHAT = [{"role": "user", "content": "What colour is the zorblax?"}]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def keyed(home: Path, random_model_dir: Path) -> Iterator[RunningGateway]:
    with running_gateway(home, random_model_dir, limits=LIMITS) as gw:
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


def _correct(gw: RunningGateway, secret: str, correction: str) -> dict:
    """Ask as this key, then correct the answer; the stored feedback."""
    given = _feedback(gw, secret, request_id=_answer(gw, secret), correction=correction)
    assert given.status_code == 200, given.text
    return given.json()


def _labelled(gw: RunningGateway, **config) -> list[str]:
    """The corrected answers the loop would evaluate and train on now (held out or not)."""
    labelled = labelled_rows(
        gw.gateway.feedback.engine, gw.gateway.traffic, ["demo:1"],
        LabelledConfig(holdout=0.3, **config),
    )  # fmt: skip
    return [row["messages"][-1]["content"] for row in [*labelled.train, *labelled.held_out]]


def test_a_correction_from_a_key_without_the_teach_scope_never_reaches_the_training_set(
    keyed: RunningGateway, tmp_path: Path
) -> None:
    keys = keyed.gateway.keys
    _, plain = keys.create("plain")
    _, teacher = keys.create("teacher", teach=True)
    _, admin = keys.create("ops-teach", admin=True)

    untaught = [_correct(keyed, plain, f"plain says {i}") for i in range(6)]
    taught = [_correct(keyed, teacher, f"teacher says {i}") for i in range(6)]
    assert {f["teach"] for f in untaught} == {False} and {f["teach"] for f in taught} == {True}
    # an admin may teach, also on a request another key made
    asked = _answer(keyed, plain)
    by_admin = _feedback(keyed, admin, request_id=asked, correction="admin says")
    assert by_admin.json()["teach"] is True

    used = _labelled(keyed)
    assert not [text for text in used if text.startswith("plain says")]
    assert {f"teacher says {i}" for i in range(6)} | {"admin says"} <= set(used)
    labelled = labelled_rows(
        keyed.gateway.feedback.engine, keyed.gateway.traffic, ["demo:1"],
        LabelledConfig(holdout=0.01),
    )  # fmt: skip
    train = write_training_set(tmp_path, labelled.train, []).read_text()
    assert "teacher says" in train and "plain says" not in train


def test_the_per_key_cap_holds(keyed: RunningGateway) -> None:
    keys = keyed.gateway.keys
    _, eager = keys.create("eager", teach=True)
    _, other = keys.create("other", teach=True)
    for i in range(5):
        _correct(keyed, eager, f"eager says {i}")
    for i in range(2):
        _correct(keyed, other, f"other says {i}")

    used = _labelled(keyed, max_per_key=3)
    assert sorted(t for t in used if t.startswith("eager")) == [f"eager says {i}" for i in range(3)]
    assert sorted(t for t in used if t.startswith("other")) == ["other says 0", "other says 1"]
    assert len([t for t in _labelled(keyed, max_per_key=5) if t.startswith("eager")]) == 5


def _evals(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as code:
        evals_main(argv)
    captured = capsys.readouterr()
    return code.value.code, captured.out, captured.err


def test_with_review_on_unapproved_corrections_are_not_used_and_approved_ones_are(
    keyed: RunningGateway, home: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("LLMOPS_HOME", str(home))
    monkeypatch.setenv("LLMOPS_ACTOR", "reviewer")
    keys = keyed.gateway.keys
    careful, careful_secret = keys.create("careful", teach=True)
    texts = ("reviewed good", "reviewed bad", "unseen")
    good, bad, unseen = (_correct(keyed, careful_secret, text) for text in texts)
    assert {good["review"], bad["review"], unseen["review"]} == {"pending"}
    reviewing = {"review": True, "max_per_key": 1000}
    assert not {"reviewed good", "reviewed bad", "unseen"} & set(_labelled(keyed, **reviewing))

    code, out, err = _evals(["--json", "feedback", "list", "--key", careful.id], capsys)
    assert code == 0, err
    listed = json.loads(out)
    assert [c["correction"] for c in listed] == ["reviewed good", "reviewed bad", "unseen"]
    assert listed[0]["messages"] == [*CHAT]  # the prompt the admin judges the correction by
    assert _evals(["feedback", "approve", good["id"]], capsys)[:2] == (0, "approved 1 correction\n")
    assert _evals(["feedback", "reject", bad["id"]], capsys)[0] == 0

    used = set(_labelled(keyed, **reviewing))
    assert "reviewed good" in used and not {"reviewed bad", "unseen"} & used
    # without review, a rejected correction stays out too
    unreviewed = set(_labelled(keyed, max_per_key=1000))
    assert {"reviewed good", "unseen"} <= unreviewed and "reviewed bad" not in unreviewed
    _, approved, _ = _evals(["--json", "feedback", "list", "--state", "approved"], capsys)
    assert [(c["id"], c["reviewed_by"]) for c in json.loads(approved)] == [(good["id"], "reviewer")]

    # a key found out: everything it gave is rejected at once
    assert _evals(["feedback", "reject", "--key", careful.id], capsys)[:2] == (
        0, "rejected 2 corrections\n"
    )  # fmt: skip
    assert not {"reviewed good", "unseen"} & set(_labelled(keyed, max_per_key=1000))

    # corrections from keys without the teach scope are not reviewed: they never train
    _, plain = keys.create("plain-reviewed")
    untaught = _correct(keyed, plain, "not a teacher")
    code, _, err = _evals(["feedback", "approve", untaught["id"]], capsys)
    assert code == 2 and "no correction from a key allowed to teach" in err
    assert len(err.strip().splitlines()) == 1
