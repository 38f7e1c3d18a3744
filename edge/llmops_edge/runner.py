"""The edge runner: a bundle folder (an ONNX model, `genai_config.json`, the tokenizer files
and the chat template) answering chat messages on ONNX Runtime GenAI, greedily or sampled.
The bundle's own `chat_template.jinja` turns messages into the prompt, as the gateway does
with the model the bundle was exported from."""

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmops_edge.device import CURRENT
from llmops_edge.errors import EdgeError
from llmops_edge.manifest import REQUIRED_FILE

CHAT_TEMPLATE = "chat_template.jinja"
# Settings with which ONNX Runtime (GenAI) loads a native library (custom operators, provider
# back-ends and plugins), as the registry refuses them (registry.model_files; the edge
# package imports nothing from the stack). A value naming a library file is refused too.
_CODE_KEYS = frozenset(
    {"custom_ops_library", "backend_path", "trt_extra_plugin_lib_paths", "external_ep_libray"}
)
_CODE_KEY_WORDS = re.compile(r"librar|libray|lib_path|plugin", re.IGNORECASE)
_NATIVE_NAME = re.compile(r".*\.(so(\.\d+)*|dylib|dll)", re.IGNORECASE)


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen; temperature 0 is greedy."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise EdgeError(
                "max tokens must be at least 1, temperature at least 0, top-p in (0, 1] and "
                "top-k at least 0"
            )


def _code_settings(value: object, where: str = "") -> list[str]:
    """The dotted paths of the settings under `value` that load native code."""
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _code_settings(item, f"{where}[{i}]")]
    if not isinstance(value, dict):
        return []
    found = []
    for key, item in value.items():
        path = f"{where}.{key}" if where else key
        names_library = isinstance(item, str) and _NATIVE_NAME.fullmatch(item.strip())
        if key in _CODE_KEYS or _CODE_KEY_WORDS.search(key) or names_library:
            found.append(path)
        found += _code_settings(item, path)
    return found


def check_config(folder: Path) -> None:
    """Refuse a bundle whose genai_config.json would make the runtime load a native library
    (the runtime loads it as it opens the model, before any answer)."""
    try:
        found = _code_settings(json.loads((folder / REQUIRED_FILE).read_text()))
    except (ValueError, UnicodeDecodeError):
        raise EdgeError(f"the bundle's {REQUIRED_FILE} is not valid JSON; sync it again") from None
    if found:
        raise EdgeError(
            f"the bundle's {REQUIRED_FILE} sets {', '.join(found[:5])}, which loads a native "
            "library; this runner does not load it. Sync a bundle exported by the stack "
            "(`llm-edge sync`) or remove the setting"
        )


def bundle_folder(path: Path) -> Path:
    """The bundle at `path`: a bundle folder itself, or a device folder's current bundle."""
    if (path / CURRENT).is_symlink():
        path = (path / CURRENT).resolve()
    if not (path / REQUIRED_FILE).is_file():
        raise EdgeError(
            f"{path} is neither a bundle folder (no {REQUIRED_FILE}) nor a device folder with "
            "a current bundle (run `llm-edge sync` first)"
        )
    return path


class EdgeModel:
    def __init__(self, path: Path):
        import onnxruntime_genai as og  # loaded with the model: enroll and sync never need it

        self.og = og
        self.folder = bundle_folder(path)
        check_config(self.folder)
        try:
            self.model = og.Model(str(self.folder))
            self.tokenizer = og.Tokenizer(self.model)
        except Exception as err:  # the runtime raises plain RuntimeErrors
            raise EdgeError(f"ONNX Runtime GenAI cannot load {self.folder}: {err}") from None
        template = self.folder / CHAT_TEMPLATE
        self.template = template.read_text() if template.is_file() else None
        model = json.loads((self.folder / REQUIRED_FILE).read_text())["model"]
        self.vocab_size = int(model["vocab_size"])
        self.context_length = int(model.get("context_length", 0)) or None

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            json.dumps(messages), template_str=self.template, add_generation_prompt=True
        )
        return [int(t) for t in self.tokenizer.encode(text)]

    def tokens(self, messages: list[dict[str, str]], sampling: Sampling) -> Iterator[int]:
        """The answer's tokens as they are chosen, up to the end of the turn."""
        og = self.og
        ids = self.prompt_ids(messages)
        max_length = len(ids) + sampling.max_tokens
        if self.context_length is not None:
            if len(ids) >= self.context_length:
                raise EdgeError(
                    f"the prompt is {len(ids)} tokens; this model reads at most "
                    f"{self.context_length - 1}"
                )
            max_length = min(max_length, self.context_length)
        options: dict[str, float | int | bool] = {"max_length": max_length}
        if sampling.temperature == 0:
            options["do_sample"] = False
        else:
            options.update(
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k or self.vocab_size,
                random_seed=sampling.seed if sampling.seed is not None else random.randrange(2**31),
            )
        params = og.GeneratorParams(self.model)
        params.set_search_options(**options)
        generator = og.Generator(self.model, params)
        generator.append_tokens(ids)
        eos = {int(t) for t in self.tokenizer.eos_token_ids}
        while not generator.is_done():
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in eos:
                break
            yield token

    def stream(self, messages: list[dict[str, str]], sampling: Sampling) -> Iterator[str]:
        """The answer's text, piece by piece as tokens are chosen (a character split over
        several tokens comes with its last one)."""
        decoder = self.tokenizer.create_stream()
        for token in self.tokens(messages, sampling):
            yield decoder.decode(token)

    def answer(self, messages: list[dict[str, str]], sampling: Sampling) -> str:
        return self.tokenizer.decode(list(self.tokens(messages, sampling)))
