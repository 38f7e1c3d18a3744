"""GGUF exports (llama.cpp's file format) of Llama-architecture versions, written with the
`gguf` package: weights under llama.cpp's tensor names (f32, or q8_0 / q4_0 blocks), the
model's hyperparameters, its byte-level BPE tokenizer and its chat template as metadata.
The file is read back twice before it is registered: by `gguf`'s reader (every tensor and
key is there) and by transformers' GGUF loader, an independent implementation of llama.cpp's
conventions, whose greedy answers must match the source's."""

import json
from functools import partial
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.errors import ErrorCode
from finetune.errors import FinetuneError
from finetune.export.checked import OnStage, checked_export
from finetune.export.parity import Parity, Precision, default_prompts, greedy_torch
from registry.entities import ModelVersion, VersionFormat
from registry.service import Registry

FILE_NAME = "model.gguf"
QUANT = {
    "fp32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "int8": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "int4": (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
}
CONTROL_TOKEN = gguf.TokenType.CONTROL
NORMAL_TOKEN = gguf.TokenType.NORMAL


def _refuse(reason: str) -> FinetuneError:
    return FinetuneError(
        ErrorCode.INVALID, f"cannot write this model as GGUF: {reason}", param="ref"
    )


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's rotary layout of q / k rows to llama.cpp's (convert_hf_to_gguf.py)."""
    rows = weights.shape[0]
    return (
        weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _add_hyperparameters(writer: gguf.GGUFWriter, config: dict, name: str) -> None:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_parameters") or {}
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads", heads))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])


def _add_tokenizer(writer: gguf.GGUFWriter, source_dir: Path, vocab_size: int) -> None:
    spec = json.loads((source_dir / "tokenizer.json").read_text())
    model = spec["model"]
    if model["type"] != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise _refuse("only byte-level BPE tokenizers are written (llama.cpp's gpt2 vocab)")
    tokens = [""] * vocab_size
    for token, index in model["vocab"].items():
        tokens[index] = token
    special = {t["id"] for t in spec["added_tokens"] if t["special"]}
    for added in spec["added_tokens"]:
        tokens[added["id"]] = added["content"]
    if "" in tokens:
        raise _refuse("the tokenizer leaves ids of the embedding without a token")
    tokenizer = AutoTokenizer.from_pretrained(source_dir)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [CONTROL_TOKEN if i in special else NORMAL_TOKEN for i in range(vocab_size)]
    )
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    for add, token in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_eos_token_id, tokenizer.eos_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
    ):
        if token is not None:
            add(token)
    writer.add_add_bos_token(False)  # the chat template writes <bos> itself
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def build_gguf(source_dir: Path, out_dir: Path, precision: Precision) -> None:
    config = json.loads((source_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise _refuse(f"model type {config.get('model_type')!r}; GGUF export writes llama")
    quant, file_type = QUANT[precision]
    weights: dict[str, np.ndarray] = {}
    for shard in sorted(source_dir.glob("*.safetensors")):
        weights |= load_file(shard)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)

    writer = gguf.GGUFWriter(str(out_dir / FILE_NAME), "llama")
    _add_hyperparameters(writer, config, source_dir.name)
    _add_tokenizer(writer, source_dir, config["vocab_size"])
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for hf_name, data in weights.items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise _refuse(f"llama.cpp has no tensor for {hf_name}")
        data = data.astype(np.float32)
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, heads)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, kv_heads)
        block = gguf.GGML_QUANT_SIZES[quant][0]
        if (
            quant is not gguf.GGMLQuantizationType.F32
            and data.ndim == 2
            and data.shape[1] % block == 0
        ):
            writer.add_tensor(name, gguf.quants.quantize(data, quant), raw_dtype=quant)
        else:  # norms, and rows that do not split into whole blocks, stay f32
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _check_file(out_dir / FILE_NAME, {names.get_name(n, (".weight", ".bias")) for n in weights})
    _check_tokenizer(out_dir / FILE_NAME, source_dir)


def _check_file(path: Path, tensors: set[str]) -> None:
    """Read the file back with `gguf`'s own reader: the architecture and every tensor."""
    reader = gguf.GGUFReader(path)
    architecture = reader.fields["general.architecture"]
    if bytes(architecture.parts[-1]).decode() != "llama":
        raise _refuse("the written file does not read back as llama")
    missing = tensors - {t.name for t in reader.tensors}
    if missing:
        raise _refuse(f"the written file lacks {sorted(missing)}")


def _check_tokenizer(path: Path, source_dir: Path) -> None:
    """The tokenizer the file describes, as transformers builds it, must cut text as the
    source's does and carry its chat template."""
    source = AutoTokenizer.from_pretrained(source_dir)
    written = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    texts = [
        source.apply_chat_template([{"role": "user", "content": q}], tokenize=False)
        for q in [*default_prompts(8), "  two  spaces,\ttabs\nand 1234567 digits: ok?!"]
    ]
    for text in texts:
        if (
            written(text, add_special_tokens=False).input_ids
            != source(text, add_special_tokens=False).input_ids
        ):
            raise _refuse(f"its tokenizer, read back, cuts {text!r} differently")
    if written.chat_template != source.chat_template:
        raise _refuse("the chat template does not read back")


def greedy_gguf(out_dir: Path, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy answers of the file as transformers' GGUF loader reads it."""
    model = AutoModelForCausalLM.from_pretrained(out_dir, gguf_file=FILE_NAME, dtype=torch.float32)
    return greedy_torch(model, prompts, max_new_tokens)


def export_gguf(
    registry: Registry,
    ref: str,
    precision: Precision = "int8",
    *,
    name: str | None = None,
    prompts: list[str] | None = None,
    min_agreement: float | None = None,
    on_stage: OnStage | None = None,
) -> tuple[ModelVersion, Parity]:
    return checked_export(
        registry,
        ref,
        format=VersionFormat.GGUF,
        precision=precision,
        build=partial(build_gguf, precision=precision),
        greedy=lambda out_dir: partial(greedy_gguf, out_dir),
        tags={"runtime": "llama.cpp", "gguf_type": QUANT[precision][0].name.lower()},
        name=name,
        prompts=prompts,
        min_agreement=min_agreement,
        on_stage=on_stage,
    )
