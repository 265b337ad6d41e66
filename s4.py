"""
s4.py: a character-level language model built on S4D, the diagonal structured
state space model, with a hand-derived backward pass.

    embedding -> n_layer x [x + S4D(LayerNorm(x))] -> LayerNorm -> linear head -> logits

What it is
- The mixer is the S4 authors' minimal S4D layer, state-spaces/s4 models/s4/s4d.py
  (Gu, Gupta, Goel, Re 2022, "On the Parameterization and Initialization of
  Diagonal State Space Models", S4D-Lin with ZOH, sections 3 and 4), with its
  parameter names, so a checkpoint's arrays load into that module unchanged
  (torch_ref/s4.py is that module, in the same residual blocks).
- Each of the H = d_model channels runs its own linear time-invariant SSM with
  N/2 complex modes (the other N/2 are their complex conjugates, kept implicit):
      s_t = zeta * s_{t-1} + Bbar * u_t,    y_t = 2 Re(sum_n C s_t) + D u_t
  zeta = exp(dt A) and Bbar = (zeta - 1) / A are the zero-order-hold
  discretization of s' = A s + u (B = 1 is folded into C, as in s4d.py).
- forward() is the training path. Because the SSM is time-invariant, the whole
  recurrence is one causal convolution y = K * u + D u with the kernel
  K_l = 2 Re sum_n C (zeta - 1)/A exp(dt A l), l = 0..L-1, built in "Vandermonde"
  form (exp(dt A l) directly, never zeta**l) and applied by real FFTs of length 2L
  (zero padding: a linear, not circular, convolution). No Python loop over time:
  the cost per layer is O(H N L) for the kernel plus O(B H L log L) for the FFTs.
- step() is the inference path: the same SSM as a recurrence, one token at a
  time, with a fixed-size state of N/2 complex numbers per channel and layer.
- Backward: the FFT convolution's adjoint is a correlation, evaluated with FFTs
  that reuse the forward's spectra; the kernel's adjoint goes through the complex
  exponentials to C, log_dt, log_A_real and A_imag (derived at s4d_kernel_backward).
- Runs on NumPy or CuPy (the `xp` argument), in float32 (complex64 inside) or
  float64 (complex128 inside).

What it is not, and where it departs from s4d.py
- GELU is the tanh approximation (GPT-2's, PyTorch's nn.GELU(approximate="tanh")),
  because NumPy has no erf; s4d.py uses the exact erf nn.GELU(). They differ by
  at most 4.7e-4.
- No dropout, no bidirectional kernel, no per-parameter learning rate: s4d.py's
  example gives the SSM parameters lr 1e-3 and no weight decay, the rest a larger
  lr; we use one lr for everything (train.py's 1e-3) and train.py exempts log_dt,
  log_A_real and A_imag from weight decay by name.
- Only S4D-Lin (A_imag = pi n) and ZOH; no S4D-Inv, no bilinear discretization,
  no NPLR (full S4) kernel, no state carried between batches.

Glossary (B batch, L = T time, H = d_model channels, N = d_state, N/2 complex modes, V vocab;
names marked * are per layer, prefixed layers.{i}.)
    code        paper   shape            parameter name
    E                   (V, H)           embedding.weight
    ln_w, ln_b          (H,)             *norm.weight, *norm.bias        pre-LN, eps 1e-5
    log_dt      log Δ   (H,)             *mixer.kernel.log_dt            step size per channel
    C           C       (H, N/2, 2)      *mixer.kernel.C                 real view of complex C~ (H, N/2)
    log_A_real          (H, N/2)         *mixer.kernel.log_A_real        Re A = -exp(log_A_real) < 0
    A_imag              (H, N/2)         *mixer.kernel.A_imag            Im A
    D           D       (H,)             *mixer.D                        skip u -> y
    W_o, b_o            (2H, H, 1) (2H,) *mixer.output_linear.0.weight, .bias: Conv1d(H, 2H, 1)
    W_f, b_f            (H,)             norm_f.weight, norm_f.bias
    W_out, b_out        (V, H) (V,)      lm_head.weight, lm_head.bias
  derived, not parameters:
    dt          Δ       (H,)             exp(log_dt)
    A           A       (H, N/2)         -exp(log_A_real) + i A_imag, complex
    zeta        Ā = ζ   (H, N/2)         exp(dt A), complex
    Bbar        B̄       (H, N/2)         (zeta - 1) / A: ZOH with B = 1
    Cp          C'      (H, N/2)         C~ Bbar, the kernel's coefficients
    Vand                (H, N, L)        exp(dt A l): real parts in [:N/2], imaginary in [N/2:]
    K           K̄       (H, L)           the convolution kernel
    s           x       (B, H, N/2)      the recurrent state (step only), complex
Activations outside the convolution are batch-major (B, L, H), so that the 1x1
conv and the head are single (B*L, H) matmuls; the convolution itself works on
(B, H, L), time last, as s4d.py does (and where the FFT runs along a contiguous axis).

Each backward's derivation sits next to it; the tests check every gradient by finite
differences and against torch_ref/s4.py.
"""
import math
from dataclasses import dataclass

import numpy


@dataclass
class Config:
    vocab_size: int = 65  # number of distinct characters; train.py sets it from the corpus
    d_model: int = 128    # H: channels of the residual stream, one SSM per channel
    n_layer: int = 4      # stacked residual S4D blocks
    d_state: int = 64     # N as in s4d.py: N/2 = 32 complex modes per channel (plus conjugates)
    dt_min: float = 0.001  # log_dt is drawn uniformly in [log dt_min, log dt_max] (s4d.py)
    dt_max: float = 0.1


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


# ============================================================ pointwise helpers
def layernorm_forward(x, w, b, xp, eps=1e-5):
    """x (..., H) -> y (..., H), cache. Biased variance, eps inside the sqrt (torch.nn.LayerNorm)."""
    # means as sum * (1/H): ndarray.mean's Python wrapper costs more than the math at step's (1, H)
    inv_H = 1.0 / x.shape[-1]
    xc = x - x.sum(-1, keepdims=True) * inv_H
    rstd = 1.0 / xp.sqrt((xc * xc).sum(-1, keepdims=True) * inv_H + eps)   # (..., 1)
    n = xc * rstd                                                   # normalized x
    return n * w + b, (n, rstd)


def layernorm_backward(dy, cache, w):
    """dy (..., H) -> dx, dw, db. With dn = dy w and n = (x - mean(x)) rstd: the mean
    subtraction removes mean(dn), and rstd's own dependence on x (d rstd / dx_j =
    -rstd^2 n_j / H) removes the part along n:  dx = rstd (dn - mean(dn) - n mean(dn n))."""
    n, rstd = cache
    dn = dy * w
    dx = rstd * (dn - dn.mean(-1, keepdims=True) - n * (dn * n).mean(-1, keepdims=True))
    H = dy.shape[-1]
    return dx, (dy * n).reshape(-1, H).sum(0), dy.reshape(-1, H).sum(0)


GELU_C = math.sqrt(2.0 / math.pi)


def gelu_forward(x, xp):
    """GELU, tanh form: 0.5 x (1 + t), t = tanh(sqrt(2/pi) (x + 0.044715 x^3)) -> y, cache (x, t)."""
    t = xp.tanh(GELU_C * (x + 0.044715 * x * x * x))
    return 0.5 * x * (1.0 + t), (x, t)


def gelu_backward(dy, cache):
    """dy -> dx. Product rule on 0.5 x (1 + t), with tanh' = 1 - t^2 (no cosh: it overflows):
    GELU' = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)."""
    x, t = cache
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3 * 0.044715 * x * x))


def sigmoid(x, xp):
    """Logistic sigmoid as 0.5 (1 + tanh(x / 2)): the same function, cannot overflow
    (tanh saturates), and 10x faster in NumPy than the two-branch exp(-|x|)/where form
    (one vectorized tanh)."""
    return 0.5 + 0.5 * xp.tanh(0.5 * x)


def glu_forward(z, xp):
    """GLU over channels, torch.nn.GLU: z (..., 2H) -> a * sigmoid(g), a = z[..., :H], g = z[..., H:]."""
    H = z.shape[-1] // 2
    a, sg = z[..., :H], sigmoid(z[..., H:], xp)
    return a * sg, (a, sg)


def glu_backward(dout, cache, xp):
    """dout (..., H) -> dz (..., 2H). out = a sig(g), and sig' = sig (1 - sig), so
    dz = [da, dg] = [dout sig(g), dout a sig(g)(1 - sig(g))]."""
    a, sg = cache
    da = dout * sg
    return xp.concatenate([da, da * a * (1.0 - sg)], axis=-1)


def cexp(z, xp):
    """exp of a complex array by Euler's formula, e^(a + ib) = e^a (cos b + i sin b).
    The same values as xp.exp(z); NumPy's complex exp is 7 to 18x slower (measured)."""
    return xp.exp(z.real) * (xp.cos(z.imag) + 1j * xp.sin(z.imag))


# ================================================================ the S4D kernel
def s4d_discretize(log_dt, C, log_A_real, A_imag, xp):
    """The SSM's parameters -> dt (H,), A, C~, zeta, Bbar (H, N/2) complex (S4D paper section 3).

    Zero-order hold of s'(t) = A s(t) + u(t): over one step of length dt,
        s_t = zeta s_{t-1} + Bbar u_t,  zeta = exp(dt A),  Bbar = (zeta - 1) / A.
    Complex arrays are complex64 for float32 parameters and complex128 for float64."""
    cdt = numpy.result_type(log_dt.dtype, numpy.complex64)
    dt = xp.exp(log_dt)                                                # Δ (H,)
    A = (-xp.exp(log_A_real) + 1j * A_imag).astype(cdt, copy=False)   # (H, N/2), Re A < 0: stable
    Ct = (C[..., 0] + 1j * C[..., 1]).astype(cdt, copy=False)          # torch.view_as_complex(C)
    dtA = dt[:, None] * A                                              # (H, N/2)
    zeta = cexp(dtA, xp).astype(cdt, copy=False)
    Bbar = (zeta - 1.0) / A
    return dt, A, Ct, dtA, zeta, Bbar


def s4d_kernel_forward(log_dt, C, log_A_real, A_imag, L, xp):
    """SSM parameters -> K (H, L), cache. s4d.py S4DKernel.forward, in real arithmetic:

        K_l = 2 Re sum_n Cp_n exp(dtA_n l),   Cp = C~ Bbar,  l = 0..L-1

    The Vandermonde matrix exp(dtA l) (H, N/2, L) is computed directly, as
    exp(Re dtA l) (cos(Im dtA l) + i sin(Im dtA l)) in real float arrays (as cexp:
    NumPy's complex exp would be 18x slower), and cached for backward as one real array
    Vand (H, N, L): real parts in the first N/2 rows, imaginary parts in the last
    N/2. Then K = 2 (Re Cp . Re V - Im Cp . Im V) is one batched matmul."""
    dt, A, Ct, dtA, zeta, Bbar = s4d_discretize(log_dt, C, log_A_real, A_imag, xp)
    H, N2 = A.shape
    Cp = Ct * Bbar                                              # C' (H, N/2)
    l = xp.arange(L, dtype=log_dt.dtype)                        # (L,)
    Vand = xp.empty((H, 2 * N2, L), log_dt.dtype)               # (H, N, L)
    re, im = Vand[:, :N2], Vand[:, N2:]                         # views, (H, N/2, L) each
    xp.multiply(dtA.imag[:, :, None], l, out=im)                # the phase Im(dtA) l, parked in im
    xp.cos(im, out=re)
    xp.sin(im, out=im)
    mag = xp.exp(dtA.real[:, :, None] * l)                      # |exp(dtA l)| (H, N/2, L), decays with l
    both = Vand.reshape(H, 2, N2, L)                            # a view of [re; im]
    both *= mag[:, None]                                        # exp(dtA l) = mag (cos + i sin)
    C_row = xp.concatenate([Cp.real, -Cp.imag], axis=-1)[:, None, :]   # (H, 1, N)
    K = 2.0 * (C_row @ Vand)[:, 0]                              # (H, L)
    return K, dict(dt=dt, A=A, Ct=Ct, zeta=zeta, Cp=Cp, Vand=Vand, l=l)


def s4d_kernel_backward(dK, kc, xp):
    """dK (H, L) -> d log_dt (H,), dC (H, N/2, 2), d log_A_real, d A_imag (H, N/2).

    The complex-parameter gradient. K = 2 Re w with w_l = sum_n Cp_n exp(dtA_n l), and every
    step from (C~, dt, A) to w is holomorphic (products, quotients, exp: no conjugates).
    For any complex intermediate q let delta_q = sum_l dK_l dw_l/dq, the ordinary complex
    derivative, chained through holomorphic steps by plain complex products. A change dq
    changes the loss by
        dL = sum_l dK_l 2 Re(dw_l/dq dq) = 2 Re(delta_q dq).
    So a real parameter r (dr real) gets dL/dr = 2 Re(delta_r), and a complex one p = a + ib
    (dp = da + i db) gets dL/da = 2 Re(delta_p), dL/db = 2 Re(i delta_p) = -2 Im(delta_p):
    the real-part convention (in Wirtinger terms dL/da + i dL/db = 2 dL/d(conj p) =
    2 conj(delta_p)), with K = 2 Re w supplying the factor 2.

    The chain, from w back to the parameters (each line below, in the same order):
        w_l = sum_n Cp exp(dtA l):  delta_Cp = V1 = sum_l dK_l exp(dtA l),
                                    delta_dtA = Cp V2,  V2 = sum_l l dK_l exp(dtA l)
        Cp = Ct (zeta - 1) / A, zeta = exp(dtA):
                                    delta_Ct = delta_Cp (zeta - 1) / A
                                    delta_dtA += delta_Cp Ct zeta / A       (zeta' = zeta)
                                    delta_A = -delta_Cp Cp / A              (the 1/A)
        dtA = dt A:                 delta_A += delta_dtA dt,  delta_dt = sum_n delta_dtA A
        dt = exp(log_dt):           d log_dt = 2 Re(delta_dt) dt
        A = -exp(log_A_real) + i A_imag:
                                    d log_A_real = 2 Re(delta_A) Re(A)    (dA/dlog_A_real = Re A)
                                    d A_imag = 2 Re(i delta_A) = -2 Im(delta_A)
        Ct = C[..., 0] + i C[..., 1]:  dC = (2 Re delta_Ct, -2 Im delta_Ct)"""
    dt, A, Ct, zeta, Cp, Vand = kc["dt"], kc["A"], kc["Ct"], kc["zeta"], kc["Cp"], kc["Vand"]
    N2 = A.shape[1]
    # V1 = sum_l dK_l exp(dtA l), V2 = sum_l l dK_l exp(dtA l): one matmul against the cached Vand
    P = Vand @ xp.stack([dK, dK * kc["l"]], axis=-1)            # (H, N, L) @ (H, L, 2) -> (H, N, 2)
    V1 = P[:, :N2, 0] + 1j * P[:, N2:, 0]                       # (H, N/2) complex
    V2 = P[:, :N2, 1] + 1j * P[:, N2:, 1]
    # w_l = sum_n Cp exp(dtA l)  ->  delta Cp, and the l-weighted part of delta dtA
    dCp = V1
    # Cp = Ct (zeta - 1) / A, zeta = exp(dtA)  ->  delta Ct, delta dtA (+= via zeta), delta A (the 1/A)
    ddtA = Cp * V2 + dCp * Ct * zeta / A
    dCt = dCp * (zeta - 1.0) / A
    dA = -dCp * Cp / A
    # dtA = dt A  ->  delta A (+=), delta dt
    dA += ddtA * dt[:, None]
    ddt = (ddtA * A).sum(-1)                                    # (H,)
    # back to the real parameters: dt = exp(log_dt); A = -exp(log_A_real) + i A_imag; Ct = C[...,0] + i C[...,1]
    dlog_dt = 2.0 * ddt.real * dt
    dlog_A_real = 2.0 * dA.real * A.real                        # dA/dlog_A_real = -exp(log_A_real) = Re A
    dA_imag = -2.0 * dA.imag                                    # dA/dA_imag = i: 2 Re(i dA) = -2 Im dA
    dC = xp.stack([2.0 * dCt.real, -2.0 * dCt.imag], axis=-1)   # mind the sign of the imaginary part
    return dlog_dt, dC, dlog_A_real, dA_imag


# ================================================ causal convolution, fast and slow
def fft_conv_forward(u, K, xp):
    """u (B, H, L), K (H, L) -> y (B, H, L), y_t = sum_{s<=t} K_{t-s} u_s, and cache (U, Kf).

    Both are zero-padded to 2L before the real FFT, so the circular convolution
    of length 2L equals the linear one on the first L outputs: nothing from the
    future wraps around into the past. Cached for backward: the spectra U and Kf.

    Scaling: the big transforms (of u, and the inverse) are the unitary ones
    (norm="ortho", 1/sqrt(2L) each), the kernel's is the plain DFT, so the product
    carries the 1/(2L) of the inverse DFT exactly once. The same result as the
    default norms; the reason is speed: NumPy 2.4 runs a float32 rfft with the default
    norm (and a float32 irfft with norm="forward") through its float64 loop, 6x
    slower (measured); with norm="ortho" both stay in float32."""
    L, cdt = u.shape[-1], numpy.result_type(u.dtype, numpy.complex64)   # NumPy 1 would give complex128
    U = xp.fft.rfft(u, n=2 * L, norm="ortho").astype(cdt, copy=False)    # (B, H, L+1) complex
    Kf = xp.fft.rfft(K, n=2 * L).astype(cdt, copy=False)                 # (H, L+1)
    y = xp.fft.irfft(U * Kf, n=2 * L, norm="ortho")[..., :L]    # (B, H, L)
    return y.astype(u.dtype, copy=False), (U, Kf)


def fft_conv_backward(dy, cache, xp):
    """dy (B, H, L) -> du (B, H, L), dK (H, L).

    Derived in time, not by differentiating rfft/irfft (the adjoint of irfft is not rfft:
    the half spectrum counts its interior bins twice). y_t = sum_{s<=t} K_{t-s} u_s is
    linear in u and in K, so each gets dy pulled back through the same sum:
        du_s = sum_{t>=s} K_{t-s} dy_t          a correlation: K flipped in time, so the
                                                gradient flows from the future to the past
        dK_j = sum_b sum_{t>=j} dy_t u_{t-j}     a correlation of dy with u
    A correlation is a convolution with one sequence reversed, and reversing a real
    sequence in time conjugates its DFT: corr(a, b) has spectrum conj(A) B. So
        du = irfft(dY conj(Kf))[:L],   dK = sum_b irfft(dY conj(U))[:L],   dY = rfft(dy, 2L)
    With the 2L padding the circular sums equal the linear ones on the first L outputs
    (a lag t - s < 0 lands in K's zero half). U and Kf are the forward's (two FFTs saved);
    the sum over b of dK happens in frequency space (one small inverse FFT).
    Scaling as in forward: dY and U each carry 1/sqrt(2L), so dK's inverse adds none."""
    U, Kf = cache
    L = dy.shape[-1]
    dY = xp.fft.rfft(dy, n=2 * L, norm="ortho")                             # (B, H, L+1)
    du = xp.fft.irfft(dY * Kf.conj(), n=2 * L, norm="ortho")[..., :L]       # (B, H, L)
    dK = xp.fft.irfft((dY * U.conj()).sum(0), n=2 * L, norm="forward")[..., :L]  # (H, L)
    return du.astype(dy.dtype, copy=False), dK.astype(dy.dtype, copy=False)


def direct_conv_forward(u, K):
    """The slow clear O(L^2) version of fft_conv_forward, for the tests:
    y_t = sum_j K_j u_{t-j}, one shifted product per lag j."""
    L = u.shape[-1]
    y = 0 * u
    for j in range(L):
        y[..., j:] += K[:, j:j + 1] * u[..., :L - j]
    return y, (u, K)


def direct_conv_backward(dy, cache):
    """The slow clear backward of direct_conv_forward, lag by lag: the line
    y[..., j:] += K_j u[..., :L-j] sends dy[..., j:] K_j to u and sum(dy[..., j:] u[..., :L-j]) to K_j."""
    u, K = cache
    L = u.shape[-1]
    du, dK = 0 * u, 0 * K
    for j in range(L):
        du[..., :L - j] += K[:, j:j + 1] * dy[..., j:]
        dK[:, j] = (dy[..., j:] * u[..., :L - j]).sum(axis=(0, 2))
    return du, dK


# ===================================================================== the model
class Model:
    def __init__(self, cfg, xp=numpy, dtype=numpy.float32, seed=0):
        self.cfg, self.xp, self.dtype = cfg, xp, numpy.dtype(dtype)
        self.cdtype = numpy.result_type(self.dtype, numpy.complex64)
        V, H, N2 = cfg.vocab_size, cfg.d_model, cfg.d_state // 2
        assert cfg.d_state % 2 == 0, "d_state is N, the number of real state dims: N/2 complex modes"
        rng = numpy.random.default_rng(seed)

        def put(a):  # drawn in float64 on the host, then cast and moved
            return xp.asarray(numpy.asarray(a, numpy.float64).astype(self.dtype))

        def uniform(bound, *shape):
            return put(rng.uniform(-bound, bound, shape))

        # PyTorch defaults: Embedding N(0, 1); LayerNorm w = 1, b = 0; Conv1d and Linear
        # U(-1/sqrt(fan_in), +1/sqrt(fan_in)) for weight and bias (fan_in = H here).
        # The SSM as s4d.py (S4D-Lin): D ~ N(0, 1); log_dt ~ U[log dt_min, log dt_max];
        # C complex normal (each part N(0, 1/2), torch.randn(cfloat)); A = -1/2 + i pi n.
        k = 1 / math.sqrt(H)
        p = {"embedding.weight": put(rng.standard_normal((V, H)))}
        for i in range(cfg.n_layer):
            pre = f"layers.{i}."
            p[pre + "norm.weight"] = put(numpy.ones(H))
            p[pre + "norm.bias"] = put(numpy.zeros(H))
            # drawn in s4d.py's order (D, log_dt, C), stored in the order the module
            # registers them (named_parameters: D, kernel.C, kernel.log_dt, ...)
            D = rng.standard_normal(H)
            log_dt = rng.uniform(math.log(cfg.dt_min), math.log(cfg.dt_max), H)
            p[pre + "mixer.D"] = put(D)
            p[pre + "mixer.kernel.C"] = put(rng.standard_normal((H, N2, 2)) * math.sqrt(0.5))
            p[pre + "mixer.kernel.log_dt"] = put(log_dt)
            p[pre + "mixer.kernel.log_A_real"] = put(numpy.full((H, N2), math.log(0.5)))
            p[pre + "mixer.kernel.A_imag"] = put(numpy.tile(math.pi * numpy.arange(N2), (H, 1)))
            p[pre + "mixer.output_linear.0.weight"] = uniform(k, 2 * H, H, 1)
            p[pre + "mixer.output_linear.0.bias"] = uniform(k, 2 * H)
        p["norm_f.weight"] = put(numpy.ones(H))
        p["norm_f.bias"] = put(numpy.zeros(H))
        p["lm_head.weight"] = uniform(k, V, H)
        p["lm_head.bias"] = uniform(k, V)
        self.params = p

    def _kernel_params(self, i):
        p, pre = self.params, f"layers.{i}.mixer.kernel."
        return p[pre + "log_dt"], p[pre + "C"], p[pre + "log_A_real"], p[pre + "A_imag"]

    # ------------------------------------------------------------------ forward
    def forward(self, idx, train=False, x0=None):
        """idx (B, T) -> logits (B, T, V), cache. `train` is unused (no dropout).
        x0, if given, replaces the embedding output (B, T, C): the tests use it to
        check the gradient reaching the embeddings, which backward leaves in cache["dx0"].

        Cached per layer (what backward needs; nothing is recomputed):
            ln     LayerNorm's normalized input and rstd   (B, L, H), (B, L, 1)
            u      the mixer's input, LN(x)                (B, L, H)
            kc     the kernel's small complex arrays (H, N/2) and Vand (H, N, L) real
            conv   U = rfft(u) (B, H, L+1) and Kf = rfft(K) (H, L+1), complex
            gelu   the pre-GELU activation y and its tanh   (B*L, H) each
            g      the GELU output, the 1x1 conv's input    (B*L, H)
            glu    the GLU's value half and sigmoid(gate)   (B*L, H) each"""
        xp, p, cfg = self.xp, self.params, self.cfg
        idx = check_idx(idx, cfg.vocab_size, 2, xp)
        B, L = idx.shape
        H = cfg.d_model
        x = p["embedding.weight"][idx] if x0 is None else xp.asarray(x0, dtype=self.dtype)  # (B, L, H)
        cache = {"idx": idx, "x0": x, "layers": []}
        for i in range(cfg.n_layer):
            pre = f"layers.{i}."
            # u = LayerNorm(x)                                       (B, L, H)
            u, ln = layernorm_forward(x, p[pre + "norm.weight"], p[pre + "norm.bias"], xp)
            # the SSM as a convolution: y = K * u + D u, time last    (B, H, L)
            K, kc = s4d_kernel_forward(*self._kernel_params(i), L, xp)
            yc, conv = fft_conv_forward(xp.ascontiguousarray(u.transpose(0, 2, 1)), K, xp)
            y = (yc.transpose(0, 2, 1) + u * p[pre + "mixer.D"]).reshape(B * L, H)   # (B*L, H)
            g, gelu = gelu_forward(y, xp)
            # output_linear: Conv1d(H, 2H, 1) is a Linear over channels, then GLU   (B*L, 2H) -> (B*L, H)
            z = g @ p[pre + "mixer.output_linear.0.weight"][:, :, 0].T + p[pre + "mixer.output_linear.0.bias"]
            out, glu = glu_forward(z, xp)
            x = x + out.reshape(B, L, H)                             # the residual
            cache["layers"].append(dict(ln=ln, u=u, kc=kc, conv=conv, gelu=gelu, g=g, glu=glu))
        # final LayerNorm and the head
        hf, cache["ln_f"] = layernorm_forward(x, p["norm_f.weight"], p["norm_f.bias"], xp)
        cache["h"] = hf.reshape(B * L, H)
        logits = (cache["h"] @ p["lm_head.weight"].T + p["lm_head.bias"]).reshape(B, L, -1)   # (B, L, V)
        return logits, cache

    # ----------------------------------------------------------------- backward
    def backward(self, dlogits, cache):
        """dlogits (B, T, V) -> grads, a dict with the keys of .params."""
        xp, p, cfg = self.xp, self.params, self.cfg
        idx, h = cache["idx"], cache["h"]
        B, L = idx.shape
        V, H = cfg.vocab_size, cfg.d_model
        grads = {}
        # logits = h W_out^T + b_out
        dl = xp.asarray(dlogits, dtype=self.dtype).reshape(B * L, V)
        grads["lm_head.weight"] = dl.T @ h                                      # (V, H)
        grads["lm_head.bias"] = dl.sum(0)
        # h = LayerNorm_f(x)
        dx, grads["norm_f.weight"], grads["norm_f.bias"] = layernorm_backward(
            (dl @ p["lm_head.weight"]).reshape(B, L, H), cache["ln_f"], p["norm_f.weight"])
        for i in reversed(range(cfg.n_layer)):
            pre, c = f"layers.{i}.", cache["layers"][i]
            # x = x + out: dx flows on unchanged, and into the mixer as dout
            dout = dx.reshape(B * L, H)
            # out = GLU(z)                                             (B*L, H) -> (B*L, 2H)
            dz = glu_backward(dout, c["glu"], xp)
            # z = g W_o^T + b_o
            W_o = p[pre + "mixer.output_linear.0.weight"][:, :, 0]                # (2H, H)
            grads[pre + "mixer.output_linear.0.weight"] = (dz.T @ c["g"])[:, :, None]   # (2H, H, 1)
            grads[pre + "mixer.output_linear.0.bias"] = dz.sum(0)
            # g = GELU(y)
            dy = gelu_backward(dz @ W_o, c["gelu"]).reshape(B, L, H)
            # y = K * u + D u: the D skip ...
            u = c["u"]
            grads[pre + "mixer.D"] = (dy * u).reshape(B * L, H).sum(0)
            du = dy * p[pre + "mixer.D"]                                         # (B, L, H)
            # ... and the convolution (time last), then the kernel
            duc, dK = fft_conv_backward(xp.ascontiguousarray(dy.transpose(0, 2, 1)), c["conv"], xp)
            du += duc.transpose(0, 2, 1)                                         # u has two consumers
            (grads[pre + "mixer.kernel.log_dt"], grads[pre + "mixer.kernel.C"],
             grads[pre + "mixer.kernel.log_A_real"], grads[pre + "mixer.kernel.A_imag"]) = \
                s4d_kernel_backward(dK, c["kc"], xp)
            # u = LayerNorm(x), then add into the residual stream
            dxn, grads[pre + "norm.weight"], grads[pre + "norm.bias"] = layernorm_backward(
                du, c["ln"], p[pre + "norm.weight"])
            dx = dx + dxn
        # x0 = E[idx]: scatter-add rows by a one-hot matmul (repeated ids add up)
        onehot = (idx.reshape(-1, 1) == xp.arange(V)).astype(self.dtype)        # (B*L, V)
        grads["embedding.weight"] = onehot.T @ dx.reshape(B * L, H)              # (V, H)
        cache["dx0"] = dx                                                       # (B, L, H)
        return {k: grads[k].astype(self.dtype, copy=False) for k in p}

    # ------------------------------------------------------------ step (inference)
    def init_state(self, batch):
        """The whole memory of the model: per layer, the SSM state s of shape
        (batch, H, N/2) complex, zeros. At the standard config that is 128 x 32
        complex numbers per layer (64 real numbers per channel, as d_state = 64 says),
        32K real numbers in all, however long the history: forward's convolution sees
        the whole past through K, the recurrence keeps only this.

        The state also carries, per layer, the recurrence's constants (zeta, Bbar, C~),
        each (H, N/2), discretized once here from .params: the SSM is time-invariant,
        so they are the same at every step (state-spaces calls this setup_step). They
        are not memory and never change; call init_state again after editing .params."""
        xp, shape = self.xp, (batch, self.cfg.d_model, self.cfg.d_state // 2)
        consts = []
        for i in range(self.cfg.n_layer):
            _, _, Ct, _, zeta, Bbar = s4d_discretize(*self._kernel_params(i), xp)
            consts.append((zeta, Bbar, Ct))
        return {"s": [xp.zeros(shape, self.cdtype) for _ in consts], "consts": consts}

    def step(self, idx_t, state):
        """idx_t (B,) -> logits (B, V), new state. The discretized recurrence
        (state-spaces SSMKernelDiag.step): s <- zeta s + Bbar u_t; y_t = 2 Re sum_n C~ s + D u_t,
        then GELU, output_linear, GLU and the residual exactly as in forward.
        Cost per token and layer O(H N) + O(H^2), whatever the position."""
        xp, p = self.xp, self.params
        x = p["embedding.weight"][check_idx(idx_t, self.cfg.vocab_size, 1, xp)]   # (B, H)
        new_s = []
        for i, (s, (zeta, Bbar, Ct)) in enumerate(zip(state["s"], state["consts"])):
            pre = f"layers.{i}."
            u, _ = layernorm_forward(x, p[pre + "norm.weight"], p[pre + "norm.bias"], xp)  # (B, H)
            s = zeta * s + Bbar * u[:, :, None]                                         # (B, H, N/2)
            y = 2.0 * (s * Ct).sum(-1).real + p[pre + "mixer.D"] * u                    # (B, H)
            g, _ = gelu_forward(y, xp)
            z = g @ p[pre + "mixer.output_linear.0.weight"][:, :, 0].T + p[pre + "mixer.output_linear.0.bias"]
            x = x + glu_forward(z, xp)[0]
            new_s.append(s)
        hf, _ = layernorm_forward(x, p["norm_f.weight"], p["norm_f.bias"], xp)
        return hf @ p["lm_head.weight"].T + p["lm_head.bias"], {"s": new_s, "consts": state["consts"]}
