"""The PyTorch reference for gru.py: nn.Embedding + nn.GRU(batch_first) + nn.Linear.
Gate order r, z, n, the reset applied after the hidden matmul (n = tanh(W_in x + b_in +
r * (W_hn h + b_hn))) and h' = (1 - z) * n + z * h are nn.GRU's own; gru.py matches them."""
import torch
from torch import nn

from torch_ref import load


class GRULM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.gru = nn.GRU(cfg.d_model, cfg.d_model, num_layers=cfg.n_layer, batch_first=True)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(self, idx):
        h, _ = self.gru(self.embedding(idx))     # (B, T, H), from h0 = 0
        return self.lm_head(h)                   # (B, T, V)

    def init_state(self, batch):
        p = self.lm_head.weight
        return torch.zeros(self.gru.num_layers, batch, self.gru.hidden_size, dtype=p.dtype, device=p.device)

    def step(self, idx_t, state):
        h, state = self.gru(self.embedding(idx_t)[:, None], state)
        return self.lm_head(h[:, 0]), state


def build(cfg, params, dtype=torch.float64):
    return load(GRULM(cfg).to(dtype), params)
