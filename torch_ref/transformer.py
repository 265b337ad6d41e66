"""The PyTorch reference for transformer.py: nanoGPT's GPT (karpathy/nanoGPT model.py),
bias=True, lm_head tied to wte, written as nanoGPT writes it with three changes:

- the MLP's GELU is nn.GELU(approximate="tanh") (GPT-2's form, as ours; nanoGPT: erf);
- forward(idx) returns the logits at every position (nanoGPT: the last one when no
  targets are given) and computes no loss;
- pos_emb="none" drops wpe, mlp=False drops ln_2 and the MLP (attention-only blocks),
  and init_state/step run generation with a KV cache.

Attention is F.scaled_dot_product_attention(is_causal=True), nanoGPT's "flash" path
(PyTorch >= 2.0); float64 agrees with our explicit masked softmax to ~1e-15. The
parameters are not initialised here: build() loads our arrays by name.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

from torch_ref import load


class LayerNorm(nn.Module):
    """nanoGPT's LayerNorm with an optional bias (here always on)."""

    def __init__(self, ndim, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg.d_model % cfg.n_head == 0
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)   # key, query, value for all heads
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.attn_dropout = nn.Dropout(cfg.dropout)              # used only by step's explicit softmax
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head, self.n_embd, self.dropout = cfg.n_head, cfg.d_model, cfg.dropout

    def qkv(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        return q, k, v

    def out(self, y):
        B, nh, T, hs = y.size()
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)  # re-assemble all head outputs
        return self.resid_dropout(self.c_proj(y))

    def forward(self, x):
        q, k, v = self.qkv(x)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                           dropout_p=self.dropout if self.training else 0,
                                           is_causal=True)
        return self.out(y)

    def step(self, x, cache):
        """x (B, 1, C), cache (K, V) of (B, nh, t, hs) -> y (B, 1, C), new (K, V)."""
        q, k, v = self.qkv(x)
        k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # no mask: only the past
        y = self.attn_dropout(F.softmax(att, dim=-1)) @ v
        return self.out(y), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        if cfg.mlp:
            self.ln_2 = LayerNorm(cfg.d_model)
            self.mlp = MLP(cfg)
        self.has_mlp = cfg.mlp

    def ffwd(self, x):
        return x + self.mlp(self.ln_2(x)) if self.has_mlp else x

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return self.ffwd(x)

    def prefill(self, x):
        """forward(x), also returning this block's keys and values (B, nh, T, hs)."""
        q, k, v = self.attn.qkv(self.ln_1(x))
        x = x + self.attn.out(F.scaled_dot_product_attention(q, k, v, is_causal=True))
        return self.ffwd(x), (k, v)

    def step(self, x, cache):
        y, cache = self.attn.step(self.ln_1(x), cache)
        return self.ffwd(x + y), cache


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        modules = dict(wte=nn.Embedding(cfg.vocab_size, cfg.d_model))
        if cfg.pos_emb == "learned":
            modules["wpe"] = nn.Embedding(cfg.block_size, cfg.d_model)
        modules.update(drop=nn.Dropout(cfg.dropout),
                       h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
                       ln_f=LayerNorm(cfg.d_model))
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # weight tying: named_parameters() lists the shared tensor once, as transformer.wte.weight
        self.transformer.wte.weight = self.lm_head.weight

    def embed(self, idx, pos0):
        T = idx.size(1)
        x = self.transformer.wte(idx)                                       # (B, T, C)
        if self.cfg.pos_emb == "learned":
            if pos0 + T > self.cfg.block_size:
                raise ValueError(f"sequence length {pos0 + T} exceeds block_size {self.cfg.block_size}")
            pos = torch.arange(pos0, pos0 + T, dtype=torch.long, device=idx.device)
            x = x + self.transformer.wpe(pos)                               # (T, C), broadcast over B
        return self.transformer.drop(x)

    def forward(self, idx):
        x = self.embed(idx, 0)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))                       # (B, T, V), every position

    # Generation with a KV cache; the same block_size policy as transformer.py's step:
    # when the cache is full (learned positions), re-encode the last block_size - 1 tokens
    # at positions 0.., then step the new token (nanoGPT generate()'s idx[:, -block_size:]).
    def init_state(self, batch):
        p = self.lm_head.weight
        hs = self.cfg.d_model // self.cfg.n_head
        empty = torch.zeros(batch, self.cfg.n_head, 0, hs, dtype=p.dtype, device=p.device)
        return {"kv": [(empty, empty)] * self.cfg.n_layer,
                "tokens": torch.zeros(batch, 0, dtype=torch.long, device=p.device)}

    def step(self, idx_t, state):
        kv, tokens = state["kv"], state["tokens"]
        learned = self.cfg.pos_emb == "learned"
        if learned and kv[0][0].size(2) == self.cfg.block_size:
            kv = self.init_state(idx_t.size(0))["kv"]
            if tokens.size(1):
                x, kv = self.embed(tokens, 0), []
                for block in self.transformer.h:
                    x, cache = block.prefill(x)
                    kv.append(cache)
        x = self.embed(idx_t[:, None], kv[0][0].size(2))                    # (B, 1, C)
        new_kv = []
        for block, cache in zip(self.transformer.h, kv):
            x, cache = block.step(x, cache)
            new_kv.append(cache)
        if learned:
            tokens = torch.cat([tokens, idx_t[:, None]], 1)[:, -(self.cfg.block_size - 1):] \
                if self.cfg.block_size > 1 else tokens
        return self.lm_head(self.transformer.ln_f(x))[:, 0], {"kv": new_kv, "tokens": tokens}


def build(cfg, params, dtype=torch.float64):
    return load(GPT(cfg).to(dtype), params)
