"""
rnn.py: a character-level language model built on the vanilla (Elman) tanh RNN,
with a hand-derived backward pass (backpropagation through time).

    embedding -> n_layer stacked tanh RNN layers -> linear head -> logits

What it is
- Each layer is torch.nn.RNN(nonlinearity="tanh", batch_first=True), layer by
  layer, with PyTorch's parameter names and layouts, so a checkpoint's arrays load
  into `torch.nn.Embedding` + `torch.nn.RNN` + `torch.nn.Linear` unchanged:
      h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)          (Elman 1990)
- Memory is the hidden state h: d_model numbers per layer, whatever the length of
  the history. That fixed-size running state is what this project compares
  against attention, which keeps everything.
- forward() is the training path, one rnn_forward() per layer: the input
  projection for all T positions is one matmul, and only the (B, H) @ (H, H)
  product runs in a Python loop over time, because h_t needs h_{t-1}.
  rnn_backward() is BPTT over the same loop, reversed; its derivation is
  written above it.
- step() is the inference path: one token, one state update per layer, O(1)
  in the position.
- Runs on NumPy or CuPy (the `xp` argument), in float32 or float64.

What it is not
- No dropout, no bidirectional layers, no state carried between batches
  (every sequence starts from h = 0), no gradient clipping (train.py clips the
  global norm).

Shapes (B batch, T time, C = H = d_model, V vocab)
    idx      (B, T) int         token ids
    E        (V, C)             embedding.weight
    W_ih     (H, C)             rnn.weight_ih_l{k}     (out, in), as PyTorch
    W_hh     (H, H)             rnn.weight_hh_l{k}
    b_ih     (H,)  b_hh (H,)    rnn.bias_ih_l{k}, rnn.bias_hh_l{k}
    W_out    (V, H)  b_out (V,) lm_head.weight, lm_head.bias
    logits   (B, T, V)
Inside the recurrence the activations are kept time-major, (T, B, H), so that
each step reads and writes one contiguous (B, H) block.
"""
import math
from dataclasses import dataclass

import numpy


@dataclass
class Config:
    vocab_size: int = 65  # number of distinct characters; train.py sets it from the corpus
    d_model: int = 256    # hidden size H (= embedding size C)
    n_layer: int = 2      # stacked RNN layers


def check_idx(idx, vocab_size, ndim, xp):
    """Token ids as an integer xp array of `ndim` dims, all in [0, vocab_size)."""
    if not hasattr(idx, "dtype"):
        idx = numpy.asarray(idx)
    if idx.ndim != ndim or idx.dtype.kind not in "iu":
        want = "(B, T)" if ndim == 2 else "(B,)"
        raise ValueError(f"token ids must be an integer array of shape {want}, "
                         f"got dtype {idx.dtype} and shape {tuple(idx.shape)}")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got values in "
                         f"[{int(idx.min())}, {int(idx.max())}]")
    return xp.asarray(idx)


# ------------------------------------------------------------------ one RNN layer
def rnn_forward(x, W_ih, W_hh, b_ih, b_hh, xp):
    """x (T, B, C) time-major -> Hs (T, B, H), cache. Starts from h = 0."""
    T, B, _ = x.shape
    H = W_hh.shape[0]
    # the input side for all T at once: Hs = x W_ih^T + b_ih + b_hh   (T, B, H)
    Hs = (x.reshape(T * B, -1) @ W_ih.T).reshape(T, B, H)
    Hs += b_ih + b_hh
    # the recurrence, in place: Hs[t] = tanh(Hs[t] + h_{t-1} W_hh^T), h_{-1} = 0
    # W_hh^T copied once into a contiguous array: OpenBLAS multiplies the (B, H) state by it
    # faster than by the view W_hh.T (measured, standard config: forward 12 ms of CPU time, not 16)
    W_hhT = xp.ascontiguousarray(W_hh.T)
    xp.tanh(Hs[0], out=Hs[0])
    for t in range(1, T):
        Hs[t] += Hs[t - 1] @ W_hhT
        xp.tanh(Hs[t], out=Hs[t])
    return Hs, (x, Hs, W_ih, W_hh)         # what BPTT needs: the layer's input and outputs


# The backward of one layer, BPTT. Write dh_t for the whole gradient of the loss with
# respect to h_t, including everything that flows back from later steps, and
# a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh for the pre-activation (h_t = tanh(a_t)).
# - h_t has two consumers: what is above (the next layer or the head: dHs[t], given) and
#   a_{t+1}. For Y = X W^T the gradients are dX = dY W and dW = dY^T X, so
#       dh_t = dHs[t] + da_{t+1} W_hh                     the carried gradient
# - tanh' = 1 - tanh^2, written with the cached output h_t:
#       da_t = dh_t * (1 - h_t^2)
#   (dHs[t] is added before this product: it too passes through the tanh.)
# - Summed over t: dW_ih = sum da_t^T x_t, dW_hh = sum da_t^T h_{t-1},
#   db_ih = db_hh = sum da_t, and dx_t = da_t W_ih is the dHs of the layer below.
# Only dh is sequential; the weight gradients are one matmul over all T*B rows.
# Through T steps dh is multiplied by W_hh and tanh' T times: it shrinks or grows
# geometrically, the vanishing and exploding gradients the gated models ease.
def rnn_backward(dHs, cache, xp):
    """dHs (T, B, H) -> dx (T, B, C), dW_ih, dW_hh, db_ih, db_hh."""
    x, Hs, W_ih, W_hh = cache
    T, B, H = Hs.shape
    dtanh = 1 - Hs * Hs                    # tanh' from the cached output, all t at once
    dA = xp.empty_like(Hs)                 # da_t, all t
    dh = xp.zeros((B, H), Hs.dtype)
    for t in reversed(range(T)):
        dh = dh + dHs[t]                   # dh_t = dHs[t] + da_{t+1} W_hh
        dA[t] = dh * dtanh[t]              # da_t = dh_t * (1 - h_t^2)
        dh = dA[t] @ W_hh                  # the part of dh_{t-1} through h_{t-1} W_hh^T
    dA2 = dA.reshape(T * B, H)
    dW_ih = dA2.T @ x.reshape(T * B, -1)                                # (H, C)
    dW_hh = dA[1:].reshape(-1, H).T @ Hs[:-1].reshape(-1, H)            # h_{-1} = 0 adds nothing
    db = dA2.sum(0)
    dx = (dA2 @ W_ih).reshape(T, B, -1)
    return dx, dW_ih, dW_hh, db, db.copy()                               # both biases enter the same sum


class Model:
    def __init__(self, cfg, xp=numpy, dtype=numpy.float32, seed=0):
        self.cfg, self.xp, self.dtype = cfg, xp, numpy.dtype(dtype)
        V, H = cfg.vocab_size, cfg.d_model
        rng = numpy.random.default_rng(seed)

        def uniform(bound, *shape):  # drawn in float64 on the host, then cast and moved
            return xp.asarray(rng.uniform(-bound, bound, shape).astype(self.dtype))

        # PyTorch's default inits: Embedding N(0, 1); RNN and Linear U(-1/sqrt(fan), +1/sqrt(fan)).
        p = {"embedding.weight": xp.asarray(rng.standard_normal((V, H)).astype(self.dtype))}
        k = 1 / math.sqrt(H)
        for l in range(cfg.n_layer):
            p[f"rnn.weight_ih_l{l}"] = uniform(k, H, H)
            p[f"rnn.weight_hh_l{l}"] = uniform(k, H, H)
            p[f"rnn.bias_ih_l{l}"] = uniform(k, H)
            p[f"rnn.bias_hh_l{l}"] = uniform(k, H)
        p["lm_head.weight"] = uniform(k, V, H)
        p["lm_head.bias"] = uniform(k, V)
        self.params = p

    # ------------------------------------------------------------------ forward
    def forward(self, idx, train=False, x0=None):
        """idx (B, T) -> logits (B, T, V), cache. `train` is unused (no dropout).
        x0, if given, replaces the embedding output (B, T, C): the tests use it to
        check the gradient reaching the embeddings, which backward leaves in cache["dx0"]."""
        xp, p, cfg = self.xp, self.params, self.cfg
        idx = check_idx(idx, cfg.vocab_size, 2, xp)
        B, T = idx.shape
        # x = E[idx], time-major: (T, B, C)
        x = p["embedding.weight"][idx.T] if x0 is None else xp.ascontiguousarray(xp.asarray(x0).transpose(1, 0, 2))
        x0, layers = x, []
        for l in range(cfg.n_layer):
            x, layer_cache = rnn_forward(x, p[f"rnn.weight_ih_l{l}"], p[f"rnn.weight_hh_l{l}"],
                                         p[f"rnn.bias_ih_l{l}"], p[f"rnn.bias_hh_l{l}"], xp)
            layers.append(layer_cache)
        h = x.reshape(T * B, -1)                                          # top layer, time-major rows (T*B, H)
        logits = (h @ p["lm_head.weight"].T + p["lm_head.bias"]).reshape(T, B, -1)
        logits = xp.ascontiguousarray(logits.transpose(1, 0, 2))          # (B, T, V)
        cache = {"idx": idx, "x0": x0.transpose(1, 0, 2), "layers": layers, "h": h}
        return logits, cache

    # ----------------------------------------------------------------- backward
    def backward(self, dlogits, cache):
        """dlogits (B, T, V) -> grads, a dict with the keys of .params."""
        xp, p, cfg = self.xp, self.params, self.cfg
        idx, h = cache["idx"], cache["h"]
        B, T = idx.shape
        V = cfg.vocab_size
        grads = {}
        # logits = h W_out^T + b_out, in the time-major row order of h
        dl = xp.asarray(dlogits, dtype=self.dtype).transpose(1, 0, 2).reshape(T * B, V)
        grads["lm_head.weight"] = dl.T @ h                                  # (V, H)
        grads["lm_head.bias"] = dl.sum(0)
        dx = (dl @ p["lm_head.weight"]).reshape(T, B, -1)                   # dHs of the top layer, (T, B, H)
        for l in reversed(range(cfg.n_layer)):
            dx, *dW = rnn_backward(dx, cache["layers"][l], xp)
            for name, g in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), dW):
                grads[f"rnn.{name}_l{l}"] = g
        # x0 = E[idx]: scatter-add rows by a one-hot matmul (repeated ids add up)
        onehot = (idx.T.reshape(-1, 1) == xp.arange(V)).astype(self.dtype)    # (T*B, V)
        grads["embedding.weight"] = onehot.T @ dx.reshape(T * B, -1)            # (V, C)
        cache["dx0"] = dx.transpose(1, 0, 2)                                    # (B, T, C)
        return {k: grads[k] for k in p}

    # ------------------------------------------------------------ step (inference)
    def init_state(self, batch):
        """The whole memory of the model: one h of shape (batch, d_model) per layer, zeros."""
        return [self.xp.zeros((batch, self.cfg.d_model), self.dtype) for _ in range(self.cfg.n_layer)]

    def step(self, idx_t, state):
        """idx_t (B,) -> logits (B, V), new state. Cost per token does not depend on the position."""
        xp, p = self.xp, self.params
        x = p["embedding.weight"][check_idx(idx_t, self.cfg.vocab_size, 1, xp)]  # (B, C)
        new_state = []
        for l, h in enumerate(state):
            x = xp.tanh(x @ p[f"rnn.weight_ih_l{l}"].T + p[f"rnn.bias_ih_l{l}"] + p[f"rnn.bias_hh_l{l}"]
                        + h @ p[f"rnn.weight_hh_l{l}"].T)
            new_state.append(x)
        return x @ p["lm_head.weight"].T + p["lm_head.bias"], new_state
