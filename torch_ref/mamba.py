"""The PyTorch reference for mamba.py: mamba-minimal's Mamba LM (johnma2006/mamba-minimal,
model.py), with the lm_head tied to the embedding and these changes:
- no float32 casts (mamba-minimal has A_log.float(), D.float(), and a float32 zeros
  for the state): a float64 module stays float64, so the tests can compare at 1e-9;
- softplus is exact (logaddexp(0, x)), as in mamba.py. F.softplus returns x above
  its threshold 20, which is 2e-9 away from the exact value;
- no einops: the einsums are written with broadcasting and matmul;
- the vocab is not padded (pad_vocab_size_multiple = 1);
- a step() for generation, after alxndrTL/mamba.py's MambaBlock.step: the state per
  layer is the last d_conv - 1 conv inputs and the SSM state h (mamba-minimal has none);
- the time loop of the selective scan can be written two ways (build(..., scan=...)):
    "unbind"  (default) for x_t in deltaA.unbind(1): one autograd node splits the
              tensor into L slices, and its backward stacks the L slice gradients once.
    "index"   deltaA[:, t] as in mamba-minimal: each index's backward writes its slice
              gradient into a zero tensor of the full (B, L, E, N) size, so the backward
              costs O(L^2 E N). bench.py reports both.
"""
import torch
import torch.nn.functional as F
from torch import nn

from torch_ref import load


class RMSNorm(nn.Module):
    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def softplus(x):
    """Exact softplus, log(1 + e^x), as mamba.py's logaddexp(0, x)."""
    return torch.logaddexp(x, torch.zeros_like(x))


class MambaBlock(nn.Module):
    def __init__(self, cfg, scan="unbind"):
        super().__init__()
        E, N = cfg.expand * cfg.d_model, cfg.d_state
        self.d_inner, self.d_state, self.dt_rank = E, N, -(-cfg.d_model // 16)  # ceil(d_model / 16)
        self.d_conv, self.scan = cfg.d_conv, scan
        self.in_proj = nn.Linear(cfg.d_model, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, kernel_size=cfg.d_conv, groups=E, padding=cfg.d_conv - 1, bias=True)
        self.x_proj = nn.Linear(E, self.dt_rank + 2 * N, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, E, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, cfg.d_model, bias=False)

    def forward(self, x):
        (b, l, d) = x.shape
        x_and_res = self.in_proj(x)                                   # (b, l, 2E)
        (x, res) = x_and_res.split([self.d_inner, self.d_inner], dim=-1)
        x = self.conv1d(x.transpose(1, 2))[:, :, :l].transpose(1, 2)  # causal: keep the first l outputs
        x = F.silu(x)
        y = self.ssm(x)
        y = y * F.silu(res)
        return self.out_proj(y)

    def ssm_params(self, x):
        A = -torch.exp(self.A_log)                                    # (E, N)
        x_dbl = self.x_proj(x)                                        # (..., R + 2N)
        (delta, B, C) = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = softplus(self.dt_proj(delta))                         # (..., E)
        return A, delta, B, C

    def ssm(self, x):
        A, delta, B, C = self.ssm_params(x)
        return self.selective_scan(x, delta, A, B, C, self.D)

    def selective_scan(self, u, delta, A, B, C, D):
        (b, l, d_in) = u.shape
        deltaA = torch.exp(delta[..., None] * A)                      # (b, l, E, N)
        deltaB_u = (delta * u)[..., None] * B[:, :, None, :]          # (b, l, E, N)
        x = u.new_zeros((b, d_in, self.d_state))
        ys = []
        if self.scan == "unbind":
            for dA, dBu, C_t in zip(deltaA.unbind(1), deltaB_u.unbind(1), C.unbind(1)):
                x = dA * x + dBu
                ys.append((x @ C_t[:, :, None])[..., 0])            # (b, E)
        elif self.scan == "index":
            for i in range(l):
                x = deltaA[:, i] * x + deltaB_u[:, i]
                ys.append((x @ C[:, i, :, None])[..., 0])
        else:
            raise ValueError(f"scan must be 'unbind' or 'index', got {self.scan!r}")
        y = torch.stack(ys, dim=1)                                    # (b, l, E)
        return y + u * D

    def step(self, x, state):
        """x (b, d_model); state = (conv_state (b, E, d_conv-1) of raw conv inputs, h (b, E, N))."""
        conv_state, h = state
        x, res = self.in_proj(x).split([self.d_inner, self.d_inner], dim=-1)   # (b, E) each
        window = torch.cat([conv_state, x[:, :, None]], dim=2)                  # (b, E, d_conv)
        xc = (window * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias   # the last tap is the newest
        u = F.silu(xc)
        A, delta, B, C = self.ssm_params(u)
        h = torch.exp(delta[..., None] * A) * h + (delta * u)[..., None] * B[:, None, :]
        y = (h @ C[:, :, None])[..., 0] + u * self.D
        return self.out_proj(y * F.silu(res)), (window[:, :, 1:], h)


class ResidualBlock(nn.Module):
    def __init__(self, cfg, scan="unbind"):
        super().__init__()
        self.mixer = MambaBlock(cfg, scan)
        self.norm = RMSNorm(cfg.d_model)

    def forward(self, x):
        return self.mixer(self.norm(x)) + x


class Mamba(nn.Module):
    def __init__(self, cfg, scan="unbind"):
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList([ResidualBlock(cfg, scan) for _ in range(cfg.n_layer)])
        self.norm_f = RMSNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.embedding.weight  # tied: named_parameters() lists it once

    def forward(self, idx):
        x = self.embedding(idx)                                       # (b, l, d_model)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm_f(x))                           # (b, l, V)

    def init_state(self, batch):
        p = self.embedding.weight
        return [(p.new_zeros((batch, l.mixer.d_inner, l.mixer.d_conv - 1)),
                 p.new_zeros((batch, l.mixer.d_inner, l.mixer.d_state))) for l in self.layers]

    def step(self, idx_t, state):
        x = self.embedding(idx_t)                                     # (b, d_model)
        new_state = []
        for layer, s in zip(self.layers, state):
            out, s = layer.mixer.step(layer.norm(x), s)
            x = x + out
            new_state.append(s)
        return self.lm_head(self.norm_f(x)), new_state


def build(cfg, params, dtype=torch.float64, scan="unbind"):
    return load(Mamba(cfg, scan).to(dtype), params)
