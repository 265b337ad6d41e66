"""The PyTorch reference for mamba2.py: tommyip/mamba2-minimal's Mamba2LMHeadModel
(mamba2.py there; its ssd() and segsum() are mamba_ssm's ssd_minimal.py), with ngroups = 1,
the lm_head tied to the embedding, and these changes:
- no "backbone." prefix: the names are embedding.weight, layers.{i}.norm.weight,
  layers.{i}.mixer.*, norm_f.weight, as in mamba2.py;
- softplus is exact (logaddexp(0, x)), as in mamba2.py; F.softplus returns x above its
  threshold 20;
- the vocab is not padded (pad_vocab_size_multiple = 1);
- no einops: the rearranges are reshapes, and with ngroups = 1 B and C have no group axis;
- a step() for generation, as mamba2-minimal's Mamba2.step: the state per layer is the
  last d_conv - 1 conv inputs and the SSD state h (B, H, P, N).
As in mamba2-minimal, a sequence that is not a multiple of chunk_size is padded with
token 0 at the end and the logits sliced back: causality keeps the padding out.
Autograd differentiates the chunked einsums; the gradient is what the tests compare.
"""
import torch
import torch.nn.functional as F
from torch import nn

from torch_ref import load


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x, z=None):
        if z is not None:                    # the gated form: RMSNorm(x SiLU(z))
            x = x * F.silu(z)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def softplus(x):
    return torch.logaddexp(x, torch.zeros_like(x))


def segsum(x):
    """x (..., T) -> (..., T, T): [t, s] = x[s+1] + ... + x[t] for s <= t, -inf above."""
    T = x.size(-1)
    x = x[..., None].expand(*x.shape, T)
    x = x.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), -1), 0)
    x = torch.cumsum(x, dim=-2)
    return x.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), 0), -torch.inf)


def ssd(x, dt, A, B, C, chunk_size):
    """mamba2-minimal's ssd() without D and without an initial state.
    x (b, l, h, p), dt (b, l, h), A (h,), B, C (b, l, n) -> y (b, l, h, p)."""
    b, l, h, p = x.shape
    c = l // chunk_size
    x = (x * dt[..., None]).reshape(b, c, chunk_size, h, p)
    A = (A * dt).reshape(b, c, chunk_size, h).permute(0, 3, 1, 2)   # (b, h, c, l)
    B = B.reshape(b, c, chunk_size, -1)
    C = C.reshape(b, c, chunk_size, -1)
    A_cumsum = torch.cumsum(A, dim=-1)
    # 1. inside the chunks (diagonal blocks)
    L = torch.exp(segsum(A))
    Y_diag = torch.einsum("bcln, bcsn, bhcls, bcshp -> bclhp", C, B, L, x)
    # 2. each chunk's final state (B terms of the off-diagonal blocks)
    decay_states = torch.exp(A_cumsum[:, :, :, -1:] - A_cumsum)
    states = torch.einsum("bcln, bhcl, bclhp -> bchpn", B, decay_states, x)
    # 3. across chunks (A terms)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    decay_chunk = torch.exp(segsum(F.pad(A_cumsum[:, :, :, -1], (1, 0))))
    states = torch.einsum("bhzc, bchpn -> bzhpn", decay_chunk, states)[:, :-1]
    # 4. state -> output (C terms)
    Y_off = torch.einsum("bcln, bchpn, bhcl -> bclhp", C, states, torch.exp(A_cumsum))
    return (Y_diag + Y_off).reshape(b, l, h, p)


class Mamba2(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.d_inner, self.d_state, self.d_conv = cfg.expand * cfg.d_model, cfg.d_state, cfg.d_conv
        self.headdim, self.chunk_size = cfg.headdim, cfg.chunk_size
        self.nheads = self.d_inner // self.headdim
        conv_dim = self.d_inner + 2 * self.d_state
        self.in_proj = nn.Linear(cfg.d_model, 2 * self.d_inner + 2 * self.d_state + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=cfg.d_conv, groups=conv_dim,
                                padding=cfg.d_conv - 1, bias=True)
        self.dt_bias = nn.Parameter(torch.zeros(self.nheads))
        self.A_log = nn.Parameter(torch.zeros(self.nheads))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = RMSNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, cfg.d_model, bias=False)

    def split(self, zxbcdt):
        E, N = self.d_inner, self.d_state
        return torch.split(zxbcdt, [E, E + 2 * N, self.nheads], dim=-1)

    def forward(self, u):
        b, l, _ = u.shape
        E, N = self.d_inner, self.d_state
        A = -torch.exp(self.A_log)                                    # (h,)
        z, xBC, dt = self.split(self.in_proj(u))
        dt = softplus(dt + self.dt_bias)                              # (b, l, h)
        xBC = F.silu(self.conv1d(xBC.transpose(1, 2)).transpose(1, 2)[:, :l])
        x, B, C = torch.split(xBC, [E, N, N], dim=-1)
        x = x.reshape(b, l, self.nheads, self.headdim)
        y = ssd(x, dt, A, B, C, self.chunk_size) + x * self.D[:, None]
        return self.out_proj(self.norm(y.reshape(b, l, E), z))

    def step(self, u, state):
        """u (b, d_model); state = (conv_state (b, E+2N, d_conv-1) of raw conv inputs, h (b, H, P, N))."""
        conv_state, h = state
        E, N = self.d_inner, self.d_state
        z, xBC, dt = self.split(self.in_proj(u))
        window = torch.cat([conv_state, xBC[:, :, None]], dim=2)                # (b, F, d_conv)
        xBC = F.silu((window * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias)
        x, B, C = torch.split(xBC, [E, N, N], dim=-1)
        x = x.reshape(-1, self.nheads, self.headdim)
        dt = softplus(dt + self.dt_bias)                                        # (b, h)
        dA = torch.exp(dt * -torch.exp(self.A_log))
        h = dA[..., None, None] * h + (dt[..., None] * x)[..., None] * B[:, None, None, :]
        y = (h @ C[:, None, :, None])[..., 0] + x * self.D[:, None]            # (b, h, p)
        return self.out_proj(self.norm(y.reshape(-1, E), z)), (window[:, :, 1:], h)


class Mamba2LMHeadModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.chunk_size = cfg.chunk_size
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList([nn.ModuleDict(dict(mixer=Mamba2(cfg), norm=RMSNorm(cfg.d_model)))
                                     for _ in range(cfg.n_layer)])
        self.norm_f = RMSNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.embedding.weight  # tied: named_parameters() lists it once

    def forward(self, idx):
        seqlen = idx.shape[1]
        excess = seqlen % self.chunk_size
        if excess:
            idx = F.pad(idx, (0, self.chunk_size - excess))
        h = self.embedding(idx)
        for layer in self.layers:
            h = layer.mixer(layer.norm(h)) + h
        return self.lm_head(self.norm_f(h))[:, :seqlen]

    def init_state(self, batch):
        p = self.embedding.weight
        return [(p.new_zeros((batch, m.d_inner + 2 * m.d_state, m.d_conv - 1)),
                 p.new_zeros((batch, m.nheads, m.headdim, m.d_state)))
                for m in (layer.mixer for layer in self.layers)]

    def step(self, idx_t, state):
        x = self.embedding(idx_t)
        new_state = []
        for layer, s in zip(self.layers, state):
            out, s = layer.mixer.step(layer.norm(x), s)
            x = x + out
            new_state.append(s)
        return self.lm_head(self.norm_f(x)), new_state


def build(cfg, params, dtype=torch.float64):
    return load(Mamba2LMHeadModel(cfg).to(dtype), params)
