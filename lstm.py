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
- forward() is the training path, one lstm_forward() per layer: the input
  projection for all T positions is one matmul, and only the (B, H) @ (H, 4H)
  product and the gate arithmetic run in a Python loop over time, because h_t
  needs h_{t-1}. lstm_backward() is BPTT over the same loop, reversed, carrying
  dh and dc; its derivation is written above it.
- step() is the inference path: one token, one state update per layer, O(1)
  in the position.
- Runs on NumPy or CuPy (the `xp` argument), in float32 or float64.

What it is not
- No dropout, no peepholes (Gers & Schmidhuber 2000), no projection (proj_size),
  no bidirectional layers, no state carried between batches (every sequence
  starts from h = c = 0), no gradient clipping (train.py clips the global norm).
- Not the gate order of char-rnn or Karpathy's LSTM gist (i, f, o, g).

Initialization: PyTorch's defaults (every LSTM weight and bias U(+-1/sqrt(H))),
with the forget gate's bias chosen by Config.forget_bias:
- forget_bias = 0.0 (the default): PyTorch's draw is left as it is, so the init is
  exactly torch.nn.LSTM's (the forget gate's total bias is within +-2/sqrt(H),
  about 0, and f starts near 0.5).
- forget_bias = v != 0: b_ih_f = v and b_hh_f = 0, so the total is v. With 1.0,
  f starts near sigma(1) = 0.73 ("forget bias 1": Gers et al. 2000 recommend a
  positive initial forget bias; Jozefowicz, Zaremba & Sutskever 2015, section
  2.1, found that +1 closes the gap to the GRU; char-rnn's train.lua and Keras'
  unit_forget_bias do the same).
The random draws are the same either way: only the overwrite differs. On the
standard recipe (tiny shakespeare, 2000 iterations, float32) PyTorch's init ended
at val loss 1.6148 and 1.6305 (seeds 1337, 1338), forget bias 1 at 1.6890 and
1.7001: here the plain init is better by 0.07 nats, so it is the default.

Shapes (B batch, T time, C = H = d_model, V vocab)
    idx      (B, T) int         token ids
    E        (V, C)             embedding.weight
    W_ih     (4H, C)            lstm.weight_ih_l{k}    (out, in), row blocks [i; f; g; o]
    W_hh     (4H, H)            lstm.weight_hh_l{k}
    b_ih     (4H,)  b_hh (4H,)  lstm.bias_ih_l{k}, lstm.bias_hh_l{k}
    W_out    (V, H)  b_out (V,) lm_head.weight, lm_head.bias
    I F G O  (T, B, H)          the gates after their activations (cached)
    C, TC, Hs (T, B, H)         c_t, tanh(c_t) and h_t (cached)
    logits   (B, T, V)
Inside the recurrence the activations are kept time-major, (T, B, .), so that
each step reads and writes one contiguous (B, .) block.
"""
import math
from dataclasses import dataclass

import numpy


@dataclass
class Config:
    vocab_size: int = 65  # number of distinct characters; train.py sets it from the corpus
    d_model: int = 256    # hidden size H (= embedding size C); the state is (h, c), 2H per layer
    n_layer: int = 2      # stacked LSTM layers
    forget_bias: float = 0.0  # 0.0: PyTorch's U(+-1/sqrt(H)) draw; v != 0: b_ih_f = v, b_hh_f = 0


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


# ------------------------------------------------------------------ one LSTM layer
def lstm_forward(x, W_ih, W_hh, b_ih, b_hh, xp):
    """x (T, B, C) time-major -> Hs (T, B, H), cache. Starts from h = c = 0."""
    T, B, _ = x.shape
    H = W_hh.shape[1]
    # the input side for all T at once: A = x W_ih^T + b_ih + b_hh    (T, B, 4H)
    A = (x.reshape(T * B, -1) @ W_ih.T).reshape(T, B, 4 * H)
    A += b_ih + b_hh
    # W_hh^T copied once into its own contiguous (H, 4H) array: OpenBLAS multiplies the
    # (B, H) state by it in 0.11 ms, by the transposed view W_hh.T in 0.19 ms (float32, one
    # thread). Measured on the standard config: the forward takes 65 ms of CPU time instead of 81.
    W_hhT = xp.ascontiguousarray(W_hh.T)
    I, F, G, O, C, TC, Hs = (xp.empty((T, B, H), x.dtype) for _ in range(7))
    h = xp.zeros((B, H), x.dtype)                         # h_{-1} = 0
    c = xp.zeros((B, H), x.dtype)                         # c_{-1} = 0
    for t in range(T):
        a = A[t] + h @ W_hhT                              # a_t = x_t W_ih^T + b + h_{t-1} W_hh^T  (B, 4H)
        I[t] = sigmoid(a[:, :H], xp)                      # i = sigma(a_i)
        F[t] = sigmoid(a[:, H:2 * H], xp)                 # f = sigma(a_f)
        G[t] = xp.tanh(a[:, 2 * H:3 * H])                 # g = tanh(a_g)
        O[t] = sigmoid(a[:, 3 * H:], xp)                  # o = sigma(a_o)
        C[t] = F[t] * c + I[t] * G[t]                     # c_t = f * c_{t-1} + i * g
        TC[t] = xp.tanh(C[t])
        Hs[t] = O[t] * TC[t]                              # h_t = o * tanh(c_t)
        h, c = Hs[t], C[t]
    # BPTT needs the input, every gate, c, tanh(c) and h (tanh(c) is stored rather than
    # recomputed: one (T, B, H) array saves one tanh pass)
    cache = (x, I, F, G, O, C, TC, Hs, W_ih, W_hh)
    return Hs, cache


# The backward of one layer, BPTT. Write dh_t, dc_t for the whole gradient of the loss
# with respect to h_t and c_t, including everything that flows back from later steps.
# - h_t has two consumers: what is above (the next layer or the head: dHs[t], given) and
#   step t+1, through a_{t+1} = ... + h_t W_hh^T. For Y = X W^T the gradients are
#   dX = dY W and dW = dY^T X, so
#       dh_t = dHs[t] + da_{t+1} W_hh                     the carried dh
# - c_t has two consumers: h_t = o * tanh(c_t), and c_{t+1} = f_{t+1} * c_t + ...:
#       dc_t = dh_t * o * (1 - tanh(c_t)^2) + dc_{t+1} * f_{t+1}        the carried dc
#   The second term is why the LSTM remembers: the gradient along c is only scaled by
#   forget gates, with no W_hh and no tanh' in between.
# - The gates, from c_t = f * c_{t-1} + i * g and h_t = o * tanh(c_t):
#       di = dc_t * g    df = dc_t * c_{t-1}    dg = dc_t * i    do = dh_t * tanh(c_t)
# - Through the activations, written with their cached outputs: for s = sigma(a),
#   ds/da = e^-a / (1 + e^-a)^2 = s * (1 - s); for g = tanh(a), dg/da = 1 - g^2. So
#       da = [di * i(1 - i), df * f(1 - f), dg * (1 - g^2), do * o(1 - o)]      (B, 4H)
# - Then a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh gives, summed over t,
#       dW_ih = sum da_t^T x_t    dW_hh = sum da_t^T h_{t-1}    db_ih = db_hh = sum da_t
#       dx_t = da_t W_ih          (the dHs of the layer below)
# Only dh and dc are sequential; the weight gradients are one matmul over all T*B rows.
def lstm_backward(dHs, cache, xp):
    """dHs (T, B, H) -> dx (T, B, C), dW_ih, dW_hh, db_ih, db_hh."""
    x, I, F, G, O, C, TC, Hs, W_ih, W_hh = cache
    T, B, H = Hs.shape
    C_prev = xp.concatenate([xp.zeros_like(C[:1]), C[:-1]])           # c_{t-1}, c_{-1} = 0
    dA = xp.empty((T, B, 4 * H), Hs.dtype)                             # da_t, all t
    dh = xp.zeros((B, H), Hs.dtype)
    dc = xp.zeros((B, H), Hs.dtype)
    for t in reversed(range(T)):
        i, f, g, o, tc = I[t], F[t], G[t], O[t], TC[t]
        dh = dh + dHs[t]                                  # dh_t = dHs[t] + da_{t+1} W_hh
        dc = dc + dh * o * (1 - tc * tc)                  # dc_t = dc_{t+1} f_{t+1} + dh_t o (1 - tanh^2 c_t)
        dA[t, :, :H] = dc * g * i * (1 - i)               # da_i = di * sigma'(a_i), di = dc * g
        dA[t, :, H:2 * H] = dc * C_prev[t] * f * (1 - f)  # da_f = df * sigma'(a_f), df = dc * c_{t-1}
        dA[t, :, 2 * H:3 * H] = dc * i * (1 - g * g)      # da_g = dg * tanh'(a_g), dg = dc * i
        dA[t, :, 3 * H:] = dh * tc * o * (1 - o)          # da_o = do * sigma'(a_o), do = dh * tanh(c_t)
        dc = dc * f                                       # the c_{t-1} part of dc_{t-1}
        dh = dA[t] @ W_hh                                 # the h_{t-1} part of dh_{t-1}
    dA2 = dA.reshape(T * B, 4 * H)
    dW_ih = dA2.T @ x.reshape(T * B, -1)                                # (4H, C)
    dW_hh = dA[1:].reshape(-1, 4 * H).T @ Hs[:-1].reshape(-1, H)        # h_{-1} = 0 adds nothing
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
            x, layer_cache = lstm_forward(x, p[f"lstm.weight_ih_l{l}"], p[f"lstm.weight_hh_l{l}"],
                                          p[f"lstm.bias_ih_l{l}"], p[f"lstm.bias_hh_l{l}"], xp)
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
            dx, *dW = lstm_backward(dx, cache["layers"][l], xp)
            for name, g in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), dW):
                grads[f"lstm.{name}_l{l}"] = g
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
            a = (x @ p[f"lstm.weight_ih_l{l}"].T + p[f"lstm.bias_ih_l{l}"]
                 + h @ p[f"lstm.weight_hh_l{l}"].T + p[f"lstm.bias_hh_l{l}"])      # (B, 4H)
            i, f = sigmoid(a[:, :H], xp), sigmoid(a[:, H:2 * H], xp)
            g, o = xp.tanh(a[:, 2 * H:3 * H]), sigmoid(a[:, 3 * H:], xp)
            c = f * c + i * g
            x = o * xp.tanh(c)                                                      # h, (B, H)
            new_state.append((x, c))
        return x @ p["lm_head.weight"].T + p["lm_head.bias"], new_state
