"""A prompt's interpretable features for Captum: spans of its token ids (a token, a word, or a
whole message), each replaced by a baseline token when absent.

The chat template's own tokens are never features, nor are tokens of whitespace alone. A
perturbation keeps the prompt's length, so the forward passes of a batch share one shape and
every row shares the prompt up to its first absent feature."""

import re
from dataclasses import dataclass

import torch
from captum.attr import TextTokenInput
from transformers import PreTrainedTokenizerBase

from evals.errors import invalid
from evals.explain.protocol import Granularity

_WORD = re.compile(r"\w+|[^\w\s]+")  # words, and runs of punctuation
_SEGMENT = re.compile(r"[^\n.!?]+[.!?]*")  # a prompt's sentences and lines


@dataclass(frozen=True)
class Message:
    role: str
    content: str


class PromptFeatures(TextTokenInput):
    """The features of one prompt, as Captum's LLM attribution expects a text token input."""

    def __init__(self, ids: list[int], spans: list[list[int]], labels: list[str], baseline: int):
        feature_of = torch.full((len(ids),), -1, dtype=torch.long)
        for feature, positions in enumerate(spans):
            feature_of[positions] = feature
        self.inp_tensor = torch.tensor([ids])
        self.itp_mask = (feature_of >= 0).unsqueeze(0)  # the tokens gradient methods attribute
        self.itp_tensor = self.inp_tensor[self.itp_mask].unsqueeze(0)
        self.feature_of = feature_of
        self.values = labels
        self.n_itp_features = len(labels)
        self.baselines = baseline
        self.skip_tokens = None
        self.tokenizer = None

    @property
    def ids(self) -> list[int]:
        return self.inp_tensor[0].tolist()

    def to_tensor(self) -> torch.Tensor:
        return torch.ones(1, self.n_itp_features)

    def to_model_input(self, perturbed_tensor: torch.Tensor | None = None) -> torch.Tensor:
        """The token ids for each row of presence flags (1: present)."""
        if perturbed_tensor is None:
            return self.inp_tensor
        rows = perturbed_tensor.size(0)
        ids = self.inp_tensor.expand(rows, -1).clone().to(perturbed_tensor.device)
        featured = self.feature_of >= 0
        absent = torch.zeros_like(ids, dtype=torch.bool)
        absent[:, featured] = perturbed_tensor[:, self.feature_of[featured]] != 1
        ids[absent] = self.baselines
        return ids

    def token_features(self) -> "PromptFeatures":
        """The same prompt with each featured token a feature of its own (gradient methods
        attribute to tokens; `tokens_to_features` sums them back)."""
        positions = (self.feature_of >= 0).nonzero().flatten().tolist()
        labels = [str(p) for p in positions]
        return PromptFeatures(self.ids, [[p] for p in positions], labels, self.baselines)

    def tokens_to_features(self, token_attr: torch.Tensor) -> torch.Tensor:
        """Sum attributions of the featured tokens (last dimension) into their features."""
        index = self.feature_of[self.feature_of >= 0].to(token_attr.device)
        out = token_attr.new_zeros(*token_attr.shape[:-1], self.n_itp_features)
        return out.index_add(-1, index, token_attr)


def baseline_id(tokenizer: PreTrainedTokenizerBase, baseline: str) -> int:
    """`pad`, `unk`, or a token of the vocabulary."""
    if baseline in ("pad", "unk"):
        token_id = getattr(tokenizer, f"{baseline}_token_id")
        if token_id is None:
            raise invalid(
                f"this model's tokenizer has no {baseline} token; give another baseline "
                "(`pad`, `unk` or one of its tokens)",
                param="baseline",
            )
        return token_id
    token_id = tokenizer.get_vocab().get(baseline)
    if token_id is None:
        raise invalid(
            f"the baseline {baseline!r} is not a token of this model's vocabulary; give `pad`, "
            "`unk` or one of its tokens",
            param="baseline",
        )
    return token_id


def prompt_features(
    tokenizer: PreTrainedTokenizerBase,
    *,
    messages: list[Message] | None = None,
    prompt: str | None = None,
    granularity: Granularity = "words",
    baseline: str = "pad",
) -> PromptFeatures:
    """Tokenize the prompt as the gateway does (chat messages through the model's template)
    and split what the caller wrote into features."""
    if messages is not None:
        try:
            text = tokenizer.apply_chat_template(
                [{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=True,
                tokenize=False,
            )
        except Exception as err:  # the template's own message says what is wrong
            raise invalid(
                f"the messages do not fit the model's chat template: {err}", param="messages"
            ) from None
        regions = _message_regions(text, [m.content for m in messages])
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    else:
        assert prompt is not None
        text, regions = prompt, [(0, len(prompt))]
        encoded = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    if granularity == "segments":
        pieces = regions if messages is not None else _matches(_SEGMENT, text, regions)
    elif granularity == "words":
        pieces = _matches(_WORD, text, regions)
    else:
        pieces = []
    spans: list[list[int]] = []
    labels: list[str] = []
    if granularity == "tokens":
        for position, (start, end) in enumerate(offsets):
            inside = any(a <= start and end <= b for a, b in regions)
            if inside and text[start:end].strip():  # whitespace alone is no feature
                spans.append([position])
                labels.append(text[start:end])
    else:
        for a, b in pieces:
            positions = [p for p, (s, e) in enumerate(offsets) if e > s and s < b and e > a]
            # a token shared with the previous piece (a leading space) stays with it
            positions = [p for p in positions if not spans or p not in spans[-1]]
            if positions:
                spans.append(positions)
                labels.append(text[a:b])
    if not spans:
        raise invalid(
            "the prompt has no text to attribute to; give a prompt or a message with content",
            param="messages" if messages is not None else "prompt",
        )
    return PromptFeatures(ids, spans, labels, baseline_id(tokenizer, baseline))


def _message_regions(text: str, contents: list[str]) -> list[tuple[int, int]]:
    """Where each message's content lies in the rendered template, in order."""
    regions, cursor = [], 0
    for content in contents:
        start = text.find(content, cursor) if content else -1
        if start >= 0:
            regions.append((start, start + len(content)))
            cursor = start + len(content)
    return regions


def _matches(pattern: re.Pattern[str], text: str, regions: list[tuple[int, int]]):
    return [
        (a + m.start(), a + m.end())
        for a, b in regions
        for m in pattern.finditer(text[a:b])
        if m.group().strip()
    ]
