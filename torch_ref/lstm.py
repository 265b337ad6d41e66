"""The PyTorch reference for lstm.py: nn.Embedding + nn.LSTM(batch_first) + nn.Linear.
Gate order i, f, g, o and both bias vectors are nn.LSTM's own; lstm.py matches them."""
import torch
from torch import nn

from torch_ref import load


class LSTMLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.lstm = nn.LSTM(cfg.d_model, cfg.d_model, num_layers=cfg.n_layer, batch_first=True)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(self, idx):
        h, _ = self.lstm(self.embedding(idx))    # (B, T, H), from h0 = c0 = 0
        return self.lm_head(h)                   # (B, T, V)

    def init_state(self, batch):
        p = self.lm_head.weight
        zeros = torch.zeros(self.lstm.num_layers, batch, self.lstm.hidden_size, dtype=p.dtype, device=p.device)
        return (zeros, zeros.clone())            # (h0, c0), each (n_layer, B, H)

    def step(self, idx_t, state):
        h, state = self.lstm(self.embedding(idx_t)[:, None], state)
        return self.lm_head(h[:, 0]), state


def build(cfg, params, dtype=torch.float64):
    return load(LSTMLM(cfg).to(dtype), params)
