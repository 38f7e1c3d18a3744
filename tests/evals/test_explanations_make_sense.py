"""On the demo model the explanations point at the right words: the item of a lookup, the
numbers of an addition; removing the top features costs the answer far more than removing
random ones; and `llm-evals explain` draws the heat map."""

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.settings import StackSettings
from evals.cli import main
from evals.explain.explainer import ExplainSettings, explain
from evals.explain.features import Message, prompt_features
from finetune.demo.build import DemoBuild, register_demo_model
from registry.service import open_registry

pytestmark = pytest.mark.slow

# Phrasings and items of my own, not only the training templates.
LOOKUPS = {
    "What colour is the zorblax?": "zorblax",
    "Tell me the colour of the gubbin.": "gubbin",
    "Which colour has the wuzzle?": "wuzzle",
    "Say the colour of the kestrin.": "kestrin",
    "Do you know the colour of the morgle?": "morgle",
}
SUMS = {
    "What is 47 + 38?": ("47", "38"),
    "What is 5 + 91?": ("5", "91"),
    "What is 12 + 7?": ("12", "7"),
    "What is 60 + 33?": ("60", "33"),
    "What is 84 + 9?": ("84", "9"),
}


def _greedy(model, tokenizer, ids: list[int]) -> list[int]:
    import torch

    out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
    return tokenizer(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("method", ["feature_ablation", "shapley"])
def test_explanations_point_at_the_item_and_the_numbers(demo_model_dir: Path, method: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    settings = ExplainSettings(method=method)
    drops, random_drops, first = [], [], 0
    for question, expected in [*LOOKUPS.items(), *SUMS.items()]:
        features = prompt_features(tokenizer, messages=[Message("user", question)])
        answer = _greedy(model, tokenizer, features.ids)
        result = explain(model, model.get_input_embeddings(), tokenizer, features, answer, settings)
        top = [result.features[i] for i in result.top_features[:2]]
        wanted = (expected,) if isinstance(expected, str) else (*expected, "+")
        # the item (a number, or the operator) is among the two words the answer rests on
        # most ("colour", which makes the answer a colour at all, may come first)...
        assert set(top) & set(wanted), (question, tokenizer.decode(answer), top)
        first += top[0] in wanted
        drops.append(result.faithfulness.top_k_drop)
        random_drops.append(result.faithfulness.random_drop)
    assert first >= 8, first  # ...and first in nearly every prompt
    # removing the top-attributed words costs the answer far more than removing random ones
    mean_drop, mean_random = sum(drops) / len(drops), sum(random_drops) / len(random_drops)
    assert mean_drop > 2 * mean_random + 2.0, (drops, random_drops)


def test_the_command_line_prints_top_features_and_draws_a_heat_map(
    demo_build: DemoBuild, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    register_demo_model(open_registry(StackSettings()), demo_build)
    html, png = tmp_path / "out.html", tmp_path / "out.png"
    argv = ["explain", "--model", "demo", "--prompt", "Tell me the colour of the gubbin."]
    with pytest.raises(SystemExit) as exit_code:
        main([*argv, "--method", "shapley", "--html", str(html), "--png", str(png)])
    assert exit_code.value.code == 0
    out = capsys.readouterr().out
    assert "demo:1 answered 'black'" in out
    assert out.splitlines()[1].split()[-1] == "gubbin"  # the top feature
    assert "<table>" in html.read_text() and "gubbin" in html.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(SystemExit) as exit_code:
        main(["explain", "--json", "--model", "demo", "--message", "user:What is 47 + 38?"])
    body = json.loads(capsys.readouterr().out)
    assert body["answer"] == "85" and body["top_features"][0]["feature"] in ("47", "38")

    for bad, says in (
        (["--model", "nope", "--prompt", "x"], "nope"),
        (["--model", "demo"], "exactly one of"),
        (["--model", "demo", "--prompt", "x", "--target", ""], "target"),
        (["--model", "demo", "--prompt", "x", "--method", "saliency"], "saliency"),
        (["--model", "demo", "--message", "no-role"], "ROLE:CONTENT"),
    ):
        with pytest.raises(SystemExit) as exit_code:
            main(["explain", *bad])
        assert exit_code.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("llm-evals: error:") and says in err and len(err.splitlines()) == 1
