"""Structured pruning of a Llama-type decoder by surgery on its modules: whole decoder layers,
whole attention heads (their rows of q/k/v and columns of o_proj) and MLP channels (rows of
gate/up, columns of down), the ones with the smallest weight norm first. The same number go
from every layer, so the result saves and loads as one Hugging Face config.

torch-pruning's dependency graph was tried first: on transformers 5.19's Llama, building the
groups of a 2-layer model did not finish in a minute (`DependencyGraph.get_all_groups`), so
the groups, which are known for this architecture, are cut here directly."""

import torch
from torch import nn
from transformers import PreTrainedModel

from finetune.errors import RecipeError
from finetune.prune.recipe import PruningSpec


def _keep(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` highest scores, in their original order."""
    return torch.sort(torch.topk(scores, count).indices).values


def _linear(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """`layer` keeping the rows (dim 0) or columns (dim 1) in `index`."""
    weight = layer.weight.detach().index_select(dim, index).clone()
    out_features, in_features = weight.shape
    new = nn.Linear(
        in_features,
        out_features,
        bias=layer.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    new.weight = nn.Parameter(weight)
    if layer.bias is not None:
        bias = layer.bias.detach()
        new.bias = nn.Parameter(bias.index_select(0, index).clone() if dim == 0 else bias.clone())
    return new


def _norm(weight: torch.Tensor, dim: int, p: int) -> torch.Tensor:
    return weight.detach().abs().pow(p).sum(dim=dim)


def drop_layers(model: PreTrainedModel, indices: list[int]) -> None:
    layers = model.model.layers
    wrong = [i for i in indices if not 0 <= i < len(layers)]
    if wrong:
        raise RecipeError(
            f"pruning.drop_layers: the model has layers 0 to {len(layers) - 1}, not {wrong}",
            param="pruning.drop_layers",
        )
    if len(indices) >= len(layers):
        raise RecipeError(
            "pruning.drop_layers: at least one layer must stay", param="pruning.drop_layers"
        )
    kept = [layer for i, layer in enumerate(layers) if i not in indices]
    for new_index, layer in enumerate(kept):
        layer.self_attn.layer_idx = new_index
    model.model.layers = nn.ModuleList(kept)
    config = model.config
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [t for i, t in enumerate(config.layer_types) if i not in indices]
    config.num_hidden_layers = len(kept)


def prune_mlp(model: PreTrainedModel, ratio: float, p: int) -> None:
    width = model.config.intermediate_size
    keep = width - round(width * ratio)
    if keep < 1:
        raise RecipeError(
            f"pruning.mlp_ratio {ratio} leaves no MLP channel", param="pruning.mlp_ratio"
        )
    for layer in model.model.layers:
        mlp = layer.mlp
        scores = (
            _norm(mlp.gate_proj.weight, 1, p)
            + _norm(mlp.up_proj.weight, 1, p)
            + _norm(mlp.down_proj.weight, 0, p)
        )
        index = _keep(scores, keep)
        mlp.gate_proj = _linear(mlp.gate_proj, index, 0)
        mlp.up_proj = _linear(mlp.up_proj, index, 0)
        mlp.down_proj = _linear(mlp.down_proj, index, 1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = keep
    model.config.intermediate_size = keep


def prune_heads(model: PreTrainedModel, ratio: float, p: int) -> None:
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    if heads != kv_heads:
        raise RecipeError(
            "pruning.heads_ratio: heads are pruned in models without grouped-query attention "
            f"(this one has {heads} query and {kv_heads} key/value heads)",
            param="pruning.heads_ratio",
        )
    keep = heads - round(heads * ratio)
    if keep < 1:
        raise RecipeError(
            f"pruning.heads_ratio {ratio} leaves no attention head of {heads}",
            param="pruning.heads_ratio",
        )
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    for layer in model.model.layers:
        attention = layer.self_attn
        scores = sum(
            _norm(proj.weight, 1, p).view(heads, head_dim).sum(1)
            for proj in (attention.q_proj, attention.k_proj, attention.v_proj)
        ) + _norm(attention.o_proj.weight, 0, p).view(heads, head_dim).sum(1)
        kept_heads = _keep(scores, keep)
        index = (
            kept_heads[:, None] * head_dim + torch.arange(head_dim, device=kept_heads.device)
        ).flatten()
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(attention, name, _linear(getattr(attention, name), index, 0))
        attention.o_proj = _linear(attention.o_proj, index, 1)
    config.head_dim = head_dim
    config.num_attention_heads = keep
    config.num_key_value_heads = keep


def prune_model(model: PreTrainedModel, spec: PruningSpec) -> None:
    """Prune `model` in place as `spec` says (layers first, then heads and MLP channels)."""
    if not hasattr(getattr(model, "model", None), "layers"):
        raise RecipeError(
            f"pruning: {type(model).__name__} is not a decoder with model.layers (Llama-type)",
            param="base_model",
        )
    p = 2 if spec.importance == "l2" else 1
    if spec.drop_layers:
        drop_layers(model, spec.drop_layers)
    if spec.heads_ratio:
        prune_heads(model, spec.heads_ratio, p)
    if spec.mlp_ratio:
        prune_mlp(model, spec.mlp_ratio, p)
