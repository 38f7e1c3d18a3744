"""The running batch's key/value cache: left-padded rows that sequences join and leave between
decoding steps."""

import torch
from transformers import DynamicCache


def _left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class BatchCache:
    """Keys and values of every layer, `[rows, heads, length, head_dim]`, with the attention
    mask `[rows, length]` that marks the left padding."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor):
        self.cache = cache
        self.mask = mask

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    def extend(self, other: "BatchCache") -> None:
        """Append the rows of `other`, left-padding both to the same length."""
        length = max(self.mask.shape[1], other.mask.shape[1])
        layers = []
        for (k1, v1, *_), (k2, v2, *_) in zip(self.cache, other.cache, strict=True):
            layers.append(
                (
                    torch.cat([_left_pad(k1, length, 2), _left_pad(k2, length, 2)]),
                    torch.cat([_left_pad(v1, length, 2), _left_pad(v2, length, 2)]),
                )
            )
        self.cache = DynamicCache(layers)
        self.mask = torch.cat([_left_pad(self.mask, length, 1), _left_pad(other.mask, length, 1)])

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows`, then drop the columns that are padding in every remaining row."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask[index]
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else mask.shape[1]
        layers = [(k[index, :, start:], v[index, :, start:]) for k, v, *_ in self.cache]
        self.cache = DynamicCache(layers)
        self.mask = mask[:, start:]

    def grow(self) -> torch.Tensor:
        """Extend the mask by one real column for the tokens about to be fed; return it."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
        return self.mask
