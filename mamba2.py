"""
mamba2.py: a character-level language model built on Mamba-2, the state space
model that is also an attention layer, with a hand-derived backward pass.

    embedding -> n_layer x [x + Mixer(RMSNorm(x))] -> RMSNorm -> logits = h E^T (tied head)

What it is
- Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms
  Through Structured State Space Duality" (arXiv 2405.21060): the SSD layer (sections
  3-6) inside the Mamba-2 block (section 7), with one group of B and C shared
  by all heads (ngroups = 1). Names and layouts are those of tommyip/mamba2-minimal's
  Mamba2LMHeadModel (mamba_ssm's Mamba2 block; mamba_ssm adds a "backbone." prefix),
  so a checkpoint's arrays load into it by name (torch_ref/mamba2.py is that module,
  and the tests compare against it).
- The mixer, per position t (E = d_inner channels in H heads of P = headdim, N = d_state):
      [z, xBC, dt] = x W_in^T              in_proj, no bias: E | E + 2N | H outputs
      xBC     = SiLU(causal depthwise conv(xBC) + b)    one conv over x, B and C together
      [x, B_t, C_t] = xBC                   x (H, P): heads; B_t, C_t (N,): shared by all heads
      Delta   = softplus(dt + dt_bias)      (H,): one step size per head
      A       = -exp(A_log)                 (H,): ONE negative scalar per head (Mamba-1: (E, N))
      h_t     = exp(Delta_t A) h_{t-1} + (Delta_t x_t) (x) B_t      (H, P, N), the memory
      y_t     = h_t C_t + D x_t             read the memory, plus a skip per head
      out     = RMSNorm(y * SiLU(z)) W_out^T       the gated RMSNorm over all E, out_proj
- The duality (section 3). Unroll the recurrence: with the log-decays
  a_t = Delta_t A and their running sum S_t = a_0 + ... + a_t,
      y_t = sum_{s<=t} exp(S_t - S_s) (C_t . B_s) Delta_s x_s,  i.e.  Y = (L o C B^T) Xbar
  per head: L[t, s] = exp(S_t - S_s) for s <= t and 0 above the diagonal (a causal decay
  mask, "1-semiseparable"), Xbar = Delta x. That is masked attention without a softmax,
  queries C, keys B, values Delta x. Because A is a scalar per head, the decay factors
  out of the (N,) dot product; with Mamba-1's (E, N) A it would not.
- Three ways to compute it, all here and tested equal (1e-12 in float64):
  ssd_recurrent     the recurrence, token by token (T sequential steps of (H, P, N));
                    step() runs one step of it.
  ssd_quadratic     the attention form, the full (T, T) matrix M = L o (C B^T), then M Xbar:
                    T^2 work, no sequential steps.
  ssd_chunked_forward / _backward
                    what forward() uses (section 6): the quadratic form inside chunks of
                    Q = chunk_size positions, and the recurrence across chunks, carrying
                    one (H, P, N) state per chunk boundary: T Q work, T / Q sequential steps.
                    With Q >= T it IS the quadratic form (one chunk); with Q = 1 it is
                    the recurrence.
- Memory is the state h (H x P x N numbers per layer) plus the last d_conv - 1 conv
  inputs ((E + 2N) x (d_conv - 1)), whatever the length of the history.
- Init as mamba_ssm's Mamba2.__init__ and MixerModel._init_weights: Delta = softplus(dt_bias)
  log-uniform in [1e-3, 1e-1] (floor 1e-4), A uniform in [1, 16] per head (A_init_range),
  D = 1; PyTorch's Linear and Conv1d defaults; out_proj divided by sqrt(n_layer);
  embedding N(0, 0.02^2); norm weights 1.
- Runs on NumPy or CuPy (the `xp` argument), float32 or float64, no casts inside.

What it is not
- Not mamba_ssm's fused Triton kernels (they recompute in the backward what is stored
  here); no ngroups > 1, no in_proj / out_proj bias, no D per channel (D_has_hdim),
  no initial state, no dropout, no vocab padding (mamba2-minimal pads to 16), no state
  carried between batches, no gradient clipping (train.py clips).

Shapes (B batch, T time, C = d_model, E = d_inner = expand*C, H = nheads = E/P,
P = headdim, N = d_state, K = d_conv, F = E + 2N conv channels, Q = chunk_size, V vocab)
    symbol   paper      shape              parameter
    E_emb    -          (V, C)             embedding.weight (also the head: logits = h E_emb^T)
    w_norm   -          (C,)               layers.{i}.norm.weight          RMSNorm
    W_in     -          (2E + 2N + H, C)   layers.{i}.mixer.in_proj.weight rows [z | xBC | dt]
    w_conv   -          (F, 1, K)          layers.{i}.mixer.conv1d.weight
    b_conv   -          (F,)               layers.{i}.mixer.conv1d.bias
    dt_bias  -          (H,)               layers.{i}.mixer.dt_bias
    A_log    A = -exp() (H,)               layers.{i}.mixer.A_log
    D        D          (H,)               layers.{i}.mixer.D
    w_gn     -          (E,)               layers.{i}.mixer.norm.weight    gated RMSNorm
    W_out    -          (C, E)             layers.{i}.mixer.out_proj.weight
    w_f      -          (C,)               norm_f.weight
    x        X          (B, T, H, P)       the SSD's values
    Delta    Delta      (B, T, H)
    B_t, C_t B, C       (B, T, N)          keys and queries, one group for all heads
    h        h          (B, H, P, N)       the state
Activations are batch-major, (B, T, .), so that chunks are reshapes of the time axis.
"""
import math
from dataclasses import dataclass

import numpy


@dataclass
class Config:
    vocab_size: int = 65     # number of distinct characters; train.py sets it from the corpus
    d_model: int = 128       # residual stream width C
    n_layer: int = 4         # Mamba-2 blocks
    d_state: int = 64        # N: state size per head channel (Mamba-2 affords a larger N than Mamba-1's 16)
    expand: int = 2          # d_inner E = expand * d_model
    d_conv: int = 4          # K: taps of the causal depthwise conv
    headdim: int = 32        # P: channels per head; nheads H = E / P share one decay each
    chunk_size: int = 32     # Q: the chunked SSD's block; T need not be a multiple of it

    @property
    def d_inner(self):       # E
        return self.expand * self.d_model

    @property
    def nheads(self):        # H
        return self.d_inner // self.headdim


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


# --------------------------------------------------------------------- helpers
# Forward/backward pairs: name_forward(...) -> (y, cache), name_backward(dy, cache, ...).

def sigmoid(x, xp):
    """sigma(x) = (1 + tanh(x/2)) / 2: no overflow for any x, one transcendental."""
    s = xp.tanh(x * 0.5)
    s *= 0.5
    s += 0.5
    return s


def silu_forward(x, xp):
    """SiLU(x) = x sigma(x)."""
    s = sigmoid(x, xp)
    return x * s, (x, s)


def silu_backward(dy, cache):
    """d/dx x sigma(x) = sigma(x) (1 + x (1 - sigma(x)))."""
    x, s = cache
    return dy * s * (1 + x * (1 - s))


def rmsnorm_forward(x, w, xp, eps=1e-5):
    """y = x / sqrt(mean(x^2) + eps) * w over the last axis."""
    r = 1 / xp.sqrt((x * x).mean(-1, keepdims=True) + eps)   # (..., 1)
    n = x * r
    return n * w, (n, r, w)


def rmsnorm_backward(dy, cache):
    """-> dx, dw. dx = r (dn - n mean(dn n)): the mean couples all channels of a position."""
    n, r, w = cache
    dw = (dy * n).reshape(-1, w.shape[0]).sum(0)
    dn = dy * w
    return r * (dn - n * (dn * n).mean(-1, keepdims=True)), dw


def causal_conv_forward(x, w, b, xp):
    """Depthwise causal conv along time (axis 1), PyTorch's Conv1d(F, F, K, groups=F,
    padding=K-1) with the first T outputs kept: a cross-correlation, so the LAST tap
    multiplies the current input:  y[:, t] = b + sum_k w[:, 0, k] x[:, t + k - (K-1)].
    x (B, T, F), w (F, 1, K), b (F,) -> y (B, T, F)."""
    T, K = x.shape[1], w.shape[-1]
    y = x * w[:, 0, K - 1] + b
    for k in range(K - 1):
        s = K - 1 - k                                        # tap k looks s steps back
        if s < T:
            y[:, s:] += x[:, :T - s] * w[:, 0, k]
    return y, (x, w)


def causal_conv_backward(dy, cache, xp):
    """-> dx, dw, db. Tap k read x[:, t - s] for output t, so it sends dy[:, t] back to t - s."""
    x, w = cache
    T, F, K = x.shape[1], x.shape[-1], w.shape[-1]
    dw = xp.zeros_like(w)
    dx = dy * w[:, 0, K - 1]
    dw[:, 0, K - 1] = (dy * x).reshape(-1, F).sum(0)
    for k in range(K - 1):
        s = K - 1 - k
        if s < T:                                            # else the tap only ever saw padding
            dw[:, 0, k] = (dy[:, s:] * x[:, :T - s]).reshape(-1, F).sum(0)
            dx[:, :T - s] += dy[:, s:] * w[:, 0, k]
    return dx, dw, dy.reshape(-1, F).sum(0)


# ----------------------------------------------------------------- the SSD, three ways
# All three map x (B, T, H, P), Delta (B, T, H), A (H,), Bm, Cm (B, T, N) to y (B, T, H, P):
#     h_t = exp(Delta_t A) h_{t-1} + (Delta_t x_t) (x) B_t,  h_{-1} = 0,   y_t = h_t C_t
# (the D skip is added by the mixer).

def ssd_step(h, x, dt, A, Bt, Ct, xp):
    """One step of the recurrence. h (B, H, P, N), x (B, H, P), dt (B, H), Bt, Ct (B, N)
    -> y (B, H, P), the new h."""
    h = xp.exp(dt * A)[..., None, None] * h + (dt[..., None] * x)[..., None] * Bt[:, None, None, :]
    return (h @ Ct[:, None, :, None])[..., 0], h


def ssd_recurrent(x, dt, A, Bm, Cm, xp):
    """(a) The recurrence, token by token: the reference. -> y, the final state h."""
    Bsz, T, H, P = x.shape
    h = xp.zeros((Bsz, H, P, Bm.shape[-1]), x.dtype)
    y = xp.empty_like(x)
    for t in range(T):
        y[:, t], h = ssd_step(h, x[:, t], dt[:, t], A, Bm[:, t], Cm[:, t], xp)
    return y, h


def decay_mask(S, xp):
    """L[..., t, s] = exp(S_t - S_s) for s <= t, else 0: the decay from s to t, products
    a_{s+1} ... a_t of the per-step decays, as the difference of the running sums S of
    log-decays (mamba_ssm's "segsum"). Above the diagonal S_t - S_s > 0 would be a growth
    and can overflow: it is set to -inf BEFORE the exp. S (..., Q) -> L (..., Q, Q)."""
    Q = S.shape[-1]
    causal = xp.tril(xp.ones((Q, Q), dtype=bool))
    return xp.exp(xp.where(causal, S[..., :, None] - S[..., None, :], -xp.inf))


def ssd_quadratic(x, dt, A, Bm, Cm, xp):
    """(b) The attention form: Y = M Xbar with M = L o (C B^T), per batch and head.
    -> y, M (B, H, T, T), the whole "attention" matrix, lower triangular."""
    S = xp.cumsum(dt * A, axis=1).transpose(0, 2, 1)        # (B, H, T): running log-decay
    M = decay_mask(S, xp) * (Cm @ Bm.transpose(0, 2, 1))[:, None]   # (B, H, T, T): L o (C B^T)
    Xbar = (x * dt[..., None]).transpose(0, 2, 1, 3)         # (B, H, T, P): values Delta x
    return (M @ Xbar).transpose(0, 2, 1, 3), M


# (c) The chunked form, forward() and backward(). Cut T into chunks of Q (zero-padding the
# end: Delta = 0 there, so the padding decays nothing and adds nothing, and causality keeps
# it out of the real outputs). Inside chunk c, with S_l the running log-decay from the
# chunk's start (l = 0 .. Q-1) and H_{c-1} the state entering the chunk:
#   1. Y_diag = (L o C B^T) Xbar                  the quadratic form inside the chunk
#   2. st_c   = sum_s exp(S_{Q-1} - S_s) Xbar_s (x) B_s    the chunk's own contribution to
#                                                 its final state, (H, P, N)
#   3. H_c    = exp(S_{Q-1}) H_{c-1} + st_c       the recurrence across chunks: a Python loop
#                                                 over T/Q chunks, the only sequential part
#   4. Y_off  = exp(S_l) C_l H_{c-1}              the entering state, decayed to l, read by C
#   y = Y_diag + Y_off.
# (1, 2 and 4 are the three factors of the paper's off-diagonal blocks, section 6.)
#
# The backward, in reverse (dY the output gradient, chunked like Y):
#   4. Y_off = e o Z, e = exp(S), Z = C H_prev^T:  dS += e sum_p dY Z;  dZ = e dY;
#      dC += sum_h dZ H_prev;  dH_prev = dZ^T C.
#   3. H_c feeds H_prev of chunk c+1 and H_{c+1} = g_{c+1} H_c + st_{c+1} (g = exp(S_{Q-1})),
#      so its gradient G_c runs backward over the chunks with the NEXT chunk's decay:
#          G_{last} = 0;  G_{c-1} = dH_prev_c + g_c G_c;  dst_c = G_c;
#          dS_{Q-1} += g_c sum(G_c o H_{c-1})          (d g_c = G_c . H_{c-1}, dg/dS = g).
#   2. st = (w Xbar)^T B with w_s = exp(S_{Q-1} - S_s):  dXbar += w (B dst^T);
#      dB += sum_h (w Xbar) dst;  with dlw_s = w_s sum_p Xbar_s (B dst^T)_s (the gradient
#      of log w_s):  dS_{Q-1} += sum_s dlw_s,  dS_s -= dlw_s.
#   1. Y_diag = M Xbar, M = L o CB:  dM = dY Xbar^T;  dXbar += M^T dY;
#      dCB = sum_h dM o L (C and B are shared by the heads);  dC += dCB B;  dB += dCB^T C.
#      L = exp(S_l - S_s): d(S_l - S_s) = dL o L = dM o CB o L = dM o M. Each entry adds to
#      S_l (its row) and subtracts from S_s (its column):  dS += rowsum(dM o M) - colsum(dM o M).
#      The masked entries need nothing: M is exactly 0 there, so is dM o M.
#   S = cumsum(a) within the chunk:  da_k = sum_{l >= k} dS_l, a reversed cumsum.
#   a = Delta A, Xbar = Delta x:  dDelta = da A + sum_p dXbar x;  dA = sum da Delta;  dx = dXbar Delta.

def _chunks(v, Q, xp):
    """(B, T, ...) -> (B, T/Q, Q, ...), zero-padded at the end to a multiple of Q."""
    Bsz, T = v.shape[:2]
    nc = -(-T // Q)
    if nc * Q != T:
        v = xp.concatenate([v, xp.zeros((Bsz, nc * Q - T) + v.shape[2:], v.dtype)], axis=1)
    return v.reshape((Bsz, nc, Q) + v.shape[2:])


def _unchunk(v, T):
    """(B, nc, H, Q, ...) -> (B, T, H, ...): the inverse of _chunks plus the head transpose."""
    v = v.swapaxes(2, 3)
    return v.reshape((v.shape[0], -1) + v.shape[3:])[:, :T]


def ssd_chunked_forward(x, dt, A, Bm, Cm, Q, xp):
    """(c) The chunked SSD. Same arguments as ssd_recurrent plus Q -> y (B, T, H, P), cache.
    Stored for the backward: L and M, (B, nc, H, Q, Q) each (B T Q H numbers: 0.5M per
    layer at B16 T128 Q32 H8), the entering states H_prev (B, nc, H, P, N) and small
    (B, nc, H, Q) vectors; no state per position, unlike Mamba-1's scan (which stores
    (T, B, N, E): 8.4M numbers per layer at its standard config)."""
    Bsz, T, H, P = x.shape
    X = _chunks(x * dt[..., None], Q, xp).transpose(0, 1, 3, 2, 4)   # (B, nc, H, Q, P): Xbar = Delta x
    S = xp.cumsum(_chunks(dt * A, Q, xp).transpose(0, 1, 3, 2), -1)  # (B, nc, H, Q): running log-decay
    Bc, Cc = _chunks(Bm, Q, xp)[:, :, None], _chunks(Cm, Q, xp)[:, :, None]   # (B, nc, 1, Q, N)
    # 1. inside the chunks: the attention form
    L = decay_mask(S, xp)                                    # (B, nc, H, Q, Q)
    M = L * (Cc @ Bc.swapaxes(-1, -2))                       # L o C B^T
    Y = M @ X                                                # (B, nc, H, Q, P)
    # 2. each chunk's contribution to its final state
    w = xp.exp(S[..., -1:] - S)                              # (B, nc, H, Q): decay from s to the chunk's end
    st = (X * w[..., None]).swapaxes(-1, -2) @ Bc            # (B, nc, H, P, N)
    # 3. across the chunks: H_c = g_c H_{c-1} + st_c
    g = xp.exp(S[..., -1])                                   # (B, nc, H): the whole chunk's decay
    Hp = xp.empty_like(st)                                   # H_prev: the state entering each chunk
    h = xp.zeros_like(st[:, 0])
    for c in range(st.shape[1]):
        Hp[:, c] = h
        h = g[:, c, :, None, None] * h + st[:, c]
    # 4. the entering state, decayed and read by C
    e = xp.exp(S)                                            # (B, nc, H, Q)
    Z = Cc @ Hp.swapaxes(-1, -2)                             # (B, nc, H, Q, P): C_l H_prev
    Y += e[..., None] * Z
    cache = (x, dt, A, X, Bc, Cc, L, M, w, g, Hp, e, Z, Q)
    return _unchunk(Y, T), cache


def ssd_chunked_backward(dy, cache, xp):
    """dy (B, T, H, P) -> dx, dDelta, dA, dB, dC. The derivation is in the block above."""
    x, dt, A, X, Bc, Cc, L, M, w, g, Hp, e, Z, Q = cache
    dY = _chunks(dy, Q, xp).transpose(0, 1, 3, 2, 4)         # (B, nc, H, Q, P)
    # 4. Y_off = e o (C H_prev^T)
    dS = e * (dY * Z).sum(-1)                                # (B, nc, H, Q)
    dZ = dY * e[..., None]
    dC = (dZ @ Hp).sum(2)                                    # (B, nc, Q, N): summed over heads
    dHp = dZ.swapaxes(-1, -2) @ Cc                           # (B, nc, H, P, N)
    # 3. H_c = g_c H_{c-1} + st_c, backward over the chunks
    dst = xp.empty_like(dHp)
    G = xp.zeros_like(dHp[:, 0])                             # dL/dH_c; the last chunk's end state is unused
    for c in reversed(range(dHp.shape[1])):
        dst[:, c] = G
        dS[:, c, :, -1] += g[:, c] * (G * Hp[:, c]).sum((-1, -2))
        G = dHp[:, c] + g[:, c, :, None, None] * G
    # 2. st = (w Xbar)^T B
    BdT = Bc @ dst.swapaxes(-1, -2)                          # (B, nc, H, Q, P): B_s dst^T
    dX = w[..., None] * BdT
    dB = ((X * w[..., None]) @ dst).sum(2)                   # (B, nc, Q, N)
    dlw = w * (X * BdT).sum(-1)                              # gradient of log w_s = S_{Q-1} - S_s
    dS[..., -1] += dlw.sum(-1)
    dS -= dlw
    # 1. Y_diag = M Xbar, M = L o C B^T, L = exp(S_l - S_s)
    dM = dY @ X.swapaxes(-1, -2)                             # (B, nc, H, Q, Q)
    dX += M.swapaxes(-1, -2) @ dY
    dCB = (dM * L).sum(2, keepdims=True)                     # (B, nc, 1, Q, Q)
    dC += (dCB @ Bc)[:, :, 0]
    dB += (dCB.swapaxes(-1, -2) @ Cc)[:, :, 0]
    dM *= M                                                  # d(S_l - S_s)
    dS += dM.sum(-1) - dM.sum(-2)
    # S = cumsum(a): a reversed cumsum
    da = xp.cumsum(dS[..., ::-1], -1)[..., ::-1]             # (B, nc, H, Q)
    T = x.shape[1]
    dXbar = _unchunk(dX, T)                                  # (B, T, H, P)
    da = _unchunk(da, T)                                     # (B, T, H)
    # a = Delta A, Xbar = Delta x
    ddt = da * A + (dXbar * x).sum(-1)
    dA = (da * dt).reshape(-1, A.shape[0]).sum(0)
    N = Bc.shape[-1]
    return dXbar * dt[..., None], ddt, dA, dB.reshape(x.shape[0], -1, N)[:, :T], dC.reshape(x.shape[0], -1, N)[:, :T]


# ----------------------------------------------------------------------- model
class Model:
    def __init__(self, cfg, xp=numpy, dtype=numpy.float32, seed=0):
        if cfg.d_inner % cfg.headdim:
            raise ValueError(f"d_inner = expand * d_model = {cfg.d_inner} must be a multiple of headdim {cfg.headdim}")
        if cfg.chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {cfg.chunk_size}")
        self.cfg, self.xp, self.dtype = cfg, xp, numpy.dtype(dtype)
        V, C, L = cfg.vocab_size, cfg.d_model, cfg.n_layer
        E, N, H, K = cfg.d_inner, cfg.d_state, cfg.nheads, cfg.d_conv
        F = E + 2 * N
        rng = numpy.random.default_rng(seed)

        def cast(a):  # drawn in float64 on the host, then cast and moved
            return xp.asarray(numpy.asarray(a, numpy.float64).astype(self.dtype))

        def uniform(bound, *shape):
            return rng.uniform(-bound, bound, shape)

        # Init: see the module docstring. The tied head with the final RMSNorm starts the
        # logits at std ~0.02 sqrt(C) = 0.23, so the loss starts near ln V.
        p = {"embedding.weight": cast(0.02 * rng.standard_normal((V, C)))}
        for l in range(L):
            m = f"layers.{l}.mixer."
            p[f"layers.{l}.norm.weight"] = cast(numpy.ones(C))
            p[m + "in_proj.weight"] = cast(uniform(1 / math.sqrt(C), 2 * E + 2 * N + H, C))
            p[m + "conv1d.weight"] = cast(uniform(1 / math.sqrt(K), F, 1, K))
            p[m + "conv1d.bias"] = cast(uniform(1 / math.sqrt(K), F))
            dt = numpy.maximum(numpy.exp(rng.uniform(math.log(1e-3), math.log(1e-1), H)), 1e-4)
            p[m + "dt_bias"] = cast(dt + numpy.log(-numpy.expm1(-dt)))   # inverse softplus
            p[m + "A_log"] = cast(numpy.log(rng.uniform(1, 16, H)))
            p[m + "D"] = cast(numpy.ones(H))
            p[m + "norm.weight"] = cast(numpy.ones(E))
            p[m + "out_proj.weight"] = cast(uniform(1 / math.sqrt(E), C, E) / math.sqrt(L))
        p["norm_f.weight"] = cast(numpy.ones(C))
        self.params = p

    def _mixer_params(self, l):
        """Layer l's mixer parameters under their short names, read from .params (live)."""
        m = f"layers.{l}.mixer."
        return {k[len(m):]: v for k, v in self.params.items() if k.startswith(m)}

    # ------------------------------------------------------------------ forward
    def forward(self, idx, train=False, x0=None):
        """idx (B, T) -> logits (B, T, V), cache. `train` is unused (no dropout).
        x0, if given, replaces the embedding output (B, T, C): the tests use it to
        check the gradient reaching the embeddings, which backward leaves in cache["dx0"]."""
        xp, p, cfg = self.xp, self.params, self.cfg
        idx = check_idx(idx, cfg.vocab_size, 2, xp)
        Bsz, T = idx.shape
        x = p["embedding.weight"][idx] if x0 is None else xp.asarray(x0, dtype=self.dtype)   # (B, T, C)
        cache = {"idx": idx, "x0": x, "layers": []}
        for l in range(cfg.n_layer):
            xn, norm_cache = rmsnorm_forward(x, p[f"layers.{l}.norm.weight"], xp)
            out, mixer_cache = self._mixer_forward(l, xn)
            cache["layers"].append((norm_cache, mixer_cache))
            x = x + out                                      # the residual stream
        hf, cache["norm_f"] = rmsnorm_forward(x, p["norm_f.weight"], xp)
        cache["h"] = hf.reshape(Bsz * T, -1)
        return (cache["h"] @ p["embedding.weight"].T).reshape(Bsz, T, -1), cache   # tied head

    def _mixer_forward(self, l, xn):
        """xn (B, T, C), the normalized input -> out (B, T, C), cache.
        The cache holds xn, the in_proj outputs z and dt (views), the conv and SiLU caches
        ((B, T, F) each), x, Delta and its softplus input, the SSD's cache, y, SiLU(z) and the
        gated RMSNorm's cache. Nothing is recomputed but sigma of the softplus input."""
        xp, cfg, q = self.xp, self.cfg, self._mixer_params(l)
        Bsz, T, C = xn.shape
        E, N, H, P, M = cfg.d_inner, cfg.d_state, cfg.nheads, cfg.headdim, Bsz * T
        zxbcdt = xn.reshape(M, C) @ q["in_proj.weight"].T                 # (M, 2E + 2N + H)
        z = zxbcdt[:, :E]                                                 # the gate (M, E)
        xBC = zxbcdt[:, E:2 * E + 2 * N].reshape(Bsz, T, E + 2 * N)       # the conv branch
        pre = zxbcdt[:, 2 * E + 2 * N:].reshape(Bsz, T, H) + q["dt_bias"]
        xc, conv_cache = causal_conv_forward(xBC, q["conv1d.weight"], q["conv1d.bias"], xp)
        u, silu_cache = silu_forward(xc, xp)                              # (B, T, F)
        x = u[..., :E].reshape(Bsz, T, H, P)                              # heads of P channels
        Bm, Cm = xp.ascontiguousarray(u[..., E:E + N]), xp.ascontiguousarray(u[..., E + N:])   # (B, T, N)
        dt = xp.logaddexp(pre, 0)                                         # Delta = softplus, exact (B, T, H)
        A = -xp.exp(q["A_log"])                                           # (H,)
        y, ssd_cache = ssd_chunked_forward(x, dt, A, Bm, Cm, cfg.chunk_size, xp)
        y = (y + q["D"][:, None] * x).reshape(M, E)                       # the D skip
        gz, gz_cache = silu_forward(z, xp)
        gn, gn_cache = rmsnorm_forward(y * gz, q["norm.weight"], xp)      # RMSNorm(y SiLU(z))
        out = gn @ q["out_proj.weight"].T                                 # (M, C)
        cache = {"xn": xn, "z": z, "pre": pre, "conv": conv_cache, "silu": silu_cache, "x": x,
                 "A": A, "ssd": ssd_cache, "y": y, "gz": gz, "gz_cache": gz_cache, "gn": gn, "gn_cache": gn_cache}
        return out.reshape(Bsz, T, C), cache

    # ----------------------------------------------------------------- backward
    def backward(self, dlogits, cache):
        """dlogits (B, T, V) -> grads, a dict with the keys of .params."""
        xp, p, cfg = self.xp, self.params, self.cfg
        idx, h = cache["idx"], cache["h"]
        Bsz, T = idx.shape
        V, C = cfg.vocab_size, cfg.d_model
        grads = {}
        # logits = h E^T, the tied head: the embedding's first gradient
        dl = xp.asarray(dlogits, dtype=self.dtype).reshape(Bsz * T, V)
        dE = dl.T @ h                                                     # (V, C)
        dx = (dl @ p["embedding.weight"]).reshape(Bsz, T, C)
        dx, grads["norm_f.weight"] = rmsnorm_backward(dx, cache["norm_f"])
        for l in reversed(range(cfg.n_layer)):
            norm_cache, mixer_cache = cache["layers"][l]
            # x <- x + mixer(RMSNorm(x)): dx reaches x directly and through the mixer
            dxn, g = self._mixer_backward(l, dx, mixer_cache)
            dres, grads[f"layers.{l}.norm.weight"] = rmsnorm_backward(dxn, norm_cache)
            dx = dx + dres
            grads.update({f"layers.{l}.mixer.{k}": v for k, v in g.items()})
        # x0 = E[idx]: scatter-add rows by a one-hot matmul (repeated ids add up)
        onehot = (idx.reshape(-1, 1) == xp.arange(V)).astype(self.dtype)  # (B*T, V)
        grads["embedding.weight"] = dE + onehot.T @ dx.reshape(Bsz * T, C)
        cache["dx0"] = dx
        return {k: grads[k] for k in p}

    def _mixer_backward(self, l, dout, c):
        """dout (B, T, C) -> dxn (B, T, C) and the mixer's parameter gradients."""
        xp, cfg, q = self.xp, self.cfg, self._mixer_params(l)
        Bsz, T, C = dout.shape
        E, H, P, M = cfg.d_inner, cfg.nheads, cfg.headdim, Bsz * T
        g = {}
        # out = gn W_out^T
        dout = dout.reshape(M, C)
        g["out_proj.weight"] = dout.T @ c["gn"]                           # (C, E)
        # gn = RMSNorm(y SiLU(z))
        dyg, g["norm.weight"] = rmsnorm_backward(dout @ q["out_proj.weight"], c["gn_cache"])
        dz = silu_backward(dyg * c["y"], c["gz_cache"])                   # (M, E)
        dy = (dyg * c["gz"]).reshape(Bsz, T, H, P)
        # y = SSD(x, Delta, A, B, C) + D x: x's two consumers
        x = c["x"]
        g["D"] = (dy * x).sum((0, 1, 3))
        dx, ddt, dA, dB, dC = ssd_chunked_backward(dy, c["ssd"], xp)
        dx += dy * q["D"][:, None]
        g["A_log"] = dA * c["A"]                                          # A = -exp(A_log): dA_log = dA A
        # Delta = softplus(pre), softplus' = sigma; pre = dt + dt_bias
        dpre = ddt * sigmoid(c["pre"], xp)                                # (B, T, H)
        g["dt_bias"] = dpre.reshape(M, H).sum(0)
        # [x, B, C] = SiLU(conv(xBC))
        du = xp.concatenate([dx.reshape(Bsz, T, E), dB, dC], axis=-1)    # (B, T, F)
        dxBC, g["conv1d.weight"], g["conv1d.bias"] = causal_conv_backward(silu_backward(du, c["silu"]), c["conv"], xp)
        # [z | xBC | dt] = xn W_in^T
        dzxbcdt = xp.concatenate([dz, dxBC.reshape(M, -1), dpre.reshape(M, H)], axis=1)
        g["in_proj.weight"] = dzxbcdt.T @ c["xn"].reshape(M, C)           # (2E + 2N + H, C)
        return (dzxbcdt @ q["in_proj.weight"]).reshape(Bsz, T, C), g

    # ------------------------------------------------------------ step (inference)
    def init_state(self, batch):
        """The whole memory of the model, per layer:
        - conv (batch, F, K-1): the last K-1 inputs xBC of the causal conv (before the conv);
        - h (batch, H, P, N): the SSD state.
        (E + 2N)(K-1) + E N numbers per layer and sequence (1152 + 16384 = 17536 at the
        standard config), whatever the position: a larger state than Mamba-1's (E = 256
        channels x N = 16), because the scalar decay per head makes a larger N cheap."""
        cfg = self.cfg
        F = cfg.d_inner + 2 * cfg.d_state
        return [(self.xp.zeros((batch, F, cfg.d_conv - 1), self.dtype),
                 self.xp.zeros((batch, cfg.nheads, cfg.headdim, cfg.d_state), self.dtype))
                for _ in range(cfg.n_layer)]

    def step(self, idx_t, state):
        """idx_t (B,) -> logits (B, V), new state: the forward of one position, from the state."""
        xp, p, cfg = self.xp, self.params, self.cfg
        E, N, H, P = cfg.d_inner, cfg.d_state, cfg.nheads, cfg.headdim
        x = p["embedding.weight"][check_idx(idx_t, cfg.vocab_size, 1, xp)]   # (B, C)
        Bsz = x.shape[0]
        new_state = []
        for l, (conv, h) in enumerate(state):
            q = self._mixer_params(l)
            xn, _ = rmsnorm_forward(x, p[f"layers.{l}.norm.weight"], xp)
            zxbcdt = xn @ q["in_proj.weight"].T                               # (B, 2E + 2N + H)
            z, xBC, pre = zxbcdt[:, :E], zxbcdt[:, E:2 * E + 2 * N], zxbcdt[:, 2 * E + 2 * N:]
            window = xp.concatenate([conv, xBC[:, :, None]], axis=2)          # (B, F, K): the newest last
            u, _ = silu_forward((window * q["conv1d.weight"][:, 0]).sum(-1) + q["conv1d.bias"], xp)
            xh = u[:, :E].reshape(Bsz, H, P)
            dt = xp.logaddexp(pre + q["dt_bias"], 0)                          # (B, H)
            y, h = ssd_step(h, xh, dt, -xp.exp(q["A_log"]), u[:, E:E + N], u[:, E + N:], xp)
            y = (y + q["D"][:, None] * xh).reshape(Bsz, E)
            gz, _ = silu_forward(z, xp)
            gn, _ = rmsnorm_forward(y * gz, q["norm.weight"], xp)
            x = x + gn @ q["out_proj.weight"].T                               # (B, C)
            new_state.append((xp.ascontiguousarray(window[:, :, 1:]), h))    # drop the oldest input
        hf, _ = rmsnorm_forward(x, p["norm_f.weight"], xp)
        return hf @ p["embedding.weight"].T, new_state
