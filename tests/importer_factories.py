"""Example factories for ``module:`` sources of the PyTorch importer (see tests/test_importer.py).

Not a test module: it is imported by name, ``module:importer_factories:tiny_lm``,
with this directory on ``sys.path``. The importer calls a factory under
``torch.device("meta")``, so nothing here allocates memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, HIDDEN, HEADS, FFN, LAYERS = 1000, 64, 4, 256, 2


class Block(nn.Module):
    """Pre-norm transformer layer with Megatron-style projection names."""

    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.input_norm = nn.LayerNorm(hidden)
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, hidden, bias=False)
        self.v_proj = nn.Linear(hidden, hidden, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)
        self.mlp_norm = nn.LayerNorm(hidden)
        self.up_proj = nn.Linear(hidden, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        y = self.input_norm(x)
        q, k, v = (
            p(y).view(b, s, self.heads, h // self.heads).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o_proj(a.transpose(1, 2).reshape(b, s, h))
        return x + self.down_proj(F.gelu(self.up_proj(self.mlp_norm(x))))


class TinyLM(nn.Module):
    """Token ids in, logits out: the importer feeds a (batch, seq) LongTensor because it has an embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads = HEADS
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList(Block(HIDDEN, HEADS, FFN) for _ in range(LAYERS))
        self.norm = nn.LayerNorm(HIDDEN)
        self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))


def tiny_lm() -> nn.Module:
    """A bare module: the importer builds the input itself."""
    return TinyLM()


def tiny_blocks(batch: int, seq: int) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A module with example kwargs: float hidden states in, sized by the workload the importer passes."""
    model = nn.Sequential(*(Block(HIDDEN, HEADS, FFN) for _ in range(LAYERS)))
    return model, {"input": torch.zeros(batch, seq, HIDDEN)}
