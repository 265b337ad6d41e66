"""
lstm.py: a character-level language model built on the LSTM, with a
hand-derived backward pass (backpropagation through time).

    embedding -> n_layer stacked LSTM layers -> linear head -> logits

What it is
- Each layer is torch.nn.LSTM(batch_first=True), layer by layer, with PyTorch's
  parameter names, layouts and gate order (i, f, g, o), so a checkpoint's arrays
  load into `torch.nn.Embedding` + `torch.nn.LSTM` + `torch.nn.Linear` unchanged:
      a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh            (B, 4H), blocks [i; f; g; o]
      i = sigma(a_i)   input gate      how much of the candidate to write
      f = sigma(a_f)   forget gate     how much of the old cell to keep
      g = tanh(a_g)    candidate       what to write
      o = sigma(a_o)   output gate     how much of the cell to show
      c_t = f * c_{t-1} + i * g                                   the cell, the memory
      h_t = o * tanh(c_t)                                         the output, and the next input
  The cell with input and output gates is Hochreiter & Schmidhuber (1997, Neural
  Computation 9(8), section 4); the forget gate f is Gers, Schmidhuber & Cummins
  (2000, "Learning to forget", section 2). Without f (f = 1) the cell only adds
  up; with f it can also decay and reset.
- Memory is (h, c): 2 * d_model numbers per layer, whatever the length of the
  history. Gradients flow back along c through products of forget gates only
  (dc_{t-1} = dc_t * f, plus what arrives through h), not through a fresh
  W_hh and tanh' every step as in the vanilla RNN: that is why the LSTM
  remembers longer.
- forward() is the training path: the input projection for all T positions is one
  matmul, and only the (B, H) @ (H, 4H) product and the gate arithmetic run in a
  Python loop over time, because h_t needs h_{t-1}. backward() is BPTT over the
  same loop, reversed, carrying dh and dc.
- step() is the inference path: one token, one state update per layer, O(1)
  in the position.
- Runs on NumPy or CuPy (the `xp` argument), in float32 or float64.

What it is not
- No dropout, no peepholes (Gers & Schmidhuber 2000), no projection (proj_size),
  no bidirectional layers, no state carried between batches (every sequence
  starts from h = c = 0), no gradient clipping (train.py clips the global norm).
- Not the gate order of char-rnn or Karpathy's LSTM gist (i, f, o, g).

Initialization: PyTorch's defaults (every LSTM weight and bias U(+-1/sqrt(H))),
except the forget gate's bias, chosen by Config.forget_bias:
- forget_bias = 1.0: b_ih_f = 1 and b_hh_f = 0, so the forget gate's total bias is
  1 and f starts near sigma(1) = 0.73 instead of 0.5 ("forget bias 1": Gers et al.
  2000 recommend a positive initial forget bias; Jozefowicz, Zaremba & Sutskever
  2015, section 2.1, found that +1 closes the gap to the GRU; char-rnn's train.lua
  and Keras' unit_forget_bias do the same). Any other nonzero value v sets
  b_ih_f = v, b_hh_f = 0 the same way.
- forget_bias = 0.0: PyTorch's draw is left as it is, so the init is exactly
  torch.nn.LSTM's (whose total forget bias is then within +-2/sqrt(H), about 0).
The random draws are the same either way: only the overwrite differs.

Shapes (B batch, T time, C = H = d_model, V vocab)
    idx      (B, T) int         token ids
    E        (V, C)             embedding.weight
    W_ih     (4H, C)            lstm.weight_ih_l{k}    (out, in), row blocks [i; f; g; o]
    W_hh     (4H, H)            lstm.weight_hh_l{k}
    b_ih     (4H,)  b_hh (4H,)  lstm.bias_ih_l{k}, lstm.bias_hh_l{k}
    W_out    (V, H)  b_out (V,) lm_head.weight, lm_head.bias
    gates    (T, B, 4H)         [i, f, g, o] after their activations (cached)
    c, h     (T, B, H)          cell states and outputs (cached)
    logits   (B, T, V)
Inside the recurrence the activations are kept time-major, (T, B, .), so that
each step reads and writes one contiguous (B, .) block.

The math of every backward line below is in MATH.md section 6 of this project's
design notes; the tests check it by finite differences and against torch.nn.LSTM.
"""
import math
from dataclasses import dataclass

import numpy


@dataclass
class Config:
    vocab_size: int = 65  # number of distinct characters; train.py sets it from the corpus
    d_model: int = 256    # hidden size H (= embedding size C); the state is (h, c), 2H per layer
    n_layer: int = 2      # stacked LSTM layers
    forget_bias: float = 1.0  # initial b_ih_f (b_hh_f = 0); 0.0 keeps PyTorch's U(+-1/sqrt(H)) draw


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


def gate_activations(a, scale, shift, xp):
    """In place: a (..., 4H) pre-activations [a_i, a_f, a_g, a_o] -> [i, f, g, o].

    One tanh over the whole block does all four gates, because
        sigma(x) = 0.5 * tanh(0.5 * x) + 0.5     (exact identity)
        tanh(x)  = 1.0 * tanh(1.0 * x) + 0.0
    so with s = `scale` = 0.5 on the i, f, o blocks and 1 on the g block, and
    `shift` = 1 - s, a <- s * tanh(s * a) + (1 - s).
    It is stable: tanh never overflows, and the result is within an ulp of 0 or 1
    at the extremes (absolute error ~1e-16 in float64, which is what matters for a
    gate that multiplies O(1) values). The backward uses the cached outputs:
    sigma' = sigma(1 - sigma), tanh' = 1 - tanh^2."""
    a *= scale
    xp.tanh(a, out=a)
    a *= scale
    a += shift
    return a


class Model:
    def __init__(self, cfg, xp=numpy, dtype=numpy.float32, seed=0):
        self.cfg, self.xp, self.dtype = cfg, xp, numpy.dtype(dtype)
        V, H = cfg.vocab_size, cfg.d_model
        rng = numpy.random.default_rng(seed)

        def uniform(bound, *shape):  # drawn in float64 on the host, then cast and moved
            return xp.asarray(rng.uniform(-bound, bound, shape).astype(self.dtype))

        # PyTorch's default inits: Embedding N(0, 1); LSTM and Linear U(-1/sqrt(fan), +1/sqrt(fan)).
        p = {"embedding.weight": xp.asarray(rng.standard_normal((V, H)).astype(self.dtype))}
        k = 1 / math.sqrt(H)
        for l in range(cfg.n_layer):
            p[f"lstm.weight_ih_l{l}"] = uniform(k, 4 * H, H)
            p[f"lstm.weight_hh_l{l}"] = uniform(k, 4 * H, H)
            p[f"lstm.bias_ih_l{l}"] = uniform(k, 4 * H)
            p[f"lstm.bias_hh_l{l}"] = uniform(k, 4 * H)
            if cfg.forget_bias != 0:  # the forget gate's total bias = forget_bias (module docstring)
                p[f"lstm.bias_ih_l{l}"][H:2 * H] = cfg.forget_bias
                p[f"lstm.bias_hh_l{l}"][H:2 * H] = 0
        p["lm_head.weight"] = uniform(k, V, H)
        p["lm_head.bias"] = uniform(k, V)
        self.params = p
        # gate_activations' constants: s = 0.5 on the sigmoid blocks i, f, o, 1 on the tanh block g
        scale = numpy.full(4 * H, 0.5)
        scale[2 * H:3 * H] = 1
        self.gate_scale = xp.asarray(scale.astype(self.dtype))
        self.gate_shift = xp.asarray((1 - scale).astype(self.dtype))

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
            W_ih, W_hh = p[f"lstm.weight_ih_l{l}"], p[f"lstm.weight_hh_l{l}"]
            # the input side for all T at once: A = x W_ih^T + b_ih + b_hh    (T, B, 4H)
            A = (x.reshape(T * B, -1) @ W_ih.T).reshape(T, B, 4 * H)
            A += p[f"lstm.bias_ih_l{l}"] + p[f"lstm.bias_hh_l{l}"]
            Cs = xp.empty((T, B, H), self.dtype)    # c_t
            TCs = xp.empty((T, B, H), self.dtype)   # tanh(c_t)
            Hs = xp.empty((T, B, H), self.dtype)    # h_t
            h = xp.zeros((B, H), self.dtype)        # h_{-1} = 0
            c = xp.zeros((B, H), self.dtype)        # c_{-1} = 0
            ah = xp.empty((B, 4 * H), self.dtype)   # h_{t-1} W_hh^T
            ig = xp.empty((B, H), self.dtype)       # i * g
            # the recurrence, in place: A[t] becomes the gates [i, f, g, o] of step t
            for t in range(T):
                a = A[t]                                  # (B, 4H)
                xp.matmul(h, W_hh.T, out=ah)
                a += ah                                   # a_t = x_t W_ih^T + b + h_{t-1} W_hh^T
                gate_activations(a, self.gate_scale, self.gate_shift, xp)
                i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
                xp.multiply(f, c, out=Cs[t])
                xp.multiply(i, g, out=ig)
                Cs[t] += ig                               # c_t = f * c_{t-1} + i * g
                xp.tanh(Cs[t], out=TCs[t])
                xp.multiply(o, TCs[t], out=Hs[t])         # h_t = o * tanh(c_t)
                h, c = Hs[t], Cs[t]
            # what BPTT needs: the layer's input, the gates, c, tanh(c) and h
            # (tanh(c) is stored rather than recomputed: one (T, B, H) array for one tanh pass)
            layers.append((x, A, Cs, TCs, Hs))
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
            x, gates, Cs, TCs, Hs = cache["layers"][l]
            W_hh = p[f"lstm.weight_hh_l{l}"]
            G4 = gates.reshape(T, B, 4, H)
            i, f, g, o = G4[:, :, 0], G4[:, :, 1], G4[:, :, 2], G4[:, :, 3]     # (T, B, H) each
            C_prev = xp.zeros_like(Cs)                                          # c_{t-1}, c_{-1} = 0
            C_prev[1:] = Cs[:-1]
            # The local derivatives do not depend on the carried gradients: all t at once.
            # With dh = dL/dh_t and dc = dL/dc_t (the latter including the path through h_t):
            #   dc  += dh * o * (1 - tanh(c)^2)           from h_t = o * tanh(c_t)
            #   da_i = dc * g * i(1 - i)                  from c_t = f * c_{t-1} + i * g
            #   da_f = dc * c_{t-1} * f(1 - f)
            #   da_g = dc * i * (1 - g^2)
            #   da_o = dh * tanh(c) * o(1 - o)            from h_t = o * tanh(c_t)
            K = xp.empty((T, B, 4, H), self.dtype)                              # the factors of da
            K[:, :, 0] = g * i * (1 - i)
            K[:, :, 1] = C_prev * f * (1 - f)
            K[:, :, 2] = i * (1 - g * g)
            K[:, :, 3] = TCs * o * (1 - o)
            Kc = o * (1 - TCs * TCs)                                            # the factor of dh into dc
            # BPTT, carrying dh and dc; dA[t] = dL/da_t, the pre-activations of all four gates.
            dA = xp.empty((T, B, 4 * H), self.dtype)
            dA4 = dA.reshape(T, B, 4, H)
            dh = xp.zeros((B, H), self.dtype)
            dc = xp.zeros((B, H), self.dtype)
            tmp = xp.empty((B, H), self.dtype)
            for t in reversed(range(T)):
                dh += dx[t]                                       # from above: the head, or the next layer's input
                xp.multiply(dh, Kc[t], out=tmp)
                dc += tmp                                         # through h_t = o * tanh(c_t)
                xp.multiply(dc[:, None], K[t, :, :3], out=dA4[t, :, :3])   # da_i, da_f, da_g
                xp.multiply(dh, K[t, :, 3], out=dA4[t, :, 3])              # da_o
                dc *= f[t]                                        # to c_{t-1}, through f * c_{t-1}
                xp.matmul(dA[t], W_hh, out=dh)                    # to h_{t-1}, through h_{t-1} W_hh^T
            # Everything that is not sequential is one matmul over all (T*B) rows.
            dA2 = dA.reshape(T * B, 4 * H)
            grads[f"lstm.weight_ih_l{l}"] = dA2.T @ x.reshape(T * B, -1)        # (4H, C)
            # h_{t-1} for t >= 1 (h_{-1} = 0 contributes nothing)
            grads[f"lstm.weight_hh_l{l}"] = dA[1:].reshape(-1, 4 * H).T @ Hs[:-1].reshape(-1, H)
            grads[f"lstm.bias_ih_l{l}"] = dA2.sum(0)
            grads[f"lstm.bias_hh_l{l}"] = grads[f"lstm.bias_ih_l{l}"].copy()   # both biases enter the same sum
            dx = (dA2 @ p[f"lstm.weight_ih_l{l}"]).reshape(T, B, -1)           # dL/dx, the layer below's dH
        # x0 = E[idx]: scatter-add rows by a one-hot matmul (repeated ids add up)
        onehot = (idx.T.reshape(-1, 1) == xp.arange(V)).astype(self.dtype)    # (T*B, V)
        grads["embedding.weight"] = onehot.T @ dx.reshape(T * B, -1)            # (V, C)
        cache["dx0"] = dx.transpose(1, 0, 2)                                    # (B, T, C)
        return {k: grads[k] for k in p}

    # ------------------------------------------------------------ step (inference)
    def init_state(self, batch):
        """The whole memory of the model: per layer, h and c, each (batch, d_model), zeros.
        c is the long-term store that the gates write and erase; h = o * tanh(c) is
        what the layer shows to the next layer and to itself at the next step."""
        xp, H = self.xp, self.cfg.d_model
        return [(xp.zeros((batch, H), self.dtype), xp.zeros((batch, H), self.dtype))
                for _ in range(self.cfg.n_layer)]

    def step(self, idx_t, state):
        """idx_t (B,) -> logits (B, V), new state. Cost per token does not depend on the position."""
        xp, p, H = self.xp, self.params, self.cfg.d_model
        x = p["embedding.weight"][check_idx(idx_t, self.cfg.vocab_size, 1, xp)]  # (B, C)
        new_state = []
        for l, (h, c) in enumerate(state):
            a = x @ p[f"lstm.weight_ih_l{l}"].T + p[f"lstm.bias_ih_l{l}"] + p[f"lstm.bias_hh_l{l}"]
            a += h @ p[f"lstm.weight_hh_l{l}"].T                                    # (B, 4H)
            gate_activations(a, self.gate_scale, self.gate_shift, xp)
            i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
            c = f * c + i * g
            x = o * xp.tanh(c)                                                      # h, (B, H)
            new_state.append((x, c))
        return x @ p["lm_head.weight"].T + p["lm_head.bias"], new_state
