"""Explanations without a gateway (`llm-evals explain`): the command line loads the version
from the registry itself and answers with Hugging Face `generate`."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch

from core.callers import Caller
from evals.explain.service import Bill, LoadedModel, ModelHost
from evals.loading import load_version
from registry.service import Registry


class RegistryModelHost(ModelHost):
    def __init__(self, registry: Registry):
        self.registry = registry

    async def load(self, model: str, caller: Caller) -> LoadedModel:
        found = load_version(self.registry, model)
        version, loaded, tokenizer = found.version, found.model, found.tokenizer

        async def answer(ids: list[int], max_tokens: int) -> list[int]:
            with torch.no_grad():
                out = loaded.generate(
                    torch.tensor([ids]),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    max_new_tokens=max_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            text = tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
            return tokenizer(text, add_special_tokens=False).input_ids

        return LoadedModel(
            ref=version.ref,
            module=loaded,
            embeddings=loaded.get_input_embeddings(),
            tokenizer=tokenizer,
            max_len=loaded.config.max_position_embeddings,
            answer=answer,
        )

    @asynccontextmanager
    async def admit(self, caller: Caller) -> AsyncIterator[None]:
        yield  # one's own machine, one's own limits

    @asynccontextmanager
    async def charge(self, caller: Caller, tokens: int) -> AsyncIterator[Bill]:
        yield Bill(tokens)  # no rate limits on one's own machine
