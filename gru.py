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
- forward() is the training path: the input projection for all T positions is one
  matmul, and only the (B, H) @ (H, 3H) product and the gate arithmetic run in a
  Python loop over time, because h_t needs h_{t-1}. backward() is BPTT over the
  same loop, reversed.
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
    gates    (T, B, 3H)         [r, z, n] after their activations (cached)
    gh_n     (T, B, H)          h_{t-1} W_hn^T + b_hn, the term the reset scales (cached)
    h        (T, B, H)          outputs (cached)
    logits   (B, T, V)
Inside the recurrence the activations are kept time-major, (T, B, .), so that
each step reads and writes one contiguous (B, .) block.

The math of every backward line below is in MATH.md section 7 of this project's
design notes; the tests check it by finite differences and against torch.nn.GRU.
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


def sigmoid_(a, xp):
    """In place: a <- sigma(a) = 0.5 * tanh(0.5 * a) + 0.5, an exact identity.
    It is stable (tanh never overflows; the result is within an ulp of 0 or 1 at
    the extremes, absolute error ~1e-16 in float64, which is what matters for a
    gate that multiplies O(1) values) and faster than the exp-and-branch form.
    The backward uses the cached output: sigma' = sigma(1 - sigma)."""
    a *= 0.5
    xp.tanh(a, out=a)
    a *= 0.5
    a += 0.5
    return a


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
        H = cfg.d_model
        # x = E[idx], time-major: (T, B, C)
        x = p["embedding.weight"][idx.T] if x0 is None else xp.ascontiguousarray(xp.asarray(x0).transpose(1, 0, 2))
        layers = []
        x0 = x
        for l in range(cfg.n_layer):
            W_ih, W_hh = p[f"gru.weight_ih_l{l}"], p[f"gru.weight_hh_l{l}"]
            b_hh = p[f"gru.bias_hh_l{l}"]
            # the input side for all T at once: A = x W_ih^T + b_ih    (T, B, 3H)
            A = (x.reshape(T * B, -1) @ W_ih.T).reshape(T, B, 3 * H)
            A += p[f"gru.bias_ih_l{l}"]
            A[:, :, :2 * H] += b_hh[:2 * H]         # b_hr, b_hz sit outside the reset: add them here too
            b_hn = b_hh[2 * H:]                     # b_hn sits inside r * (...): added at each step
            GHn = xp.empty((T, B, H), self.dtype)   # gh_n = h_{t-1} W_hn^T + b_hn
            Hs = xp.empty((T, B, H), self.dtype)    # h_t
            h = xp.zeros((B, H), self.dtype)        # h_{-1} = 0
            ah = xp.empty((B, 3 * H), self.dtype)   # h_{t-1} W_hh^T
            rg = xp.empty((B, H), self.dtype)       # r * gh_n
            # the recurrence, in place: A[t] becomes the gates [r, z, n] of step t
            for t in range(T):
                a = A[t]                                  # (B, 3H)
                xp.matmul(h, W_hh.T, out=ah)
                a[:, :2 * H] += ah[:, :2 * H]
                sigmoid_(a[:, :2 * H], xp)                # r, z = sigma(gi + gh)
                r, z, n = a[:, :H], a[:, H:2 * H], a[:, 2 * H:]
                xp.add(ah[:, 2 * H:], b_hn, out=GHn[t])   # gh_n
                xp.multiply(r, GHn[t], out=rg)
                n += rg
                xp.tanh(n, out=n)                         # n = tanh(gi_n + r * gh_n)
                xp.subtract(h, n, out=Hs[t])
                Hs[t] *= z
                Hs[t] += n                                # h_t = n + z * (h_{t-1} - n)
                h = Hs[t]
            layers.append((x, A, GHn, Hs))    # what BPTT needs: the layer's input, the gates, gh_n and h
            x = Hs
        h = x.transpose(1, 0, 2).reshape(B * T, H)                # top layer, batch-major (B*T, H)
        logits = (h @ p["lm_head.weight"].T + p["lm_head.bias"]).reshape(B, T, -1)  # (B, T, V)
        cache = {"idx": idx, "x0": x0.transpose(1, 0, 2), "layers": layers, "h": h}
        return logits, cache

    # ----------------------------------------------------------------- backward
    def backward(self, dlogits, cache):
        """dlogits (B, T, V) -> grads, a dict with the keys of .params."""
        xp, p, cfg = self.xp, self.params, self.cfg
        idx, h = cache["idx"], cache["h"]
        B, T = idx.shape
        V, H = cfg.vocab_size, cfg.d_model
        grads = {}
        # logits = h W_out^T + b_out
        dl = xp.asarray(dlogits, dtype=self.dtype).reshape(B * T, V)
        grads["lm_head.weight"] = dl.T @ h                                      # (V, H)
        grads["lm_head.bias"] = dl.sum(0)
        dx = (dl @ p["lm_head.weight"]).reshape(B, T, H).transpose(1, 0, 2)     # dH of the top layer, (T, B, H)
        for l in reversed(range(cfg.n_layer)):
            x, gates, GHn, Hs = cache["layers"][l]
            W_hh = p[f"gru.weight_hh_l{l}"]
            G3 = gates.reshape(T, B, 3, H)
            r, z, n = G3[:, :, 0], G3[:, :, 1], G3[:, :, 2]                     # (T, B, H) each
            H_prev = xp.zeros_like(Hs)                                          # h_{t-1}, h_{-1} = 0
            H_prev[1:] = Hs[:-1]
            # The local derivatives do not depend on the carried gradient: all t at once.
            # With dh = dL/dh_t:
            #   dn_pre = dh * (1 - z) * (1 - n^2)           from h_t = (1 - z) * n + ..., n = tanh(.)
            #   dz_pre = dh * (h_{t-1} - n) * z(1 - z)      from h_t = ... + z * (h_{t-1} - n)
            #   dr_pre = dn_pre * gh_n * r(1 - r)           from n = tanh(gi_n + r * gh_n)
            #   d(gh_n) = dn_pre * r                        the reset scales the hidden side only
            Kn = (1 - z) * (1 - n * n)
            KH = xp.empty((T, B, 3, H), self.dtype)         # the factors of dGH = dL/d(gh)
            KH[:, :, 0] = Kn * GHn * r * (1 - r)
            KH[:, :, 1] = (H_prev - n) * z * (1 - z)
            KH[:, :, 2] = Kn * r
            # BPTT, carrying dh; dGH[t] = dL/d(gh_t) = [dr_pre, dz_pre, dn_pre * r], the hidden side.
            dGH = xp.empty((T, B, 3 * H), self.dtype)
            dHs = xp.empty((T, B, H), self.dtype)          # dh at each t, for the input side below
            dh = xp.zeros((B, H), self.dtype)
            tmp = xp.empty((B, H), self.dtype)
            for t in reversed(range(T)):
                dh += dx[t]                                # from above: the head, or the next layer's input
                dHs[t] = dh
                xp.multiply(dh[:, None], KH[t], out=dGH[t].reshape(B, 3, H))
                dh *= z[t]                                 # to h_{t-1}, through z * h_{t-1}
                xp.matmul(dGH[t], W_hh, out=tmp)
                dh += tmp                                  # to h_{t-1}, through h_{t-1} W_hh^T
            # Everything that is not sequential is one matmul over all (T*B) rows.
            # The input side dGI = [dr_pre, dz_pre, dn_pre] equals dGH but for the n block.
            dGI = dGH.copy()
            xp.multiply(dHs, Kn, out=dGI.reshape(T, B, 3, H)[:, :, 2])           # dn_pre
            dGI2, dGH2 = dGI.reshape(T * B, 3 * H), dGH.reshape(T * B, 3 * H)
            grads[f"gru.weight_ih_l{l}"] = dGI2.T @ x.reshape(T * B, -1)         # (3H, C)
            # h_{t-1} for t >= 1 (h_{-1} = 0 contributes nothing)
            grads[f"gru.weight_hh_l{l}"] = dGH[1:].reshape(-1, 3 * H).T @ Hs[:-1].reshape(-1, H)
            grads[f"gru.bias_ih_l{l}"] = dGI2.sum(0)                            # b_in gets dn_pre ...
            grads[f"gru.bias_hh_l{l}"] = dGH2.sum(0)                            # ... b_hn gets dn_pre * r
            dx = (dGI2 @ p[f"gru.weight_ih_l{l}"]).reshape(T, B, -1)            # dL/dx, the layer below's dH
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
            rz = sigmoid_(gi[:, :2 * H] + gh[:, :2 * H], xp)
            r, z = rz[:, :H], rz[:, H:]
            n = xp.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
            x = n + z * (h - n)                                                     # h, (B, H)
            new_state.append(x)
        return x @ p["lm_head.weight"].T + p["lm_head.bias"], new_state
