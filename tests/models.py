"""The models under test, and the tiny configs the gradient checks use.

A new model joins every test by being added to MODELS (and given a TINY config).
TINY configs: vocab ~9, width 8, 2 layers (so the gradient between layers is
tested), 2 heads, small state sizes: small enough that a finite-difference check
of every entry is cheap, large enough that no dimension is degenerate.

SEQ_MODELS=lstm,gru restricts a run to some models (handy while writing one).
"""
import importlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MODELS = ["rnn", "lstm", "gru", "s4", "mamba", "transformer", "mamba2"]

TINY = {
    "rnn": dict(vocab_size=9, d_model=8, n_layer=2),
    "lstm": dict(vocab_size=9, d_model=8, n_layer=2),
    "gru": dict(vocab_size=9, d_model=8, n_layer=2),
    "transformer": dict(vocab_size=9, d_model=8, n_layer=2, n_head=2, block_size=16),
    "s4": dict(vocab_size=9, d_model=8, n_layer=2, d_state=8),
    "mamba": dict(vocab_size=9, d_model=8, n_layer=2, d_state=3, expand=2, d_conv=3),
    "mamba2": dict(vocab_size=9, d_model=8, n_layer=2, d_state=3, expand=2, d_conv=3, headdim=4, chunk_size=4),
}

if os.environ.get("SEQ_MODELS"):
    MODELS = [m for m in os.environ["SEQ_MODELS"].split(",") if m]


def load(name):
    """The model module `name` (rnn.py, lstm.py, ...)."""
    return importlib.import_module(name)


def make(name, dtype="float64", xp=None, seed=0, **overrides):
    """A tiny model of `name`, in `dtype`, on `xp` (NumPy by default)."""
    import numpy
    mod = load(name)
    cfg = mod.Config(**{**TINY[name], **overrides})
    return mod.Model(cfg, xp=xp or numpy, dtype=getattr(numpy, dtype), seed=seed)


def to_host(a):
    """A NumPy copy of a NumPy or CuPy array."""
    import numpy
    return a.get() if hasattr(a, "get") else numpy.asarray(a)
