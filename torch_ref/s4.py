"""The PyTorch reference for s4.py: the S4 authors' minimal S4D layer
(state-spaces/s4, models/s4/s4d.py: S4DKernel and S4D, same parameter names and
math) in pre-LayerNorm residual blocks:

    embedding -> n_layer x [x + S4D(LayerNorm(x))] -> LayerNorm -> lm_head

Departures from s4d.py, all shared with s4.py: GELU is nn.GELU(approximate="tanh")
(s4d.py: the erf nn.GELU()); no dropout; no per-parameter lr/weight-decay tags
(train.py / torch_ref.train decide weight decay by name). Plus a step() that runs
the same SSM as a recurrence, for generation.
"""
import math

import torch
from torch import nn

from torch_ref import load


class S4DKernel(nn.Module):
    """Generate the convolution kernel from diagonal SSM parameters (s4d.py, S4D-Lin init)."""

    def __init__(self, d_model, N=64, dt_min=0.001, dt_max=0.1):
        super().__init__()
        H = d_model
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        C = torch.randn(H, N // 2, dtype=torch.cfloat)
        self.C = nn.Parameter(torch.view_as_real(C))                 # (H, N/2, 2)
        self.log_dt = nn.Parameter(log_dt)                           # (H,)
        self.log_A_real = nn.Parameter(torch.log(0.5 * torch.ones(H, N // 2)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(N // 2).repeat(H, 1).to(log_dt.dtype))

    def discretize(self):
        """dt (H,), C, A, dtA (H, N/2): the ZOH ingredients, shared by forward and step."""
        dt = torch.exp(self.log_dt)
        C = torch.view_as_complex(self.C)
        A = -torch.exp(self.log_A_real) + 1j * self.A_imag
        return dt, C, A, A * dt.unsqueeze(-1)

    def forward(self, L):
        """returns K (H, L)"""
        dt, C, A, dtA = self.discretize()
        # Vandermonde multiplication
        K = dtA.unsqueeze(-1) * torch.arange(L, device=A.device)    # (H, N/2, L)
        C = C * (torch.exp(dtA) - 1.) / A
        return 2 * torch.einsum('hn, hnl -> hl', C, torch.exp(K)).real


class S4D(nn.Module):
    def __init__(self, d_model, d_state=64, **kernel_args):
        super().__init__()
        self.h, self.n = d_model, d_state
        self.D = nn.Parameter(torch.randn(self.h))
        self.kernel = S4DKernel(self.h, N=self.n, **kernel_args)
        self.activation = nn.GELU(approximate="tanh")
        self.output_linear = nn.Sequential(nn.Conv1d(self.h, 2 * self.h, kernel_size=1), nn.GLU(dim=-2))

    def forward(self, u):
        """Input and output shape (B, H, L), as s4d.py with transposed=True."""
        L = u.size(-1)
        k = self.kernel(L=L)                                         # (H, L)
        k_f = torch.fft.rfft(k, n=2 * L)                             # (H, L+1)
        u_f = torch.fft.rfft(u, n=2 * L)                             # (B, H, L+1)
        y = torch.fft.irfft(u_f * k_f, n=2 * L)[..., :L]             # (B, H, L)
        y = y + u * self.D.unsqueeze(-1)
        return self.output_linear(self.activation(y))

    def setup_step(self):
        """The recurrence's constants zeta = exp(dt A), Bbar = (zeta - 1)/A and C (H, N/2):
        the same at every step (the SSM is time-invariant), so computed once per generation."""
        dt, C, A, dtA = self.kernel.discretize()
        zeta = torch.exp(dtA)
        return zeta, (zeta - 1.) / A, C

    def step(self, u, s, consts):
        """u (B, H), s (B, H, N/2) complex -> y (B, H), new s: the recurrence
        s <- zeta s + Bbar u; y = 2 Re sum C s + D u (state-spaces SSMKernelDiag.step)."""
        zeta, Bbar, C = consts
        s = zeta * s + Bbar * u.unsqueeze(-1)
        y = 2 * (C * s).sum(-1).real + self.D * u
        y = self.output_linear(self.activation(y).unsqueeze(-1)).squeeze(-1)   # Conv1d wants (B, H, 1)
        return y, s


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model)
        self.mixer = S4D(cfg.d_model, cfg.d_state, dt_min=cfg.dt_min, dt_max=cfg.dt_max)

    def forward(self, x):                                            # (B, L, H)
        return x + self.mixer(self.norm(x).transpose(-1, -2)).transpose(-1, -2)


class S4LM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.norm_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(self, idx):
        x = self.embedding(idx)                                      # (B, L, H)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm_f(x))                          # (B, L, V)

    def init_state(self, batch):
        """Per layer the SSM state (batch, H, N/2), complex zeros, plus the layer's
        step constants (computed here once from the parameters, as s4.py does)."""
        p = self.lm_head.weight
        cdt = torch.complex128 if p.dtype == torch.float64 else torch.complex64
        shape = (batch, self.cfg.d_model, self.cfg.d_state // 2)
        with torch.no_grad():
            consts = [layer.mixer.setup_step() for layer in self.layers]
        return {"s": [torch.zeros(shape, dtype=cdt, device=p.device) for _ in self.layers], "consts": consts}

    def step(self, idx_t, state):
        x = self.embedding(idx_t)                                    # (B, H)
        new_s = []
        for layer, s, consts in zip(self.layers, state["s"], state["consts"]):
            y, s = layer.mixer.step(layer.norm(x), s, consts)
            x = x + y
            new_s.append(s)
        return self.lm_head(self.norm_f(x)), {"s": new_s, "consts": state["consts"]}


def build(cfg, params, dtype=torch.float64):
    return load(S4LM(cfg).to(dtype), params)
