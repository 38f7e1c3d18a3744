"""Sentence embeddings on the local engine: a sentence-transformers model directory, run on
the gateway's token ids (the same ids it counted and checked against the model's limit)."""

import threading
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer

BATCH_SIZE = 32  # inputs per forward pass


class EmbeddingRunner:
    """One loaded embedding model. A forward pass at a time: requests share the model's
    threads rather than compete for them."""

    def __init__(self, path: Path):
        self.model = SentenceTransformer(str(path), local_files_only=True)
        self.model.eval()
        tokenizer = self.model.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.token_types = "token_type_ids" in tokenizer.model_input_names
        self._lock = threading.Lock()

    def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """The model's sentence embedding (its pooling and normalisation) of each input."""
        vectors: list[list[float]] = []
        for start in range(0, len(inputs), BATCH_SIZE):
            chunk = inputs[start : start + BATCH_SIZE]
            length = max(len(ids) for ids in chunk)
            ids = torch.full((len(chunk), length), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), length), dtype=torch.long)
            for row, given in enumerate(chunk):
                ids[row, : len(given)] = torch.tensor(given)
                mask[row, : len(given)] = 1
            features = {"input_ids": ids, "attention_mask": mask}
            if self.token_types:
                features["token_type_ids"] = torch.zeros_like(ids)
            features = {k: v.to(self.model.device) for k, v in features.items()}
            with self._lock, torch.inference_mode():
                out = self.model(features)["sentence_embedding"]
            vectors.extend(out.float().tolist())
        return vectors
