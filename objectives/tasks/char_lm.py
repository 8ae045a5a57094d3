"""A character-level GPT (nanoGPT style) on any local UTF-8 text file, with a held-out tail.

The text's characters form the vocabulary. The last `val_fraction` of the file is the
validation text; both parts are cut into examples of `block_size` characters (training windows
start every `stride` characters, validation blocks do not overlap), each target being the input
shifted by one character.

Loss: next-character cross-entropy (nats), a mean over every position of the batch. Metric: the
same cross-entropy on the validation blocks, to minimize (`study.metric: val_loss`,
`study.direction: minimize`); bits per character are `val_loss / ln 2` (0.693 nats = 1 bpc).
Each example is `block_size` tokens (`tokens_per_example`, for `budget.unit: tokens`).

Options: path, block_size (128), val_fraction (0.1), stride (block_size), n_layer (4), n_head (4),
n_embd (128), dropout (0.0), max_train (keep the first N training windows; 0 keeps all).
"""

from __future__ import annotations

import math
import os
from functools import lru_cache

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from objectives.task import Task, TrialSettings
from objectives.tasks.datafiles import DataFileError, data_path, option

EXPECTED = "a UTF-8 text file"


@lru_cache(maxsize=2)
def char_blocks(path: str, block_size: int, val_fraction: float, stride: int, max_train: int):
    """(x_train, y_train, x_val, y_val, vocabulary): int64 [N, block_size] each; read once per process."""
    if not os.path.isfile(path):
        raise DataFileError(path, f"expected {EXPECTED}, found a folder")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise DataFileError(path, f"expected {EXPECTED}: byte {err.start} is not UTF-8") from None
    vocab = sorted(set(text))
    ids = torch.tensor([ord(c) for c in text], dtype=torch.int64)
    if len(vocab):
        lookup = torch.zeros(max(ord(c) for c in vocab) + 1, dtype=torch.int64)
        lookup[torch.tensor([ord(c) for c in vocab])] = torch.arange(len(vocab))
        ids = lookup[ids]
    n_val = int(len(ids) * val_fraction)
    train, val = ids[: len(ids) - n_val], ids[len(ids) - n_val :]
    need = block_size + 1
    if len(train) < need or len(val) < need:
        raise DataFileError(path, f"expected at least {block_size + 1} characters in the training part and in "
                                  f"the held-out tail (block_size {block_size}, val_fraction {val_fraction}); "
                                  f"got {len(train)} and {len(val)} of {len(ids)}")

    def windows(seq: Tensor, step: int) -> tuple[Tensor, Tensor]:
        starts = torch.arange(0, len(seq) - need + 1, step)
        idx = starts[:, None] + torch.arange(need)
        blocks = seq[idx]
        return blocks[:, :-1].contiguous(), blocks[:, 1:].contiguous()

    x_train, y_train = windows(train, stride)
    if max_train > 0:
        x_train, y_train = x_train[:max_train], y_train[:max_train]
    x_val, y_val = windows(val, block_size)
    return x_train, y_train, x_val, y_val, "".join(vocab)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.n_head = n_head
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in self.qkv(x).split(c, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_drop(self.proj(y.transpose(1, 2).contiguous().view(b, t, c)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd),
                                 nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    """Token and position embeddings, pre-norm blocks, a final LayerNorm, a tied output layer."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, dropout: float):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, n_embd)
        self.pos = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.head.weight = self.tok.weight
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by depth
            if name.endswith(("proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: Tensor) -> Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.tok(idx) + self.pos(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def next_char_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy in nats, a mean over every position: a batch mean, as every example has
    the same length."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def char_lm(settings: TrialSettings) -> Task:
    path = data_path(settings, EXPECTED, sample="char_lm")
    block_size = option(settings, "block_size", 128, int, low=1)
    x_train, y_train, x_val, y_val, vocab = char_blocks(
        path, block_size, option(settings, "val_fraction", 0.1, float, 0.0, 0.9),
        option(settings, "stride", block_size, int, low=1), option(settings, "max_train", 0),
    )
    n_head = option(settings, "n_head", 4, int, low=1)
    n_embd = option(settings, "n_embd", 128, int, low=1)
    if n_embd % n_head:
        raise DataFileError("objective.options.n_embd", f"expected a multiple of n_head ({n_head}), got {n_embd}")
    model = CharGPT(len(vocab), block_size, option(settings, "n_layer", 4, int, low=1), n_head, n_embd,
                    option(settings, "dropout", 0.0, float, 0.0, 0.9))
    return Task(model, (x_train, y_train), (x_val, y_val), next_char_loss, next_char_loss,
                tokens_per_example=block_size, metric_name="val_loss")
