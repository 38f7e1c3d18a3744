"""ONNX exports served by the gateway on ONNX Runtime GenAI (the `onnx` backend): the same
API, the same answers as the version they were exported from."""

from pathlib import Path

import httpx
import openai
import pytest

from finetune.export.onnx import export_onnx
from tests.serving.conftest import running_gateway

pytestmark = pytest.mark.slow

QUESTIONS = ["What is 12 + 30?", "What colour is the gubbin?", "Upper-case: hello"]


def test_an_onnx_export_answers_as_its_source_through_the_gateway(
    tmp_path: Path, demo_model_dir: Path
) -> None:
    with running_gateway(tmp_path / "home", demo_model_dir) as gw:
        export_onnx(gw.registry, "demo:1", "fp32", name="demo-onnx", prompts=QUESTIONS[:1])
        gw.registry.set_alias("demo-onnx", "production", 1)
        client = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key="unused", max_retries=0)
        assert "demo-onnx" in {m.id for m in client.models.list().data}
        for question in QUESTIONS:
            kwargs = {
                "messages": [{"role": "user", "content": question}],
                "temperature": 0,
                "max_tokens": 16,
            }
            source = client.chat.completions.create(model="demo", **kwargs)
            exported = client.chat.completions.create(model="demo-onnx", **kwargs)
            assert exported.choices[0].message.content == source.choices[0].message.content
            assert exported.usage == source.usage
            streamed = "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(model="demo-onnx", stream=True, **kwargs)
                if c.choices
            )
            assert streamed == source.choices[0].message.content
        sampled = client.completions.create(
            model="demo-onnx", prompt="Sort: dcba", max_tokens=5, temperature=1.0, seed=1
        )
        assert sampled.usage.completion_tokens <= 5
        with pytest.raises(openai.BadRequestError, match="logprobs cannot be served by the onnx"):
            client.completions.create(model="demo-onnx", prompt="hi", max_tokens=2, logprobs=1)
        metrics = httpx.get(f"{gw.base_url}/metrics").text
        assert 'backend="onnx",endpoint="chat",model="demo-onnx:1"' in metrics
