"""`POST /v1/explanations` on a running gateway, over HTTP, on a tiny untrained model: every
method's shape, adapters, 4-bit weights, limits, access and bad input."""

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from evals.explain.explainer import ExplainSettings, explain
from evals.explain.features import Message, prompt_features
from evals.explain.protocol import METHODS
from tests.serving.conftest import LIMITS, RunningGateway, make_adapter, running_gateway

PROMPT = [{"role": "user", "content": "What colour is the zorblax today?"}]


@pytest.fixture(scope="module")
def explaining(
    tmp_path_factory: pytest.TempPathFactory, random_model_dir: Path
) -> Iterator[RunningGateway]:
    home = tmp_path_factory.mktemp("explain-home")
    with running_gateway(home, random_model_dir, limits=LIMITS) as gw:
        yield gw


def _explain(gw: RunningGateway, key: str | None = None, **body) -> httpx.Response:
    body = {"model": "demo", "messages": PROMPT, **body}
    body = {name: value for name, value in body.items() if value is not None}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{gw.base_url}/v1/explanations", json=body, headers=headers, timeout=120)


def _error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return error


@pytest.mark.parametrize("method", METHODS)  # every method the protocol names runs
def test_every_method_explains_over_http(explaining: RunningGateway, method: str) -> None:
    reply = _explain(explaining, method=method, n_samples=12, n_steps=8, max_tokens=4)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "explanation" and body["model"] == "demo:1"
    features, tokens = body["input_features"], body["output_tokens"]
    assert features == ["What", "colour", "is", "the", "zorblax", "today", "?"]
    assert 1 <= len(tokens) <= 4
    assert len(body["sequence_attributions"]) == len(features)
    if method in ("lime", "kernel_shap"):  # these attribute the whole answer only
        assert body["attributions"] is None
    else:
        assert [len(row) for row in body["attributions"]] == [len(features)] * len(tokens)
    assert any(abs(v) > 0 for v in body["sequence_attributions"])
    meta = body["metadata"]
    if method == "integrated_gradients":
        assert meta["steps"] == 8 and meta["convergence_delta"] >= 0
    elif method != "feature_ablation":
        assert meta["samples"] == 12
    top = body["top_features"]
    assert top[0]["score"] == max(body["sequence_attributions"])
    assert top[0]["feature"] == features[top[0]["index"]]
    faith = body["faithfulness"]
    assert faith["score"] == pytest.approx(faith["top_k_drop"] - faith["random_drop"])
    assert body["usage"]["total_tokens"] > body["usage"]["prompt_tokens"]


def test_tokens_words_and_segments(explaining: RunningGateway) -> None:
    two = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What colour is the zorblax?"},
    ]
    segments = _explain(explaining, messages=two, granularity="segments", target="red").json()
    assert segments["input_features"] == ["Answer briefly.", "What colour is the zorblax?"]
    tokens = _explain(explaining, messages=two, granularity="tokens", target="red").json()
    spelled = "".join(tokens["input_features"]).replace(" ", "")
    assert spelled == "Answerbriefly.Whatcolouristhezorblax?"
    prompt = _explain(
        explaining, messages=None, prompt="First line.\nSecond one? Yes.", granularity="segments"
    ).json()
    assert prompt["input_features"] == ["First line.", "Second one?", " Yes."]


def test_a_target_is_explained_instead_of_the_answer(explaining: RunningGateway) -> None:
    body = _explain(explaining, target="blue and green").json()
    assert body["answer"] == "blue and green"
    tokenizer = AutoTokenizer.from_pretrained(
        explaining.registry.local_copy(explaining.registry.resolve("demo"))
    )
    assert len(body["output_tokens"]) == len(
        tokenizer("blue and green", add_special_tokens=False).input_ids
    )


def test_an_adapter_version_is_explained_through_its_adapter(
    explaining: RunningGateway, random_model_dir: Path, tmp_path: Path
) -> None:
    # LoRA on the embeddings too, as the reverse recipe trains (vLLM cannot load it)
    targets = ("q_proj", "v_proj", "embed_tokens")
    adapter = make_adapter(random_model_dir, tmp_path / "adapter", seed=3, targets=targets)
    registry = explaining.registry
    version = registry.register(
        "demo-tuned", adapter, kind="adapter", format="peft-lora", parent="demo:1"
    )
    settings = {"target": "red", "method": "feature_ablation"}
    base = _explain(explaining, **settings).json()
    tuned = _explain(explaining, model=version.ref, **settings).json()
    assert tuned["model"] == version.ref
    # what the adapter computes in-process with PEFT, attributed the same way
    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    model = AutoModelForCausalLM.from_pretrained(random_model_dir)
    model = PeftModel.from_pretrained(model, adapter).eval()
    features = prompt_features(tokenizer, messages=[Message(**PROMPT[0])])
    answer = tokenizer("red", add_special_tokens=False).input_ids
    local = explain(
        model, model.get_input_embeddings(), tokenizer, features, answer, ExplainSettings()
    )
    assert tuned["sequence_attributions"] == pytest.approx(
        local.attribution.sequence.tolist(), abs=1e-4
    )
    assert tuned["sequence_attributions"] != pytest.approx(base["sequence_attributions"], abs=1e-3)
    gradients = _explain(explaining, model=version.ref, method="integrated_gradients", target="red")
    assert gradients.status_code == 200, gradients.text
    assert any(abs(v) > 0 for v in gradients.json()["sequence_attributions"])


def test_bad_requests_are_clear_errors(explaining: RunningGateway) -> None:
    error = _error(_explain(explaining, method="saliency"), 400, "invalid_request")
    assert "method" in error["message"]
    error = _error(_explain(explaining, granularity="letters"), 400, "invalid_request")
    assert "granularity" in error["message"]
    error = _error(_explain(explaining, target=""), 400, "invalid_request")
    assert "target" in error["message"]
    long = [{"role": "user", "content": "zorblax " * 600}]
    error = _error(_explain(explaining, messages=long), 400, "invalid_request")
    assert "tokens long" in error["message"] and error["param"] == "messages"
    _error(_explain(explaining, model="nope"), 404, "model_not_found")
    error = _error(_explain(explaining, prompt="hi"), 400, "invalid_request")
    assert "exactly one of" in error["message"]
    error = _error(_explain(explaining, baseline="no-such-token"), 400, "invalid_request")
    assert error["param"] == "baseline"
    error = _error(
        _explain(explaining, method="shapley", n_samples=500, granularity="tokens",
                 messages=[{"role": "user", "content": "zorblax " * 40}], target="red"),
        400,
        "invalid_request",
    )  # fmt: skip
    assert "Use fewer samples" in error["message"]


def test_keys_model_allow_lists_and_token_limits_apply(explaining: RunningGateway) -> None:
    keys = explaining.gateway.keys
    _, other = keys.create("other-models", models=("something-else",))
    _, few = keys.create("few-tokens", tpm=300)
    _, enough = keys.create("explainer", models=("demo",), tpm=3000)
    try:
        _error(_explain(explaining), 401, "invalid_api_key")
        _error(_explain(explaining, key=other), 403, "model_not_allowed")
        error = _error(_explain(explaining, key=few, target="red"), 429, "rate_limit_exceeded")
        assert "tokens" in error["message"]
        # an explanation's forward passes count against the key's tokens per minute, so a
        # key good for a hundred short chats is spent after a few explanations
        charged = []
        while len(charged) < 20:
            reply = _explain(explaining, key=enough, target="red")
            if reply.status_code == 429:
                break
            assert reply.status_code == 200, reply.text
            charged.append(reply.json()["usage"]["total_tokens"])
        assert 1 <= len(charged) < 20 and min(charged) > 200
        assert "tokens" in _error(reply, 429, "rate_limit_exceeded")["message"]
    finally:
        for key in keys.list_keys():
            keys.revoke(key.id)


def test_generation_goes_on_while_an_explanation_runs(explaining: RunningGateway) -> None:
    """A long explanation holds the model one forward pass at a time: chat answers meanwhile."""
    finished = threading.Event()
    outcome: dict[str, httpx.Response] = {}

    def long_explanation() -> None:
        outcome["reply"] = _explain(
            explaining, method="shapley", n_samples=400, granularity="tokens", target="red"
        )
        finished.set()

    thread = threading.Thread(target=long_explanation)
    thread.start()
    client = openai.OpenAI(base_url=f"{explaining.base_url}/v1", api_key="x", max_retries=0)
    answered = 0
    while not finished.is_set() and answered < 5:
        client.chat.completions.create(model="demo", messages=PROMPT, max_tokens=4)
        answered += not finished.is_set()
    thread.join()
    assert outcome["reply"].status_code == 200, outcome["reply"].text
    assert answered == 5  # all answered before the explanation ended


def test_a_4bit_version_is_explained(tmp_path: Path, random_model_dir: Path) -> None:
    local = {"quantization": "bnb-4bit"}
    with running_gateway(tmp_path / "home", random_model_dir, limits=LIMITS, local=local) as gw:
        runner = gw.gateway.local
        for method in ("feature_ablation", "shapley", "kernel_shap"):
            reply = _explain(gw, method=method, target="red", n_samples=8)
            assert reply.status_code == 200, reply.text
            assert any(abs(v) > 0 for v in reply.json()["sequence_attributions"])
        (loaded,) = runner._runners.values()
        assert type(loaded.model.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
        # bitsandbytes has no backward pass for its 4-bit kernels here: gradients would be
        # silently zero, so a gradient method is refused with the reason
        error = _error(_explain(gw, method="integrated_gradients"), 400, "method_not_supported")
        assert "4-bit" in error["message"] and error["param"] == "method"


def test_a_client_that_goes_away_stops_its_explanation(
    tmp_path: Path, random_model_dir: Path
) -> None:
    # one perturbation per forward pass, 500 x 25 of them: about a minute uninterrupted
    slow = {"max_batch_tokens": 48, "max_tokens_per_explanation": 10**8}
    question = [{"role": "user", "content": "What colour is the zorblax " * 5}]
    with running_gateway(
        tmp_path / "home", random_model_dir, limits=LIMITS, explanations=slow
    ) as gw:
        service = gw.gateway.explanations
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{gw.base_url}/v1/explanations",
                json={"model": "demo", "messages": question, "method": "shapley",
                      "n_samples": 500, "granularity": "tokens", "target": "red"},
                timeout=2.0,
            )  # fmt: skip
        assert service.running == 1
        deadline = time.monotonic() + 3
        while service.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.running == 0
        metrics = httpx.get(f"{gw.base_url}/metrics").text
        assert "llmops_explanations_running 0.0" in metrics
