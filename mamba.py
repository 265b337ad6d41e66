"""
mamba.py: a character-level language model built on Mamba (Mamba-1), a selective
state-space model, with a hand-derived backward pass.

    embedding -> n_layer x [x + Mixer(RMSNorm(x))] -> RMSNorm -> logits = h E^T (tied head)

What it is
- Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces"
  (arXiv 2312.00752): the selective SSM of section 3.2 (Algorithm 2) inside the block of
  section 3.4 (Figure 3), Delta parameterised as in section 3.6. Names and layouts are
  mamba-minimal's Mamba LM (model.py; mamba_ssm's MambaLMHeadModel adds a "backbone."
  prefix), so a checkpoint's arrays load into it by name (torch_ref/mamba.py is that
  module, and the tests compare against it).
- The mixer, per position t (E = d_inner channels, N = d_state):
      [xi, z] = x W_in^T                      in_proj, no bias; xi feeds the conv, z the gate
      xc      = causal depthwise conv(xi) + b  Conv1d(groups=E), the last tap on the current input
      u       = SiLU(xc)
      [dt_low, B_t, C_t] = u W_x^T            x_proj: Delta, B and C depend on the input ("selective")
      Delta   = softplus(dt_low W_dt^T + b_dt) dt_proj, (E,)
      A       = -exp(A_log)                   (E, N), negative: every state decays
      h_t     = exp(Delta_t A) * h_{t-1} + (Delta_t u_t) B_t      (N, E), the memory
      y_t     = C_t . h_t + D u_t             read the memory, plus a skip
      out     = (y * SiLU(z)) W_out^T         gate, out_proj
  exp(Delta A) is the zero-order-hold discretization of A (section 2, eq. 4); the input
  takes the simpler Euler step Delta B, as mamba-minimal and mamba_ssm's reference scan
  do. A large Delta forgets the state and takes in the token; a small Delta keeps the
  state and ignores the token: the model chooses, token by token, what to remember.
- Memory: the state h (N x E numbers per layer) plus the last d_conv - 1 conv inputs,
  whatever the length of the history. step() is the inference path, O(1) per token.
- forward() is the training path: every projection is one matmul over all B*T positions,
  and only the scan loops over time; backward() runs its adjoint backwards in time.
- NumPy or CuPy (the `xp` argument), float32 or float64, no casts inside.

What it is not: Mamba-2 (scalar-per-head A, the chunked SSD form), or the fused CUDA kernel
(which recomputes h in the backward instead of storing it); no dropout, no state carried
between batches (every sequence starts from h = 0 and an all-zero conv history), no vocab
padding, no bias in in_proj / out_proj (mamba_ssm's default).

Which scan (Config.scan; the tests check that both agree to 1e-12 in float64, values
and gradients; both keep the state as (B, N, E), as step() does). Times of the scan
alone, forward + backward, one layer at the standard config (B16 T128, E 256, N 16),
float32, one thread of a 2-core AMD EPYC shared with other jobs (CPU time):
- "loop", the reference, 84 ms: Algorithm 2 step by step, every line inside the loop.
- "fast", the default, 66 ms: the same loop with only the recurrence inside it, in place
  in buffers that stay in the CPU cache; y, dC and the (T, B, E) products for all t at once.
  Vectorizing over t as well (a_t and x_t for all t, then a loop for h alone) took 104 ms:
  each extra pass over a (T, B, N, E) array costs more memory traffic than the per-step
  Python overhead it saves. A parallel (Blelloch / Hillis-Steele) scan was 8x slower than
  the loop, a chunked scan (Mamba-2's form) 7x.

Shapes (B batch, T time, C = d_model, E = d_inner = expand*C, N = d_state,
R = dt_rank = ceil(C/16), K = d_conv, V vocab; * = layers.{i}.mixer.)
    symbol   paper       shape        parameter
    E_emb    -           (V, C)       embedding.weight (also the head: logits = h E_emb^T)
    w_norm   -           (C,)         layers.{i}.norm.weight, and norm_f.weight: RMSNorm
    W_in     -           (2E, C)      *in_proj.weight
    w_conv   -           (E, 1, K)    *conv1d.weight, and *conv1d.bias (E,)
    W_x      s_B, s_C,   (R+2N, E)    *x_proj.weight, rows [dt_low | B | C]
             s_Delta
    W_dt     -           (E, R)       *dt_proj.weight
    b_dt     tau_Delta   (E,)         *dt_proj.bias
    A_log    A = -exp()  (E, N)       *A_log
    D        D           (E,)         *D
    W_out    -           (C, E)       *out_proj.weight
    delta    Delta       (T, B, E)    activations, time-major (each scan step reads one block)
    B_t, C_t B, C        (T, B, N)
    h        h           (T, B, N, E) in the scans, (B, N, E) in step(): the state axis
                         before the channels (the paper writes (B, E, N))
Each backward's derivation sits next to it (the scan's above selective_scan_loop_forward);
the tests check every gradient by finite differences and against torch_ref/mamba.py.
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
    scan: str = "fast"       # "fast" or "loop" (the reference); see "Which scan"

    @property
    def d_inner(self):       # E
        return self.expand * self.d_model

    @property
    def dt_rank(self):       # R: Delta is a rank-R projection of u (mamba_ssm's "auto")
        return math.ceil(self.d_model / 16)


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
# Forward/backward pairs: name_forward(arrays..., xp) -> (y, cache), name_backward(dy, cache, ...).

def sigmoid(x, xp):
    """sigma(x) = 1 / (1 + e^-x), written (1 + tanh(x/2)) / 2: no overflow for any x, and one
    transcendental (the two-branch e^-|x| form with xp.where was 10x slower in NumPy here)."""
    s = xp.tanh(x * 0.5)
    s *= 0.5
    s += 0.5
    return s


def silu_forward(x, xp):
    """SiLU(x) = x sigma(x) -> y, cache (x, sigma(x))."""
    s = sigmoid(x, xp)
    return x * s, (x, s)


def silu_backward(dy, cache):
    """d/dx x sigma(x) = sigma + x sigma (1 - sigma) = sigma (1 + x (1 - sigma))."""
    x, s = cache
    return dy * s * (1 + x * (1 - s))


def rmsnorm_forward(x, w, xp, eps=1e-5):
    """y = n w, n = x r, r = 1 / sqrt(mean(x^2) + eps) over the last axis. Caches n and r."""
    r = 1 / xp.sqrt((x * x).mean(-1, keepdims=True) + eps)   # (..., 1)
    n = x * r
    return n * w, (n, r)


def rmsnorm_backward(dy, cache, w):
    """-> dx, dw. With dn = dy w, and dr/dx_j = -r^3 x_j / C from r = (mean(x^2) + eps)^-1/2:
        dx_i = r dn_i - r^3 x_i mean_j(dn_j x_j) = r (dn_i - n_i mean_j(dn_j n_j))
    (the mean couples all C channels of a position)."""
    n, r = cache
    dw = (dy * n).reshape(-1, w.shape[0]).sum(0)
    dn = dy * w
    return r * (dn - n * (dn * n).mean(-1, keepdims=True)), dw


def causal_conv_forward(x, w, b, xp):
    """Depthwise causal conv along time, PyTorch's Conv1d(E, E, K, groups=E, padding=K-1)
    with the first T outputs kept. It is a cross-correlation, so the LAST tap multiplies
    the current input:  y[t] = b + sum_k w[:, 0, k] x[t - s_k],  s_k = K-1-k  (zero before t=0).
    x (T, B, E), w (E, 1, K), b (E,) -> y (T, B, E), cache."""
    T, K = x.shape[0], w.shape[-1]
    y = x * w[:, 0, K - 1] + b
    for k in range(K - 1):
        s = K - 1 - k                      # tap k looks s steps into the past
        if s < T:
            y[s:] += x[:T - s] * w[:, 0, k]
    return y, (x, w)


def causal_conv_backward(dy, cache, xp):
    """-> dx, dw, db. Each tap multiplies x delayed by s steps, so its adjoint moves dy s
    steps EARLIER: y[t] += w_k x[t-s] sends dy[t] w_k to x[t-s], and dw_k = sum over t and b
    of dy[t] x[t-s]. A tap that reaches before t = 0 for every t gets dw_k = 0."""
    x, w = cache
    T, E, K = x.shape[0], x.shape[-1], w.shape[-1]
    dw = xp.zeros_like(w)
    dx = dy * w[:, 0, K - 1]
    dw[:, 0, K - 1] = (dy * x).reshape(-1, E).sum(0)
    for k in range(K - 1):
        s = K - 1 - k
        if s < T:
            dw[:, 0, k] = (dy[s:] * x[:T - s]).reshape(-1, E).sum(0)
            dx[:T - s] += dy[s:] * w[:, 0, k]
    return dx, dw, dy.reshape(-1, E).sum(0)


# ------------------------------------------------------------ the selective scan
# u, Delta (T, B, E), A = -exp(A_log) (E, N), B_t, C_t (T, B, N) -> y (T, B, E):
#     h_t = a_t * h_{t-1} + x_t,   a_t = exp(Delta_t A),   x_t = (Delta_t u_t) B_t,   h_{-1} = 0
#     y_t = sum_n C_t[n] h_t[n]                          (the D skip is added by the mixer)
# One layout for the state, here and in step(): h_t is (B, N, E), the state axis before the
# channels, so that the broadcasts (Delta_t A, Delta_t u_t B_t, dy_t C_t) run over contiguous
# rows of E numbers rather than N = 16 (the reference loop runs 1.5x faster than in (B, E, N)).
#
# The backward. Let G_t = dL/dh_t, everything that reaches h_t. Two things read h_t: y_t (which
# sends back dy_t (x) C_t) and h_{t+1} = a_{t+1} h_t + ... (which sends back a_{t+1} G_{t+1}). So
#     G_t = dy_t (x) C_t + a_{t+1} * G_{t+1},   G_{T-1} = dy_{T-1} (x) C_{T-1}
# the adjoint recurrence: the same linear recurrence run backwards in time, with the NEXT
# step's decay. Given G_t, step t's inputs get their gradients locally:
#     dx_t = G_t and da_t = G_t * h_{t-1}  (h_{-1} = 0, so da_0 = 0)
#     dC_t = sum_e dy_t h_t                                      (y_t = C_t . h_t)
#     x_t = Delta_t u_t B_t:  dB_t = sum_e G_t Delta_t u_t,  du_t = Delta_t sum_n G_t B_t,
#                             dDelta_t = u_t sum_n G_t B_t                (the input path)
#     a_t = exp(Delta_t A):   dL/d(Delta_t A) = da_t a_t = G_t h_{t-1} a_t, hence
#                             dDelta_t += sum_n G_t h_{t-1} a_t A          (the decay path)
#                             dA = sum_{t,b} G_t h_{t-1} a_t Delta_t
#     A = -exp(A_log):        dA_log = dA * A   (dA/dA_log = -exp(A_log) = A)

def selective_scan_loop_forward(u, delta, A_log, Bm, Cm, xp):
    """scan="loop", the reference: the paper's Algorithm 2 step by step, every line inside
    the time loop. Stores h_t for every t (a list of (B, N, E))."""
    T, B, E = u.shape
    AT = -xp.exp(A_log).T                                              # A, as (N, E)
    h = xp.zeros((B, AT.shape[0], E), u.dtype)                         # h_{-1} = 0
    y, hs = xp.empty_like(u), []
    for t in range(T):
        a = xp.exp(delta[t][:, None, :] * AT)                          # a_t = exp(Delta_t A)  (B, N, E)
        h = a * h + Bm[t][:, :, None] * (delta[t] * u[t])[:, None, :]  # + x_t = (Delta_t u_t) B_t
        y[t] = (Cm[t][:, None, :] @ h)[:, 0]                           # y_t = C_t . h_t  (B, E)
        hs.append(h)
    return y, (u, delta, AT, Bm, Cm, hs)


def selective_scan_loop_backward(dy, cache, xp):
    """-> du (the scan's part), dDelta, dA_log, dB, dC: the loop above, reversed line by line."""
    u, delta, AT, Bm, Cm, hs = cache
    du, ddelta = xp.empty_like(u), xp.empty_like(u)
    dB, dC, dA = xp.empty_like(Bm), xp.empty_like(Cm), xp.zeros_like(AT)
    G = xp.zeros_like(hs[0])                                           # a_{t+1} G_{t+1}, 0 at the end
    for t in reversed(range(len(hs))):
        # y_t = C_t . h_t
        dC[t] = (hs[t] @ dy[t][:, :, None])[:, :, 0]                   # sum_e dy_t h_t  (B, N)
        G = G + Cm[t][:, :, None] * dy[t][:, None, :]                  # G_t = dy_t (x) C_t + a_{t+1} G_{t+1}
        # h_t = a_t h_{t-1} + (Delta_t u_t) B_t
        GB = (Bm[t][:, None, :] @ G)[:, 0]                             # sum_n G_t B_t  (B, E)
        dB[t] = (G @ (delta[t] * u[t])[:, :, None])[:, :, 0]
        du[t] = GB * delta[t]
        ddelta[t] = GB * u[t]
        a = xp.exp(delta[t][:, None, :] * AT)
        if t > 0:                                                      # h_{-1} = 0
            dlog = G * hs[t - 1] * a                                   # dL/d(Delta_t A)
            ddelta[t] += (dlog * AT).sum(1)
            dA += (dlog * delta[t][:, None, :]).sum(0)
        G = a * G                                                      # on to h_{t-1}
    return du, ddelta, (dA * AT).T, dB, dC


def selective_scan_forward(u, delta, A_log, Bm, Cm, xp):
    """scan="fast", the default: the loop above with only the recurrence inside it, in place
    in a (B, N, E) buffer for a_t and in h[t] (blocks that stay in the CPU cache); Delta u
    before the loop and y = C . h after it, for all t at once. Stored for the backward:
    h_t for every t, (T, B, N, E), 134 MB for the 4 layers at the standard config in
    float32. a_t is recomputed in the backward: one exp per step is cheaper than reading
    a stored a_t back from memory."""
    T, B, E = u.shape
    AT = -xp.exp(A_log).T                                    # A, as (N, E)
    du = delta * u                                           # (T, B, E): Delta_t u_t
    h = xp.empty((T, B, AT.shape[0], E), u.dtype)            # h_t for every t
    a = xp.empty(h.shape[1:], u.dtype)                       # a_t, one (B, N, E) buffer
    for t in range(T):
        xp.multiply(delta[t][:, None, :], AT, out=a)
        xp.exp(a, out=a)                                     # a_t = exp(Delta_t A)
        xp.multiply(Bm[t][:, :, None], du[t][:, None, :], out=h[t])   # x_t = (Delta_t u_t) B_t
        if t > 0:                                            # h_{-1} = 0
            a *= h[t - 1]
            h[t] += a                                        # h_t = a_t h_{t-1} + x_t
    y = (Cm[:, :, None, :] @ h)[:, :, 0]                     # (T, B, E): y_t = C_t . h_t
    return y, (u, delta, AT, Bm, Cm, h)


def selective_scan_backward(dy, cache, xp):
    """-> du (the scan's part), dDelta, dA_log, dB, dC: the reference backward the same
    way, in place in (B, N, E) buffers, with whatever does not need G_t done for all t."""
    u, delta, AT, Bm, Cm, h = cache
    dC = (h @ dy[..., None])[..., 0]                         # (T, B, N): sum_e dy_t h_t
    du = delta * u
    G = xp.zeros(h.shape[1:], u.dtype)                       # a_{t+1} G_{t+1}, 0 at the end
    a, tmp = xp.empty_like(G), xp.empty_like(G)
    GB, dB = xp.empty_like(u), xp.empty_like(Bm)
    ddecay, dA_log = xp.zeros_like(u), xp.zeros_like(AT)     # the decay path into Delta and A
    for t in reversed(range(u.shape[0])):
        xp.multiply(Cm[t][:, :, None], dy[t][:, None, :], out=tmp)
        G += tmp                                             # G_t = dy_t (x) C_t + a_{t+1} G_{t+1}
        GB[t] = (Bm[t][:, None, :] @ G)[:, 0]                # sum_n G_t B_t  (B, E)
        dB[t] = (G @ du[t][:, :, None])[:, :, 0]             # sum_e G_t Delta_t u_t  (B, N)
        xp.multiply(delta[t][:, None, :], AT, out=a)
        xp.exp(a, out=a)                                     # a_t, recomputed
        if t > 0:                                            # h_{-1} = 0
            xp.multiply(G, h[t - 1], out=tmp)
            tmp *= a                                         # dL/d(Delta_t A) = G_t h_{t-1} a_t
            tmp *= AT                                        # times A: shared by both sums
            tmp.sum(1, out=ddecay[t])                        # sum_n
            tmp *= delta[t][:, None, :]
            dA_log += tmp.sum(0)                             # sum_b: dA * A = dA_log
        G *= a                                               # on to h_{t-1}
    return GB * delta, GB * u + ddecay, dA_log.T, dB, dC


SCANS = {"fast": (selective_scan_forward, selective_scan_backward),
         "loop": (selective_scan_loop_forward, selective_scan_loop_backward)}


# ----------------------------------------------------------------------- model
class Model:
    def __init__(self, cfg, xp=numpy, dtype=numpy.float32, seed=0):
        if cfg.scan not in SCANS:
            raise ValueError(f"scan must be one of {tuple(SCANS)}, got {cfg.scan!r}")
        self.cfg, self.xp, self.dtype = cfg, xp, numpy.dtype(dtype)
        V, C, L = cfg.vocab_size, cfg.d_model, cfg.n_layer
        E, N, R, K = cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
        rng = numpy.random.default_rng(seed)

        def cast(a):  # drawn in float64 on the host, then cast and moved
            return xp.asarray(numpy.asarray(a, numpy.float64).astype(self.dtype))

        def uniform(bound, *shape):
            return rng.uniform(-bound, bound, shape)

        # Init as mamba_ssm (MixerModel._init_weights, Mamba.__init__) and alxndrTL's mamba.py:
        # - embedding N(0, 0.02^2): with the tied head and the final RMSNorm the logits start
        #   at std ~0.02 sqrt(C) = 0.23 and the loss near ln V (N(0, 1) would give std 11);
        # - in_proj, x_proj: PyTorch's Linear default U(+-1/sqrt(fan_in)); conv1d: Conv1d's,
        #   U(+-1/sqrt(K)); out_proj: Linear's over sqrt(n_layer), so that the residual stream's
        #   variance does not grow with depth (mamba_ssm's rescale_prenorm_residual);
        # - dt_proj.weight U(+-R^-1/2); dt_proj.bias = softplus^-1(dt), dt log-uniform in
        #   [1e-3, 1e-1] floored at 1e-4: Delta starts in that range;
        # - A_log = log(1..N) in every channel (S4D-Real: A = -(1, ..., N)); D = 1; RMSNorm w = 1.
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
            xn, norm_cache = rmsnorm_forward(x, p[f"layers.{l}.norm.weight"], xp)
            out, mixer_cache = self._mixer_forward(l, xn)
            cache["layers"].append((norm_cache, mixer_cache))
            x = x + out                                      # the residual stream
        hf, cache["norm_f"] = rmsnorm_forward(x, p["norm_f.weight"], xp)
        h = hf.transpose(1, 0, 2).reshape(B * T, -1)         # batch-major (B*T, C)
        cache["h"] = h
        logits = (h @ p["embedding.weight"].T).reshape(B, T, -1)   # tied head: (B, T, V)
        return logits, cache

    def _mixer_forward(self, l, x):
        """x (T, B, C), the normalized input -> out (T, B, C), cache. The cache holds x; xi
        (the conv's input), xc, u, z, sigma(xc), sigma(z), SiLU(z), y and the gated g, (T, B, E)
        each; dt_low (T*B, R) and the softplus input (T*B, E); the scan's cache (its inputs
        and h). Recomputed in the backward: sigma of the softplus input, one (T*B, E) pass."""
        xp, cfg, p = self.xp, self.cfg, self._mixer_params(l)
        T, B, C = x.shape
        E, N, R, M = cfg.d_inner, cfg.d_state, cfg.dt_rank, T * B
        xz = x.reshape(M, C) @ p["in_proj.weight"].T                    # (M, 2E)
        xi = xz[:, :E].reshape(T, B, E)                                  # the conv branch (a view)
        z = xz[:, E:]                                                    # the gate branch (M, E)
        xc, conv_cache = causal_conv_forward(xi, p["conv1d.weight"], p["conv1d.bias"], xp)   # (T, B, E)
        u, u_cache = silu_forward(xc, xp)                                # (T, B, E)
        xdbl = u.reshape(M, E) @ p["x_proj.weight"].T                    # (M, R + 2N) = [dt_low | B | C]
        dt_low = xdbl[:, :R]
        Bm = xp.ascontiguousarray(xdbl[:, R:R + N]).reshape(T, B, N)
        Cm = xp.ascontiguousarray(xdbl[:, R + N:]).reshape(T, B, N)
        pre = dt_low @ p["dt_proj.weight"].T + p["dt_proj.bias"]         # (M, E)
        delta = xp.logaddexp(pre, 0).reshape(T, B, E)                    # softplus, exact
        y, scan_cache = SCANS[cfg.scan][0](u, delta, p["A_log"], Bm, Cm, xp)   # (T, B, E)
        y += p["D"] * u                                                  # the D skip: y (T, B, E)
        gz, z_cache = silu_forward(z, xp)                                # (M, E)
        g = y.reshape(M, E) * gz                                         # the gate
        out = g @ p["out_proj.weight"].T                                 # (M, C)
        cache = {"x": x, "conv": conv_cache, "u": u, "u_silu": u_cache, "dt_low": dt_low, "pre": pre,
                 "scan": scan_cache, "y": y, "z_silu": z_cache, "gz": gz, "g": g}
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
        dx, grads["norm_f.weight"] = rmsnorm_backward(dx, cache["norm_f"], p["norm_f.weight"])
        for l in reversed(range(cfg.n_layer)):
            norm_cache, mixer_cache = cache["layers"][l]
            # x <- x + mixer(RMSNorm(x)): dx reaches x both directly and through the mixer
            dxn, g = self._mixer_backward(l, dx, mixer_cache)
            dres, grads[f"layers.{l}.norm.weight"] = rmsnorm_backward(dxn, norm_cache,
                                                                      p[f"layers.{l}.norm.weight"])
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
        dz = silu_backward(dgate * c["y"].reshape(M, E), c["z_silu"])
        # y += D u: u's first consumer, the skip
        g["D"] = (dy * c["u"]).reshape(M, E).sum(0)
        du = dy * p["D"]                                                 # (T, B, E)
        # the scan: u's second consumer, the input (Delta u) B
        du_scan, ddelta, g["A_log"], dB, dC = SCANS[cfg.scan][1](dy, c["scan"], xp)
        du += du_scan
        # delta = softplus(pre), softplus' = sigma; pre = dt_low W_dt^T + b_dt
        dpre = ddelta.reshape(M, E) * sigmoid(c["pre"], xp)
        g["dt_proj.weight"] = dpre.T @ c["dt_low"]                       # (E, R)
        g["dt_proj.bias"] = dpre.sum(0)
        # [dt_low | B | C] = u W_x^T: u's third consumer
        dxdbl = xp.concatenate([dpre @ p["dt_proj.weight"], dB.reshape(M, N), dC.reshape(M, N)], axis=1)
        g["x_proj.weight"] = dxdbl.T @ c["u"].reshape(M, E)              # (R + 2N, E)
        du += (dxdbl @ p["x_proj.weight"]).reshape(T, B, E)
        # u = SiLU(xc)
        dxc = silu_backward(du, c["u_silu"])
        # xc = conv(xi) + b
        dxi, g["conv1d.weight"], g["conv1d.bias"] = causal_conv_backward(dxc, c["conv"], xp)
        # [xi, z] = x W_in^T
        dxz = xp.concatenate([dxi.reshape(M, E), dz], axis=1)            # (M, 2E)
        g["in_proj.weight"] = dxz.T @ c["x"].reshape(M, C)               # (2E, C)
        return (dxz @ p["in_proj.weight"]).reshape(T, B, C), g

    # ------------------------------------------------------------ step (inference)
    def init_state(self, batch):
        """The whole memory of the model, per layer: conv (batch, E, K-1), the last K-1 conv
        inputs xi (before the conv and the SiLU), all the conv needs for its window of K;
        and h (batch, N, E), the SSM state in the scans' layout. E (K-1 + N) numbers per layer
        and sequence (4864 at the standard config) at any position: step() costs the same at
        token 10 and token 10^6, unlike attention's KV cache, which grows with every token."""
        E, N, K = self.cfg.d_inner, self.cfg.d_state, self.cfg.d_conv
        return [(self.xp.zeros((batch, E, K - 1), self.dtype), self.xp.zeros((batch, N, E), self.dtype))
                for _ in range(self.cfg.n_layer)]

    def step(self, idx_t, state):
        """idx_t (B,) -> logits (B, V), new state: the forward of one position, from the state."""
        xp, p, cfg = self.xp, self.params, self.cfg
        E, N, R = cfg.d_inner, cfg.d_state, cfg.dt_rank
        x = p["embedding.weight"][check_idx(idx_t, cfg.vocab_size, 1, xp)]   # (B, C)
        new_state = []
        for l, (conv, h) in enumerate(state):
            q = self._mixer_params(l)
            xn, _ = rmsnorm_forward(x, p[f"layers.{l}.norm.weight"], xp)
            xz = xn @ q["in_proj.weight"].T                                  # (B, 2E)
            xi, z = xz[:, :E], xz[:, E:]
            window = xp.concatenate([conv, xi[:, :, None]], axis=2)          # (B, E, K): the newest input last
            xc = (window * q["conv1d.weight"][:, 0]).sum(-1) + q["conv1d.bias"]
            u, _ = silu_forward(xc, xp)                                      # (B, E)
            xdbl = u @ q["x_proj.weight"].T                                  # (B, R + 2N)
            Bt, Ct = xdbl[:, R:R + N], xdbl[:, R + N:]
            delta = xp.logaddexp(xdbl[:, :R] @ q["dt_proj.weight"].T + q["dt_proj.bias"], 0)   # (B, E)
            AT = -xp.exp(q["A_log"]).T                                       # A, as (N, E)
            h = xp.exp(delta[:, None, :] * AT) * h + Bt[:, :, None] * (delta * u)[:, None, :]   # (B, N, E)
            y = (Ct[:, None, :] @ h)[:, 0] + q["D"] * u                      # (B, E)
            gz, _ = silu_forward(z, xp)
            x = x + (y * gz) @ q["out_proj.weight"].T                        # (B, C)
            new_state.append((xp.ascontiguousarray(window[:, :, 1:]), h))   # drop the oldest input
        hf, _ = rmsnorm_forward(x, p["norm_f.weight"], xp)
        return hf @ p["embedding.weight"].T, new_state
