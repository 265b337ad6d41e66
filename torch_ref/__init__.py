"""PyTorch reference modules, one file per model, for the tests, bench.py and
torch_ref/train.py (`python -m torch_ref.train`, train.py's recipe in PyTorch).
Never imported by the models or train.py: PyTorch is optional.

Each torch_ref/<model>.py builds the PyTorch module that <model>.py matches
parameter by parameter (torch.nn.RNN/LSTM/GRU, nanoGPT's GPT, the S4D layer of
the S4 authors' s4d.py, the reference Mamba LM) and exposes:

    build(cfg, params, dtype=torch.float64, **options) -> module
        cfg is the model's Config; params a dict name -> NumPy array (our
        Model.params). The module's named_parameters() are exactly those names,
        and the arrays are loaded with torch.from_numpy, no renaming.
    module(idx)                      LongTensor (B, T) -> logits (B, T, V)
    module.init_state(batch)         the empty state (for generation)
    module.step(idx_t, state)        LongTensor (B,) -> (logits (B, V), state)
"""
import importlib


def build(name, cfg, params, **kwargs):
    return importlib.import_module(f"torch_ref.{name}").build(cfg, params, **kwargs)


def load(module, params):
    """Copy our arrays (NumPy) into the module by name; the names must match exactly."""
    import torch
    own = dict(module.named_parameters())
    assert sorted(own) == sorted(params), (sorted(own), sorted(params))
    with torch.no_grad():
        for k, v in params.items():
            own[k].copy_(torch.from_numpy(v))
    return module
