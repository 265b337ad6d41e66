"""The PyTorch reference for rnn.py: nn.Embedding + nn.RNN(tanh, batch_first) + nn.Linear."""
import torch
from torch import nn

from torch_ref import load


class RNNLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rnn = nn.RNN(cfg.d_model, cfg.d_model, num_layers=cfg.n_layer, nonlinearity="tanh",
                          batch_first=True)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(self, idx):
        h, _ = self.rnn(self.embedding(idx))     # (B, T, H), from h0 = 0
        return self.lm_head(h)                   # (B, T, V)

    def init_state(self, batch):
        p = self.lm_head.weight
        return torch.zeros(self.rnn.num_layers, batch, self.rnn.hidden_size, dtype=p.dtype, device=p.device)

    def step(self, idx_t, state):
        h, state = self.rnn(self.embedding(idx_t)[:, None], state)
        return self.lm_head(h[:, 0]), state


def build(cfg, params, dtype=torch.float64):
    return load(RNNLM(cfg).to(dtype), params)
