"""The edge runner answers with the bundle's chat template as eager PyTorch answers with the
model it was exported from (token for token: the untrained model's text is not valid UTF-8
throughout, which decoders render differently), and samples repeatably with a seed."""

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune.export.parity import greedy_torch
from llmops_edge.errors import EdgeError
from llmops_edge.runner import EdgeModel, Sampling

pytestmark = pytest.mark.slow
QUESTIONS = ["What is 12 + 30?", "Upper-case: hello", "Sort: dcba"]


def test_greedy_answers_are_those_of_the_source_model(
    onnx_dir: Path, random_model_dir: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    model = EdgeModel(onnx_dir)
    source = AutoModelForCausalLM.from_pretrained(random_model_dir)
    for question in QUESTIONS:
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": question},
        ]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert model.prompt_ids(messages) == ids
        tokens = greedy_torch(source, [ids], 10)[0]
        if tokenizer.eos_token_id in tokens:
            tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
        assert list(model.tokens(messages, Sampling(max_tokens=10))) == tokens


def test_sampling_is_repeatable_with_a_seed_and_varies_without(onnx_dir: Path) -> None:
    model = EdgeModel(onnx_dir)
    question = [{"role": "user", "content": QUESTIONS[0]}]
    hot = Sampling(max_tokens=12, temperature=1.5, top_p=0.95, seed=7)
    assert model.answer(question, hot) == model.answer(question, hot)
    answers = {model.answer(question, Sampling(12, 1.5, seed=seed)) for seed in range(4)}
    assert len(answers) > 1 and model.answer(question, Sampling(12)) not in answers - {""}
    with pytest.raises(EdgeError, match="temperature at least 0"):
        Sampling(temperature=-1)
    with pytest.raises(EdgeError, match="nor a device folder with a current bundle"):
        EdgeModel(onnx_dir.parent)
