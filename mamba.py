"""
mamba.py: a character-level language model built on Mamba (Mamba-1), a selective
state-space model, with a hand-derived backward pass.

    embedding -> n_layer x [x + Mixer(RMSNorm(x))] -> RMSNorm -> logits = h E^T (tied head)

What it is
- Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State
  Spaces" (arXiv 2312.00752): the selective SSM of section 3.2 (Algorithm 2) inside
  the Mamba block of section 3.4 (Figure 3), with Delta parameterised as in
  section 3.6. Names and layouts are those of mamba-minimal's Mamba LM (model.py;
  mamba_ssm's MambaLMHeadModel uses the same names under a "backbone." prefix), so a
  checkpoint's arrays load into it by name (torch_ref/mamba.py is that module, and
  the tests compare against it).
- The mixer, per position t (E = d_inner channels, N = d_state):
      [xi, z] = x W_in^T                      in_proj, no bias; xi feeds the conv, z the gate
      xc      = causal depthwise conv(xi) + b  Conv1d(groups=E), the last tap on the current input
      u       = SiLU(xc)
      [dt_low, B_t, C_t] = u W_x^T            x_proj: Delta, B and C depend on the input ("selective")
      Delta   = softplus(dt_low W_dt^T + b_dt) dt_proj, (E,)
      A       = -exp(A_log)                   (E, N), negative: every state decays
      h_t     = exp(Delta_t A) * h_{t-1} + (Delta_t u_t) B_t      (E, N), the memory
      y_t     = h_t C_t + D u_t               read the memory, plus a skip
      out     = (y * SiLU(z)) W_out^T         gate, out_proj
  The decay exp(Delta A) is the zero-order-hold discretization of A (section 2,
  eq. 4); the input uses the simpler Euler step Delta B, as mamba-minimal and
  mamba_ssm's reference scan do. A large Delta forgets the state and takes in the
  current token; a small Delta keeps the state and ignores the token. Because
  Delta, B and C are computed from the token, the model chooses, token by token,
  what to remember: that is what "selective" means.
- Memory is the state h (E x N numbers per layer) plus the last d_conv - 1 conv
  inputs (E x (d_conv - 1)), whatever the length of the history.
- forward() is the training path: every projection is one matmul over all B*T
  positions; the scan's decays and inputs are computed for all t at once, and only
  the recurrence h_t = a_t * h_{t-1} + x_t runs in a Python loop over time (see
  "Which scan" below). backward() runs the same recurrence backwards in time for
  the state gradient. step() is the inference path: one token, O(1) in the position.
- Runs on NumPy or CuPy (the `xp` argument), in float32 or float64, with no casts
  inside (a float64 model stays float64).

What it is not
- Not Mamba-2 (no scalar-per-head A, no SSD matmul form), no hardware-aware fused
  kernel: the CUDA kernel recomputes h in backward and never writes it to memory;
  here h for every t is stored (see the memory note at selective_scan_forward).
- No dropout, no state carried between batches (every sequence starts from h = 0
  and an all-zero conv history), no vocab padding, no gradient clipping (train.py
  clips the global norm), no bias in in_proj / out_proj (mamba_ssm's default).

Which scan (Config.scan; the tests check that all three agree to 1e-12 in float64,
values and gradients). Times of the scan alone, forward + backward, per layer, at the
standard config (B16 T128, E 256, N 16), float32, one thread (CPU time, 2-core AMD EPYC):
- "batched" (the default), 50 ms: the decays exp(Delta A) and inputs Delta B u for all t
  in one vectorized pass each, the recurrence in a time loop over (B, N, E) blocks with
  in-place ops, y = C h for all t as one batched matmul.
- "loop", 93 ms: the readable reference, Algorithm 2 step by step: every line of forward
  and backward inside the time loop, in the paper's (B, E, N) layout.
- "chunked", 640 ms (chunk 16; 195 ms at chunk 2): within chunks, h from cumulative sums
  of log-decays (Mamba-2's "segsum", masked to -inf above the diagonal before the exp),
  across chunks a short recurrence. chunk times the arithmetic, for T/chunk sequential
  steps instead of T: the trade that suits a GPU (fewer, bigger kernels; not measured
  here), not a CPU, where the loop's per-step overhead is small against its blocks.
  A two-level variant (loop inside all chunks at once, then the carries) was 2.3x
  slower than the loop in the forward and is not kept.
A parallel (Blelloch / Hillis-Steele) scan was 8x slower than the loop on this CPU
(MATH.md section 10), so it is not offered.

Shapes (B batch, T time, C = d_model, E = d_inner = expand*C, N = d_state,
R = dt_rank = ceil(C/16), K = d_conv, V vocab)
    symbol   paper       shape        parameter
    E_emb    -           (V, C)       embedding.weight (also the head: logits = h E_emb^T)
    w_norm   -           (C,)         layers.{i}.norm.weight        RMSNorm
    W_in     -           (2E, C)      layers.{i}.mixer.in_proj.weight
    w_conv   -           (E, 1, K)    layers.{i}.mixer.conv1d.weight
    b_conv   -           (E,)         layers.{i}.mixer.conv1d.bias
    W_x      s_B, s_C,   (R+2N, E)    layers.{i}.mixer.x_proj.weight  rows [dt_low | B | C]
             s_Delta
    W_dt     -           (E, R)       layers.{i}.mixer.dt_proj.weight
    b_dt     tau_Delta   (E,)         layers.{i}.mixer.dt_proj.bias
    A_log    A = -exp()  (E, N)       layers.{i}.mixer.A_log
    D        D           (E,)         layers.{i}.mixer.D
    W_out    -           (C, E)       layers.{i}.mixer.out_proj.weight
    w_f      -           (C,)         norm_f.weight
    delta    Delta       (T, B, E)    activations, time-major
    B_t, C_t B, C        (T, B, N)
    h        h           (T, B, N, E) in the fast scans (state axis before channels);
                         (B, E, N) in the reference loop and in step()
    logits   -           (B, T, V)
Activations are time-major, (T, B, .), inside the layers, so that each step of the
scan reads and writes one contiguous block.

The math of every backward line is in MATH.md section 10 of this project's design
notes; the tests check it by finite differences and against torch_ref/mamba.py.
"""
import math
from dataclasses import dataclass

import numpy


@dataclass
class Config:
    vocab_size: int = 65     # number of distinct characters; train.py sets it from the corpus
    d_model: int = 128       # residual stream width C
    n_layer: int = 4         # Mamba blocks
    d_state: int = 16        # N: state size per channel; the memory is d_inner x d_state per layer
    expand: int = 2          # d_inner E = expand * d_model channels inside the mixer
    d_conv: int = 4          # K: taps of the causal depthwise conv (it sees K-1 past inputs)
    scan: str = "batched"    # "batched" (fast), "loop" (the readable reference), "chunked"
    chunk: int = 16          # chunk length of scan="chunked"

    @property
    def d_inner(self):       # E
        return self.expand * self.d_model

    @property
    def dt_rank(self):       # R: Delta is a rank-R projection of u (mamba_ssm's "auto")
        return math.ceil(self.d_model / 16)


SCANS = ("batched", "loop", "chunked")


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
# Forward/backward pairs with the same argument order. xp is NumPy or CuPy.

def sigmoid(xp, x):
    """sigma(x) = 1 / (1 + e^-x), written (1 + tanh(x/2)) / 2: no overflow for any x, and
    one transcendental (MATH.md's e^-|x| form with xp.where was 10x slower in NumPy here)."""
    s = xp.tanh(x * 0.5)
    s *= 0.5
    s += 0.5
    return s


def silu_forward(xp, x):
    """SiLU(x) = x sigma(x); returns sigma(x) too, for the backward."""
    s = sigmoid(xp, x)
    return x * s, s


def silu_backward(dout, x, s):
    """d/dx x sigma(x) = sigma(x) (1 + x (1 - sigma(x)))."""
    return dout * s * (1 + x * (1 - s))


def rmsnorm_forward(xp, x, w, eps=1e-5):
    """y = x / sqrt(mean(x^2) + eps) * w over the last axis. Caches n = x*r and r."""
    r = 1 / xp.sqrt((x * x).mean(-1, keepdims=True) + eps)   # (..., 1)
    n = x * r
    return n * w, (n, r)


def rmsnorm_backward(dy, w, cache):
    """-> dx, dw. dx = r (dn - n mean(dn n)): the mean couples all channels of a position."""
    n, r = cache
    dw = (dy * n).reshape(-1, w.shape[0]).sum(0)
    dn = dy * w
    return r * (dn - n * (dn * n).mean(-1, keepdims=True)), dw


def causal_conv_forward(xi, w, b):
    """Depthwise causal conv along time, PyTorch's Conv1d(E, E, K, groups=E, padding=K-1)
    with the first T outputs kept. It is a cross-correlation, so the LAST tap multiplies
    the current input:  xc[t] = b + sum_k w[:, 0, k] xi[t + k - (K-1)]  (zero before t=0).
    xi (T, B, E), w (E, 1, K), b (E,) -> xc (T, B, E)."""
    T, K = xi.shape[0], w.shape[-1]
    xc = xi * w[:, 0, K - 1] + b
    for k in range(K - 1):
        s = K - 1 - k                      # tap k looks s steps into the past
        if s < T:
            xc[s:] += xi[:T - s] * w[:, 0, k]
    return xc


def causal_conv_backward(xp, dxc, xi, w):
    """-> dxi, dw, db. Tap k read xi[t - s] for output t, so it sends dxc[t] back to t - s."""
    T, E, K = xi.shape[0], xi.shape[-1], w.shape[-1]
    dw = xp.empty_like(w)
    dxi = dxc * w[:, 0, K - 1]
    dw[:, 0, K - 1] = (dxc * xi).reshape(-1, E).sum(0)
    for k in range(K - 1):
        s = K - 1 - k
        if s < T:
            dw[:, 0, k] = (dxc[s:] * xi[:T - s]).reshape(-1, E).sum(0)
            dxi[:T - s] += dxc[s:] * w[:, 0, k]
        else:                              # a tap that reaches before t = 0 for every t
            dw[:, 0, k] = 0
    return dxi, dw, dxc.reshape(-1, E).sum(0)


# ------------------------------------------------------------ the selective scan
# The scan maps u, Delta (T, B, E), A (E, N), B_t, C_t (T, B, N) to
#     h_t = exp(Delta_t A) * h_{t-1} + (Delta_t u_t) B_t,   h_{-1} = 0,     y_t = C_t . h_t
# (the D skip is added by the mixer). Three implementations, chosen by Config.scan.
#
# Its backward (MATH.md section 10). Write a_t = exp(Delta_t A) and x_t = (Delta_t u_t) B_t.
# G_t = dL/dh_t collects dy_t C_t directly and a_{t+1} G_{t+1} through h_{t+1}, so it runs
# backward in time with the NEXT step's decay:
#     G_t = dy_t (x) C_t + a_{t+1} * G_{t+1},   G_{T-1} = dy_{T-1} (x) C_{T-1}
# and then, all t at once:
#     dC_t     = sum_e dy_t h_t                      (y = C . h)
#     dB_t     = sum_e G_t Delta_t u_t               (x = Delta u B)
#     du_t     = Delta_t sum_n G_t B_t               (x; u's other consumers are added by the mixer)
#     dDelta_t = u_t sum_n G_t B_t                   (x: the input path)
#              + sum_n G_t a_t h_{t-1} A             (a = exp(Delta A): the decay path)
#     dA_log   = A sum_{t,b} G_t a_t h_{t-1} Delta_t (the decay path again; A = -exp(A_log)
#                                                     gives dA_log = dA * A)

def recurrence_loop(xp, a, x, reverse=False):
    """The linear recurrence over axis 0, in place (x becomes the result):
        forward:  h_t = a_t h_{t-1} + x_t,  h_{-1} = 0
        reverse:  g_t = a_{t+1} g_{t+1} + x_t,  g_T = 0   (the adjoint: the NEXT step's decay)
    a, x (T, ...). This is the only sequential part of the fast scan: per step, two
    in-place ops on one contiguous (B, N, E) block."""
    T = x.shape[0]
    tmp = xp.empty_like(x[0])
    if reverse:
        for t in range(T - 2, -1, -1):
            xp.multiply(a[t + 1], x[t + 1], out=tmp)
            x[t] += tmp
    else:
        for t in range(1, T):
            xp.multiply(a[t], x[t - 1], out=tmp)
            x[t] += tmp
    return x


def recurrence_chunked(xp, log_a, x, chunk, reverse=False):
    """The same recurrence as recurrence_loop, from log a_t, chunk by chunk, in place.
    Inside a chunk of Q steps starting at c, with S_t = log a_c + ... + log a_t:
        h_t = sum_{c<=s<=t} exp(S_t - S_s) x_s + exp(S_t) h_{c-1}
    (Mamba-2's "segsum"): a (Q, Q) weight per (b, n, e), so Q times the arithmetic of the
    loop, for T/Q sequential steps instead of T. exp(S_t - S_s) for s > t would be a
    growth, not a decay, and can overflow: those entries are set to -inf BEFORE the exp.
    Never divide by a cumulative product of a_t instead: it underflows to 0."""
    if reverse:
        # The adjoint is the forward recurrence on reversed time with the decays shifted
        # one step: g'_r = a_{T-r} g'_{r-1} + x_{T-1-r}; a'_0 is unused (g'_{-1} = 0).
        la = xp.empty_like(log_a)
        la[0] = 0
        la[1:] = log_a[:0:-1]
        recurrence_chunked(xp, la, x[::-1], chunk)
        return x
    h = None                                                 # the state at the end of the last chunk
    for c in range(0, x.shape[0], chunk):
        xs = x[c:c + chunk]                                  # (Q, B, N, E), a view: written in place
        S = xp.cumsum(log_a[c:c + chunk], axis=0)            # (Q, B, N, E)
        Q = S.shape[0]
        W = S[:, None] - S[None, :]                          # (Q, Q, B, N, E): W[t, s] = log(a_{s+1} ... a_t)
        W[xp.triu(xp.ones((Q, Q), dtype=bool), 1)] = -xp.inf   # s > t: the future, masked before the exp
        xp.exp(W, out=W)
        W *= xs[None]
        hs = W.sum(1)                                        # (Q, B, N, E)
        if h is not None:
            hs += xp.exp(S) * h                              # the carried state, decayed by a_c ... a_t
        xs[...] = hs
        h = xs[-1]
    return x


def selective_scan_forward(xp, u, delta, A, Bm, Cm, chunk=0):
    """The fast scans: chunk = 0 is scan="batched" (the time loop), chunk > 0 "chunked".
    u, delta (T, B, E); A (E, N); Bm, Cm (T, B, N) -> y (T, B, E), cache.

    Layout: the state is kept (B, N, E), state axis before channels, so the big
    broadcasts (Delta_t A, Delta_t u_t B_t, dy_t C_t) run over contiguous rows of E
    numbers rather than N = 16 (3x faster in NumPy); y = C . h is a batched (1, N) @ (N, E).

    Stored for the backward, besides the small inputs: a_t = exp(Delta_t A) and h_t
    for every t, each (T, B, N, E): 2 x 8.4M numbers per layer at the standard config
    (B16 T128, E 256, N 16), 67 MB per layer and 268 MB for the 4 layers in float32.
    Recomputing a in the backward instead would save half of that for one more exp pass
    per layer; recomputing h too (as the CUDA kernel does) would need the forward
    recurrence again."""
    AT = A.T                                                 # (N, E)
    a = delta[:, :, None, :] * AT                            # (T, B, N, E): log a_t = Delta_t A
    h = Bm[..., None] * (delta * u)[:, :, None, :]           # (T, B, N, E): x_t = (Delta_t u_t) B_t
    if chunk:
        recurrence_chunked(xp, a, h, chunk)                  # h_t, from the log-decays
        xp.exp(a, out=a)                                     # a_t, kept for the backward
    else:
        xp.exp(a, out=a)                                     # a_t = exp(Delta_t A), in place
        recurrence_loop(xp, a, h)                            # h_t = a_t h_{t-1} + x_t, in place
    y = (Cm[:, :, None, :] @ h)[:, :, 0]                     # (T, B, E): y_t = sum_n C_t[n] h_t[n]
    return y, (u, delta, AT, Bm, Cm, a, h)


def selective_scan_backward(xp, dy, cache, chunk=0):
    """dy (T, B, E) -> dDelta, dA_log, dB, dC, du (the scan's part of du).
    The scan returns the gradient of A_log, not of A: A = -exp(A_log), so dA_log = dA * A,
    and dDelta's decay path needs the same product G * A, made once."""
    u, delta, AT, Bm, Cm, a, h = cache
    N, E = AT.shape
    # y_t = C_t . h_t
    dC = (h @ dy[..., None])[..., 0]                         # (T, B, N)
    G = Cm[..., None] * dy[:, :, None, :]                    # (T, B, N, E): dy_t (x) C_t
    # h_t = a_t h_{t-1} + x_t, backwards in time: G_t = dy_t (x) C_t + a_{t+1} G_{t+1}
    if chunk:
        recurrence_chunked(xp, delta[:, :, None, :] * AT, G, chunk, reverse=True)
    else:
        recurrence_loop(xp, a, G, reverse=True)
    # x_t = (Delta_t u_t) B_t, and dx_t = G_t
    GB = (Bm[:, :, None, :] @ G)[:, :, 0]                    # (T, B, E): sum_n G_t B_t
    dB = (G @ (delta * u)[..., None])[..., 0]                # (T, B, N): sum_e G_t Delta_t u_t
    du = GB * delta                                          # the scan-input path into u
    ddelta = GB * u                                          # the input path into Delta
    # a_t = exp(Delta_t A): dL/d(Delta_t A) = G_t * h_{t-1} * a_t, in place in G (done with it)
    G[0] = 0                                                 # h_{-1} = 0: a_0 multiplies nothing
    G[1:] *= h[:-1]
    G[1:] *= a[1:]
    # Delta_t A: both gradients need G * A (dA_log = dA * A), so multiply once, in place
    G *= AT
    ddelta += G.sum(2)                                       # the decay path into Delta: sum_n
    G *= delta[:, :, None, :]
    dA_log = G.reshape(-1, N * E).sum(0).reshape(N, E).T     # (E, N): sum over t and b
    return ddelta, dA_log, dB, dC, du


def selective_scan_loop_forward(xp, u, delta, A, Bm, Cm):
    """scan="loop", the readable reference: Algorithm 2 step by step, in the paper's
    (B, E, N) layout, every line inside the time loop. Same arguments and results as
    selective_scan_forward; it stores h_t for every t (a list of (B, E, N))."""
    T, B, E = u.shape
    h = xp.zeros((B, E, A.shape[1]), u.dtype)
    y, hs = xp.empty_like(u), []
    for t in range(T):
        a_t = xp.exp(delta[t][:, :, None] * A)                            # (B, E, N): exp(Delta_t A)
        h = a_t * h + (delta[t] * u[t])[:, :, None] * Bm[t][:, None, :]   # (B, E, N)
        y[t] = (h * Cm[t][:, None, :]).sum(-1)                            # (B, E): C_t . h_t
        hs.append(h)
    return y, (u, delta, A, Bm, Cm, hs)


def selective_scan_loop_backward(xp, dy, cache):
    """The reference backward: the forward loop reversed, line by line."""
    u, delta, A, Bm, Cm, hs = cache
    ddelta, du = xp.empty_like(u), xp.empty_like(u)
    dB, dC, dA = xp.empty_like(Bm), xp.empty_like(Cm), xp.zeros_like(A)
    G = xp.zeros_like(hs[0])                                 # a_{t+1} G_{t+1}: dL/dh_t through h_{t+1}
    for t in reversed(range(len(hs))):
        # y_t = C_t . h_t
        dC[t] = (dy[t][:, :, None] * hs[t]).sum(1)
        G = G + dy[t][:, :, None] * Cm[t][:, None, :]        # G_t = dy_t (x) C_t + a_{t+1} G_{t+1}
        # h_t = a_t h_{t-1} + (Delta_t u_t) B_t
        GB = (G * Bm[t][:, None, :]).sum(-1)                 # (B, E)
        dB[t] = (G * (delta[t] * u[t])[:, :, None]).sum(1)
        du[t] = GB * delta[t]
        ddelta[t] = GB * u[t]
        a_t = xp.exp(delta[t][:, :, None] * A)
        if t > 0:                                            # h_{-1} = 0
            dlog = G * a_t * hs[t - 1]                       # dL/d(Delta_t A)
            ddelta[t] += (dlog * A).sum(-1)
            dA += (dlog * delta[t][:, :, None]).sum(0)
        G = a_t * G                                          # on to h_{t-1}
    return ddelta, dA * A, dB, dC, du                        # A = -exp(A_log): dA_log = dA * A


# ----------------------------------------------------------------------- model
class Model:
    def __init__(self, cfg, xp=numpy, dtype=numpy.float32, seed=0):
        if cfg.scan not in SCANS:
            raise ValueError(f"scan must be one of {SCANS}, got {cfg.scan!r}")
        self.cfg, self.xp, self.dtype = cfg, xp, numpy.dtype(dtype)
        V, C, L = cfg.vocab_size, cfg.d_model, cfg.n_layer
        E, N, R, K = cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
        rng = numpy.random.default_rng(seed)

        def cast(a):  # drawn in float64 on the host, then cast and moved
            return xp.asarray(numpy.asarray(a, numpy.float64).astype(self.dtype))

        def uniform(bound, *shape):
            return rng.uniform(-bound, bound, shape)

        # Init as mamba_ssm (MixerModel._init_weights, Mamba.__init__) and alxndrTL's mamba.py:
        # - embedding N(0, 0.02^2). With the tied head and the final RMSNorm the logits
        #   start at std ~0.02 sqrt(C) = 0.23, so the loss starts near ln V. (PyTorch's
        #   N(0, 1) would give logits of std sqrt(C) = 11 and a loss far above ln V.)
        # - in_proj, x_proj: PyTorch's Linear default, U(+-1/sqrt(fan_in)); conv1d weight and
        #   bias: PyTorch's Conv1d default, U(+-1/sqrt(K)) (fan_in = K for a depthwise conv);
        #   out_proj: the Linear default divided by sqrt(n_layer), so that the residual
        #   stream's variance does not grow with depth (mamba_ssm's rescale_prenorm_residual).
        # - dt_proj.weight U(+-R^-1/2); dt_proj.bias = softplus^-1(dt) with dt log-uniform in
        #   [1e-3, 1e-1] (mamba_ssm's dt_min, dt_max; floored at 1e-4): Delta starts in that range.
        # - A_log = log(1..N) for every channel (S4D-Real: A = -(1, 2, ..., N)); D = 1.
        # - RMSNorm weights 1.
        p = {"embedding.weight": cast(0.02 * rng.standard_normal((V, C)))}
        for l in range(L):
            m = f"layers.{l}.mixer."
            p[f"layers.{l}.norm.weight"] = cast(numpy.ones(C))
            p[m + "in_proj.weight"] = cast(uniform(1 / math.sqrt(C), 2 * E, C))
            p[m + "conv1d.weight"] = cast(uniform(1 / math.sqrt(K), E, 1, K))
            p[m + "conv1d.bias"] = cast(uniform(1 / math.sqrt(K), E))
            p[m + "x_proj.weight"] = cast(uniform(1 / math.sqrt(E), R + 2 * N, E))
            p[m + "dt_proj.weight"] = cast(uniform(R ** -0.5, E, R))
            dt = numpy.maximum(numpy.exp(rng.uniform(math.log(1e-3), math.log(1e-1), E)), 1e-4)
            p[m + "dt_proj.bias"] = cast(dt + numpy.log(-numpy.expm1(-dt)))   # inverse softplus
            p[m + "A_log"] = cast(numpy.log(numpy.tile(numpy.arange(1, N + 1), (E, 1))))
            p[m + "D"] = cast(numpy.ones(E))
            p[m + "out_proj.weight"] = cast(uniform(1 / math.sqrt(E), C, E) / math.sqrt(L))
        p["norm_f.weight"] = cast(numpy.ones(C))
        self.params = p
        self._mixer_names = [[(k[len(f"layers.{l}.mixer."):], k) for k in p if k.startswith(f"layers.{l}.mixer.")]
                             for l in range(L)]

    def _mixer_params(self, l):
        """Layer l's mixer parameters under their short names (in_proj.weight, A_log, ...),
        read from .params at each call, so that .params stays live."""
        return {short: self.params[name] for short, name in self._mixer_names[l]}

    # ------------------------------------------------------------------ forward
    def forward(self, idx, train=False, x0=None):
        """idx (B, T) -> logits (B, T, V), cache. `train` is unused (no dropout).
        x0, if given, replaces the embedding output (B, T, C): the tests use it to
        check the gradient reaching the embeddings, which backward leaves in cache["dx0"]."""
        xp, p, cfg = self.xp, self.params, self.cfg
        idx = check_idx(idx, cfg.vocab_size, 2, xp)
        B, T = idx.shape
        # x = E[idx], time-major: (T, B, C)
        if x0 is None:
            x = p["embedding.weight"][idx.T]
        else:
            x = xp.ascontiguousarray(xp.asarray(x0, dtype=self.dtype).transpose(1, 0, 2))
        cache = {"idx": idx, "x0": x.transpose(1, 0, 2), "layers": []}
        for l in range(cfg.n_layer):
            xn, norm_cache = rmsnorm_forward(xp, x, p[f"layers.{l}.norm.weight"])
            out, mixer_cache = self._mixer_forward(l, xn)
            cache["layers"].append((norm_cache, mixer_cache))
            x = x + out                                      # the residual stream
        hf, cache["norm_f"] = rmsnorm_forward(xp, x, p["norm_f.weight"])
        h = hf.transpose(1, 0, 2).reshape(B * T, -1)         # batch-major (B*T, C)
        cache["h"] = h
        logits = (h @ p["embedding.weight"].T).reshape(B, T, -1)   # tied head: (B, T, V)
        return logits, cache

    def _mixer_forward(self, l, x):
        """x (T, B, C), the normalized input -> out (T, B, C), cache.

        The cache holds, per layer: the mixer input x (T, B, C); xi, z (views of
        in_proj's output), xc and sigma(xc), u, sigma(z), SiLU(z), y and the gated g,
        (T, B, E) each; dt_low (T*B, R) and the softplus input (T*B, E); B_t, C_t
        (T, B, N); and the scan's own cache (a and h, see
        selective_scan_forward). Recomputed in the backward: sigma of the softplus
        input (one (T*B, E) pass). The RMSNorm cache (n, r) is kept by forward()."""
        xp, cfg, p = self.xp, self.cfg, self._mixer_params(l)
        T, B, C = x.shape
        E, N, R, M = cfg.d_inner, cfg.d_state, cfg.dt_rank, T * B
        xz = x.reshape(M, C) @ p["in_proj.weight"].T                    # (M, 2E)
        xi = xz[:, :E].reshape(T, B, E)                                  # the conv branch (a view)
        z = xz[:, E:]                                                    # the gate branch (M, E)
        xc = causal_conv_forward(xi, p["conv1d.weight"], p["conv1d.bias"])   # (T, B, E)
        u, s_u = silu_forward(xp, xc)                                    # (T, B, E)
        xdbl = u.reshape(M, E) @ p["x_proj.weight"].T                    # (M, R + 2N) = [dt_low | B | C]
        dt_low = xdbl[:, :R]
        Bm = xp.ascontiguousarray(xdbl[:, R:R + N]).reshape(T, B, N)
        Cm = xp.ascontiguousarray(xdbl[:, R + N:]).reshape(T, B, N)
        pre = dt_low @ p["dt_proj.weight"].T + p["dt_proj.bias"]         # (M, E)
        delta = xp.logaddexp(pre, 0).reshape(T, B, E)                    # softplus, exact
        A = -xp.exp(p["A_log"])                                          # (E, N)
        if cfg.scan == "loop":
            y, scan_cache = selective_scan_loop_forward(xp, u, delta, A, Bm, Cm)
        else:
            y, scan_cache = selective_scan_forward(xp, u, delta, A, Bm, Cm,
                                                   cfg.chunk if cfg.scan == "chunked" else 0)
        y += p["D"] * u                                                  # the D skip: y (T, B, E)
        gz, s_z = silu_forward(xp, z)                                    # (M, E)
        g = y.reshape(M, E) * gz                                         # the gate
        out = g @ p["out_proj.weight"].T                                 # (M, C)
        cache = {"x": x, "xi": xi, "z": z, "xc": xc, "s_u": s_u, "u": u, "dt_low": dt_low,
                 "pre": pre, "scan": scan_cache, "y": y, "s_z": s_z, "gz": gz, "g": g}
        return out.reshape(T, B, C), cache

    # ----------------------------------------------------------------- backward
    def backward(self, dlogits, cache):
        """dlogits (B, T, V) -> grads, a dict with the keys of .params."""
        xp, p, cfg = self.xp, self.params, self.cfg
        idx, h = cache["idx"], cache["h"]
        B, T = idx.shape
        V, C = cfg.vocab_size, cfg.d_model
        grads = {}
        # logits = h E^T, the tied head: the embedding's first gradient
        dl = xp.asarray(dlogits, dtype=self.dtype).reshape(B * T, V)
        dE = dl.T @ h                                                    # (V, C)
        dx = (dl @ p["embedding.weight"]).reshape(B, T, C).transpose(1, 0, 2)   # (T, B, C)
        # hf = RMSNorm_f(x)
        dx, grads["norm_f.weight"] = rmsnorm_backward(dx, p["norm_f.weight"], cache["norm_f"])
        for l in reversed(range(cfg.n_layer)):
            norm_cache, mixer_cache = cache["layers"][l]
            # x <- x + mixer(RMSNorm(x)): dx reaches x both directly and through the mixer
            dxn, g = self._mixer_backward(l, dx, mixer_cache)
            dres, grads[f"layers.{l}.norm.weight"] = rmsnorm_backward(dxn, p[f"layers.{l}.norm.weight"],
                                                                      norm_cache)
            dx = dx + dres
            grads.update({f"layers.{l}.mixer.{k}": v for k, v in g.items()})
        # x0 = E[idx]: scatter-add rows by a one-hot matmul (repeated ids add up), onto the head's part
        onehot = (idx.T.reshape(-1, 1) == xp.arange(V)).astype(self.dtype)   # (T*B, V)
        grads["embedding.weight"] = dE + onehot.T @ dx.reshape(T * B, C)
        cache["dx0"] = dx.transpose(1, 0, 2)                                  # (B, T, C)
        return {k: grads[k] for k in p}

    def _mixer_backward(self, l, dout, c):
        """dout (T, B, C) -> dx (T, B, C) for the mixer's input, and its parameter gradients."""
        xp, cfg, p = self.xp, self.cfg, self._mixer_params(l)
        T, B, C = dout.shape
        E, N, M = cfg.d_inner, cfg.d_state, T * B
        g = {}
        # out = g W_out^T
        dout = dout.reshape(M, C)
        g["out_proj.weight"] = dout.T @ c["g"]                           # (C, E)
        dgate = dout @ p["out_proj.weight"]                              # (M, E)
        # g = y * SiLU(z)
        dy = (dgate * c["gz"]).reshape(T, B, E)
        dz = silu_backward(dgate * c["y"].reshape(M, E), c["z"], c["s_z"])
        # y += D u: u's first consumer, the skip
        g["D"] = (dy * c["u"]).reshape(M, E).sum(0)
        du = dy * p["D"]                                                 # (T, B, E)
        # the scan: u's second consumer, the input Delta B u. It returns dA_log directly:
        # A = -exp(A_log) is folded into its backward (dA_log = dA * A).
        if cfg.scan == "loop":
            ddelta, g["A_log"], dB, dC, du_scan = selective_scan_loop_backward(xp, dy, c["scan"])
        else:
            ddelta, g["A_log"], dB, dC, du_scan = selective_scan_backward(
                xp, dy, c["scan"], cfg.chunk if cfg.scan == "chunked" else 0)
        du += du_scan
        # delta = softplus(pre), softplus' = sigma; pre = dt_low W_dt^T + b_dt
        dpre = ddelta.reshape(M, E) * sigmoid(xp, c["pre"])
        g["dt_proj.weight"] = dpre.T @ c["dt_low"]                       # (E, R)
        g["dt_proj.bias"] = dpre.sum(0)
        # [dt_low | B | C] = u W_x^T: u's third consumer
        dxdbl = xp.concatenate([dpre @ p["dt_proj.weight"], dB.reshape(M, N), dC.reshape(M, N)], axis=1)
        g["x_proj.weight"] = dxdbl.T @ c["u"].reshape(M, E)              # (R + 2N, E)
        du += (dxdbl @ p["x_proj.weight"]).reshape(T, B, E)
        # u = SiLU(xc)
        dxc = silu_backward(du, c["xc"], c["s_u"])
        # xc = conv(xi) + b
        dxi, g["conv1d.weight"], g["conv1d.bias"] = causal_conv_backward(xp, dxc, c["xi"], p["conv1d.weight"])
        # [xi, z] = x W_in^T
        dxz = xp.concatenate([dxi.reshape(M, E), dz], axis=1)            # (M, 2E)
        g["in_proj.weight"] = dxz.T @ c["x"].reshape(M, C)               # (2E, C)
        return (dxz @ p["in_proj.weight"]).reshape(T, B, C), g

    # ------------------------------------------------------------ step (inference)
    def init_state(self, batch):
        """The whole memory of the model, per layer:
        - conv (batch, E, K-1): the last K-1 inputs xi of the causal conv (raw, before the
          conv and the SiLU), all the conv needs to see its window of K;
        - h (batch, E, N): the SSM state.
        E (K-1 + N) numbers per layer and sequence (256 x 19 = 4864 at the standard
        config), whatever the position: step() costs the same at token 10 and token 10^6,
        unlike attention's KV cache, which grows with every token."""
        E, N, K = self.cfg.d_inner, self.cfg.d_state, self.cfg.d_conv
        return [(self.xp.zeros((batch, E, K - 1), self.dtype), self.xp.zeros((batch, E, N), self.dtype))
                for _ in range(self.cfg.n_layer)]

    def step(self, idx_t, state):
        """idx_t (B,) -> logits (B, V), new state: the forward of one position, from the state."""
        xp, p, cfg = self.xp, self.params, self.cfg
        E, N, R = cfg.d_inner, cfg.d_state, cfg.dt_rank
        x = p["embedding.weight"][check_idx(idx_t, cfg.vocab_size, 1, xp)]   # (B, C)
        new_state = []
        for l, (conv, h) in enumerate(state):
            q = self._mixer_params(l)
            xn, _ = rmsnorm_forward(xp, x, p[f"layers.{l}.norm.weight"])
            xz = xn @ q["in_proj.weight"].T                                  # (B, 2E)
            xi, z = xz[:, :E], xz[:, E:]
            window = xp.concatenate([conv, xi[:, :, None]], axis=2)          # (B, E, K): the newest input last
            xc = (window * q["conv1d.weight"][:, 0]).sum(-1) + q["conv1d.bias"]
            u, _ = silu_forward(xp, xc)                                      # (B, E)
            xdbl = u @ q["x_proj.weight"].T                                  # (B, R + 2N)
            Bt, Ct = xdbl[:, R:R + N], xdbl[:, R + N:]
            delta = xp.logaddexp(xdbl[:, :R] @ q["dt_proj.weight"].T + q["dt_proj.bias"], 0)   # (B, E)
            A = -xp.exp(q["A_log"])                                          # (E, N)
            h = xp.exp(delta[:, :, None] * A) * h + (delta * u)[:, :, None] * Bt[:, None, :]   # (B, E, N)
            y = (h @ Ct[:, :, None])[:, :, 0] + q["D"] * u                   # (B, E)
            gz, _ = silu_forward(xp, z)
            x = x + (y * gz) @ q["out_proj.weight"].T                        # (B, C)
            new_state.append((xp.ascontiguousarray(window[:, :, 1:]), h))   # drop the oldest input
        hf, _ = rmsnorm_forward(xp, x, p["norm_f.weight"])
        return hf @ p["embedding.weight"].T, new_state
