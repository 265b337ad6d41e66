"""
gru.py: a character-level language model built on the GRU, with a
hand-derived backward pass (backpropagation through time).

    embedding -> n_layer stacked GRU layers -> linear head -> logits

What it is
- Each layer is torch.nn.GRU(batch_first=True), layer by layer, with PyTorch's
  parameter names, layouts and gate order (r, z, n), so a checkpoint's arrays
  load into `torch.nn.Embedding` + `torch.nn.GRU` + `torch.nn.Linear` unchanged:
      gi = x_t W_ih^T + b_ih          gh = h_{t-1} W_hh^T + b_hh       (B, 3H) each, blocks [r; z; n]
      r = sigma(gi_r + gh_r)          reset gate    how much of h_{t-1} the candidate may see
      z = sigma(gi_z + gh_z)          update gate   how much of h_{t-1} to keep
      n = tanh(gi_n + r * gh_n)       candidate     (gh_n includes b_hn, so r also scales b_hn)
      h_t = (1 - z) * n + z * h_{t-1}
  The gated recurrent unit is Cho et al. (2014, "Learning Phrase Representations
  using RNN Encoder-Decoder", arXiv:1406.1078, section 2.3). There the reset is
  applied *before* the hidden matmul, n = tanh(W x + U (r * h_{t-1})), with one
  bias. PyTorch (and cuDNN; Keras' reset_after=True) apply it *after*, as above:
  then one (B, H) @ (H, 3H) product per step serves all three gates, instead of a
  second sequential matmul once r is known. The interpolation runs as in Cho et al.
  (z = 1 keeps the old state); Chung et al. (2014, arXiv:1412.3555) and char-rnn's
  GRU.lua write h_t = (1 - z) * h_{t-1} + z * n, where z has the opposite meaning.
- Memory is h alone: d_model numbers per layer, whatever the length of the
  history (the LSTM keeps h and c). When z is near 1, h_t = h_{t-1} and the
  gradient passes back through dh_{t-1} = dh_t * z untouched by W_hh or tanh'.
- forward() is the training path, one gru_forward() per layer: the input
  projection for all T positions is one matmul, and only the (B, H) @ (H, 3H)
  product and the gate arithmetic run in a Python loop over time, because h_t
  needs h_{t-1}. gru_backward() is BPTT over the same loop, reversed; its
  derivation is written above it.
- step() is the inference path: one token, one state update per layer, O(1)
  in the position.
- Runs on NumPy or CuPy (the `xp` argument), in float32 or float64.

What it is not
- No dropout, no bidirectional layers, not Cho's reset-before form, no state
  carried between batches (every sequence starts from h = 0), no gradient
  clipping (train.py clips the global norm). Initialization is PyTorch's default.

Shapes (B batch, T time, C = H = d_model, V vocab)
    idx      (B, T) int         token ids
    E        (V, C)             embedding.weight
    W_ih     (3H, C)            gru.weight_ih_l{k}     (out, in), row blocks [r; z; n]
    W_hh     (3H, H)            gru.weight_hh_l{k}
    b_ih     (3H,)  b_hh (3H,)  gru.bias_ih_l{k}, gru.bias_hh_l{k}
    W_out    (V, H)  b_out (V,) lm_head.weight, lm_head.bias
    R Z N    (T, B, H)          the gates after their activations (cached)
    GHn      (T, B, H)          gh_n = h_{t-1} W_hn^T + b_hn, the term the reset scales (cached)
    Hs       (T, B, H)          outputs h_t (cached)
    logits   (B, T, V)
Inside the recurrence the activations are kept time-major, (T, B, .), so that
each step reads and writes one contiguous (B, .) block.

Because b_hn sits inside r * (...), b_ih and b_hh get different gradients in
their n block (equal in the r and z blocks), unlike the RNN and the LSTM.
"""
import math
from dataclasses import dataclass

import numpy


@dataclass
class Config:
    vocab_size: int = 65  # number of distinct characters; train.py sets it from the corpus
    d_model: int = 256    # hidden size H (= embedding size C); the state is h, H per layer
    n_layer: int = 2      # stacked GRU layers


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


def sigmoid(x, xp):
    """sigma(x) = 1 / (1 + e^-x), computed as 0.5 * tanh(0.5 * x) + 0.5 (an exact identity).
    Stable: tanh never overflows, where e^-x does for x < -88 in float32; near 0 and 1 the
    result is within an ulp (absolute error ~1e-16 in float64, what matters for a gate that
    multiplies O(1) values). The backward uses the output: sigma' = sigma * (1 - sigma)."""
    return 0.5 * xp.tanh(0.5 * x) + 0.5


# ------------------------------------------------------------------ one GRU layer
def gru_forward(x, W_ih, W_hh, b_ih, b_hh, xp):
    """x (T, B, C) time-major -> Hs (T, B, H), cache. Starts from h = 0."""
    T, B, _ = x.shape
    H = W_hh.shape[1]
    # the input side for all T at once: GI = x W_ih^T + b_ih    (T, B, 3H)
    GI = (x.reshape(T * B, -1) @ W_ih.T).reshape(T, B, 3 * H)
    GI += b_ih
    # W_hh^T copied once into its own contiguous (H, 3H) array: OpenBLAS multiplies the
    # (B, H) state by it much faster than by the transposed view W_hh.T (float32, one
    # thread). Measured on the standard config: the forward takes 45 ms of CPU time instead of 58.
    W_hhT = xp.ascontiguousarray(W_hh.T)
    R, Z, N, GHn, Hs = (xp.empty((T, B, H), x.dtype) for _ in range(5))
    h = xp.zeros((B, H), x.dtype)                          # h_{-1} = 0
    for t in range(T):
        gi, gh = GI[t], h @ W_hhT + b_hh                   # gh = h_{t-1} W_hh^T + b_hh  (B, 3H)
        R[t] = sigmoid(gi[:, :H] + gh[:, :H], xp)          # r = sigma(gi_r + gh_r)
        Z[t] = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H], xp)  # z = sigma(gi_z + gh_z)
        GHn[t] = gh[:, 2 * H:]
        N[t] = xp.tanh(gi[:, 2 * H:] + R[t] * GHn[t])      # n = tanh(gi_n + r * gh_n)
        Hs[t] = N[t] + Z[t] * (h - N[t])                   # h_t = (1 - z) * n + z * h_{t-1}, as n + z (h_{t-1} - n)
        h = Hs[t]
    cache = (x, R, Z, N, GHn, Hs, W_ih, W_hh)    # what BPTT needs: the input, the gates, gh_n and h
    return Hs, cache


# The backward of one layer, BPTT. Write dh_t for the whole gradient of the loss with
# respect to h_t, including everything that flows back from later steps.
# - h_t has two consumers: what is above (the next layer or the head: dHs[t], given) and
#   step t+1. So dh_t = dHs[t] + (what step t+1 sends back to h_t), the carried dh.
# - h_t = (1 - z) * n + z * h_{t-1}:
#       dn = dh_t * (1 - z)     dz = dh_t * (h_{t-1} - n)     and h_{t-1} gets dh_t * z directly
# - n = tanh(gi_n + r * gh_n), with tanh' = 1 - n^2 from the cached output:
#       dn_pre = dn * (1 - n^2)        the gradient of the whole argument of tanh
#       d(gi_n) = dn_pre    dr = dn_pre * gh_n    d(gh_n) = dn_pre * r
#   The reset sits inside the candidate, after the hidden matmul: the hidden side's n
#   block (and so b_hn) sees r times the gradient that the input side's n block sees.
# - r = sigma(gi_r + gh_r), z = sigma(gi_z + gh_z), with sigma' = s(1 - s) from the output:
#       dr_pre = dr * r(1 - r)     dz_pre = dz * z(1 - z)
#   These reach gi and gh alike (both enter the same sum).
# - So dGI_t = [dr_pre, dz_pre, dn_pre] and dGH_t = [dr_pre, dz_pre, dn_pre * r], and
#   gh = h_{t-1} W_hh^T + b_hh sends h_{t-1} the rest of dh_{t-1}: dGH_t W_hh.
#   (For Y = X W^T: dX = dY W, dW = dY^T X.) Summed over t:
#       dW_ih = sum dGI_t^T x_t    dW_hh = sum dGH_t^T h_{t-1}    db_ih = sum dGI_t    db_hh = sum dGH_t
#       dx_t = dGI_t W_ih          (the dHs of the layer below)
# Only dh is sequential; the weight gradients are one matmul over all T*B rows.
def gru_backward(dHs, cache, xp):
    """dHs (T, B, H) -> dx (T, B, C), dW_ih, dW_hh, db_ih, db_hh."""
    x, R, Z, N, GHn, Hs, W_ih, W_hh = cache
    T, B, H = Hs.shape
    H_prev = xp.concatenate([xp.zeros_like(Hs[:1]), Hs[:-1]])         # h_{t-1}, h_{-1} = 0
    dGH = xp.empty((T, B, 3 * H), Hs.dtype)        # dL/d(gh_t), the hidden side
    dN = xp.empty((T, B, H), Hs.dtype)             # dn_pre, the input side's n block
    dh = xp.zeros((B, H), Hs.dtype)
    for t in reversed(range(T)):
        r, z, n = R[t], Z[t], N[t]
        dh = dh + dHs[t]                                       # dh_t = dHs[t] + what step t+1 sent back
        dN[t] = dh * (1 - z) * (1 - n * n)                     # dn_pre = dn * tanh', dn = dh * (1 - z)
        dGH[t, :, :H] = dN[t] * GHn[t] * r * (1 - r)           # dr_pre = dr * sigma', dr = dn_pre * gh_n
        dGH[t, :, H:2 * H] = dh * (H_prev[t] - n) * z * (1 - z)  # dz_pre = dz * sigma', dz = dh * (h_{t-1} - n)
        dGH[t, :, 2 * H:] = dN[t] * r                          # d(gh_n) = dn_pre * r
        dh = dh * z + dGH[t] @ W_hh                            # dh_{t-1}: through z * h_{t-1}, and through gh
    dGI = dGH.copy()                               # [dr_pre, dz_pre, dn_pre]: dGH but for the n block
    dGI[:, :, 2 * H:] = dN
    dGI2, dGH2 = dGI.reshape(T * B, 3 * H), dGH.reshape(T * B, 3 * H)
    dW_ih = dGI2.T @ x.reshape(T * B, -1)                               # (3H, C)
    dW_hh = dGH[1:].reshape(-1, 3 * H).T @ Hs[:-1].reshape(-1, H)       # h_{-1} = 0 adds nothing
    dx = (dGI2 @ W_ih).reshape(T, B, -1)
    return dx, dW_ih, dW_hh, dGI2.sum(0), dGH2.sum(0)   # b_in gets dn_pre, b_hn gets dn_pre * r


class Model:
    def __init__(self, cfg, xp=numpy, dtype=numpy.float32, seed=0):
        self.cfg, self.xp, self.dtype = cfg, xp, numpy.dtype(dtype)
        V, H = cfg.vocab_size, cfg.d_model
        rng = numpy.random.default_rng(seed)

        def uniform(bound, *shape):  # drawn in float64 on the host, then cast and moved
            return xp.asarray(rng.uniform(-bound, bound, shape).astype(self.dtype))

        # PyTorch's default inits: Embedding N(0, 1); GRU and Linear U(-1/sqrt(fan), +1/sqrt(fan)).
        p = {"embedding.weight": xp.asarray(rng.standard_normal((V, H)).astype(self.dtype))}
        k = 1 / math.sqrt(H)
        for l in range(cfg.n_layer):
            p[f"gru.weight_ih_l{l}"] = uniform(k, 3 * H, H)
            p[f"gru.weight_hh_l{l}"] = uniform(k, 3 * H, H)
            p[f"gru.bias_ih_l{l}"] = uniform(k, 3 * H)
            p[f"gru.bias_hh_l{l}"] = uniform(k, 3 * H)
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
            x, layer_cache = gru_forward(x, p[f"gru.weight_ih_l{l}"], p[f"gru.weight_hh_l{l}"],
                                         p[f"gru.bias_ih_l{l}"], p[f"gru.bias_hh_l{l}"], xp)
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
            dx, *dW = gru_backward(dx, cache["layers"][l], xp)
            for name, g in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), dW):
                grads[f"gru.{name}_l{l}"] = g
        # x0 = E[idx]: scatter-add rows by a one-hot matmul (repeated ids add up)
        onehot = (idx.T.reshape(-1, 1) == xp.arange(V)).astype(self.dtype)    # (T*B, V)
        grads["embedding.weight"] = onehot.T @ dx.reshape(T * B, -1)            # (V, C)
        cache["dx0"] = dx.transpose(1, 0, 2)                                    # (B, T, C)
        return {k: grads[k] for k in p}

    # ------------------------------------------------------------ step (inference)
    def init_state(self, batch):
        """The whole memory of the model: one h of shape (batch, d_model) per layer, zeros.
        The GRU has no separate cell: the gates decide, unit by unit, how much of h
        to keep (z) and how much to overwrite with the candidate n."""
        return [self.xp.zeros((batch, self.cfg.d_model), self.dtype) for _ in range(self.cfg.n_layer)]

    def step(self, idx_t, state):
        """idx_t (B,) -> logits (B, V), new state. Cost per token does not depend on the position."""
        xp, p, H = self.xp, self.params, self.cfg.d_model
        x = p["embedding.weight"][check_idx(idx_t, self.cfg.vocab_size, 1, xp)]  # (B, C)
        new_state = []
        for l, h in enumerate(state):
            gi = x @ p[f"gru.weight_ih_l{l}"].T + p[f"gru.bias_ih_l{l}"]            # (B, 3H)
            gh = h @ p[f"gru.weight_hh_l{l}"].T + p[f"gru.bias_hh_l{l}"]            # (B, 3H)
            r = sigmoid(gi[:, :H] + gh[:, :H], xp)
            z = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H], xp)
            n = xp.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
            x = n + z * (h - n)                                                     # h, (B, H)
            new_state.append(x)
        return x @ p["lm_head.weight"].T + p["lm_head.bias"], new_state
