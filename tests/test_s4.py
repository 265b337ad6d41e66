"""Checks specific to s4.py (the generic ones are in test_models.py and test_torch.py):

1. the Vandermonde kernel equals the impulse response of the recurrence;
2. the FFT convolution equals the slow direct O(L^2) one, values and backward;
3. causality at a long L: no wrap-around of the FFT (with a negative control:
   a circular FFT of length L does leak the future);
4. a float32 model stays float32/complex64 all the way through (NumPy 2's FFT keeps
   complex64 for float32 input, NumPy 1's would promote: the model casts explicitly),
   a float64 one float64/complex128.
"""
import numpy
import pytest

from gradcheck import perturb
from models import load, make

s4 = load("s4")


def rel_err(a, b):
    return numpy.abs(a - b).max() / max(1e-300, numpy.abs(b).max())


def kernel_params(model, i=0):
    return model._kernel_params(i)


# ------------------------------------------------ 1. kernel == impulse response
@pytest.mark.parametrize("L", [1, 7, 300])
def test_kernel_is_the_impulse_response_of_the_recurrence(L):
    """K from exp(dtA l) directly vs running s <- zeta s + Bbar u, y = 2 Re sum C~ s on u = (1, 0, 0, ...)."""
    model = make("s4", d_model=5, d_state=12)
    perturb(model)
    params = kernel_params(model)
    K, _ = s4.s4d_kernel_forward(*params, L, numpy)
    _, _, Ct, _, zeta, Bbar = s4.s4d_discretize(*params, numpy)
    s = numpy.zeros_like(Bbar)                       # (H, N/2), one impulse per channel
    K_rec = numpy.empty_like(K)
    for l in range(L):
        s = zeta * s + Bbar * (1.0 if l == 0 else 0.0)
        K_rec[:, l] = 2 * (Ct * s).sum(-1).real
    assert rel_err(K, K_rec) < 1e-12, rel_err(K, K_rec)


# ------------------------------------------- 2. FFT conv == direct conv, and backward
def test_fft_convolution_matches_direct_convolution():
    rng = numpy.random.default_rng(0)
    B, H, L = 3, 4, 37
    u, K, dy = rng.standard_normal((B, H, L)), rng.standard_normal((H, L)), rng.standard_normal((B, H, L))
    y, cache = s4.fft_conv_forward(u, K, numpy)
    y_slow, slow_cache = s4.direct_conv_forward(u, K)
    assert rel_err(y, y_slow) < 1e-13
    # one more, fully explicit: y_t = sum_{s<=t} K_{t-s} u_s
    t = 20
    assert abs(y[1, 2, t] - sum(K[2, t - s] * u[1, 2, s] for s in range(t + 1))) < 1e-12
    du, dK = s4.fft_conv_backward(dy, cache, numpy)
    du_slow, dK_slow = s4.direct_conv_backward(dy, slow_cache)
    assert rel_err(du, du_slow) < 1e-13 and rel_err(dK, dK_slow) < 1e-13
    # the convolution is bilinear: <dy, conv(u, K)> = <du, u> = <dK, K> (checks the slow backward itself)
    inner = (dy * y_slow).sum()
    assert abs((du_slow * u).sum() - inner) < 1e-10 * abs(inner)
    assert abs((dK_slow * K).sum() - inner) < 1e-10 * abs(inner)


# --------------------------------------------------------- 3. causality at long L
def test_no_wrap_around_at_long_length():
    """Changing u from t on leaves y before t alone (to 1e-12), at L = 2048, with the
    model's own kernel (slow decay, small dt, so wrap-around would be visible)."""
    L, t = 2048, 1500
    model = make("s4", d_model=4, d_state=8, dt_min=1e-4, dt_max=1e-3)
    K, _ = s4.s4d_kernel_forward(*kernel_params(model), L, numpy)
    rng = numpy.random.default_rng(0)
    u = rng.standard_normal((2, 4, L))
    v = u.copy()
    v[..., t:] = rng.standard_normal((2, 4, L - t))
    y, _ = s4.fft_conv_forward(u, K, numpy)
    y2, _ = s4.fft_conv_forward(v, K, numpy)
    scale = numpy.abs(y).max()
    assert numpy.abs(y2[..., :t] - y[..., :t]).max() <= 1e-12 * scale
    assert numpy.abs(y2[..., t:] - y[..., t:]).max() > 1e-3 * scale
    # negative control: the same FFT product at length L (circular) leaks the future into the past
    circ = lambda x: numpy.fft.irfft(numpy.fft.rfft(x, n=L) * numpy.fft.rfft(K, n=L), n=L)
    assert numpy.abs(circ(v)[..., :t] - circ(u)[..., :t]).max() > 1e-3 * scale


def test_model_is_causal_at_long_length():
    model = make("s4", dt_min=1e-4, dt_max=1e-3)
    perturb(model)
    T, t = 2048, 1500
    idx = numpy.random.default_rng(0).integers(0, model.cfg.vocab_size, (1, T))
    other = idx.copy()
    other[:, t:] = (other[:, t:] + 1) % model.cfg.vocab_size
    a, b = model.forward(idx)[0], model.forward(other)[0]
    scale = max(1.0, numpy.abs(a).max())
    assert numpy.abs(a[:, :t] - b[:, :t]).max() <= 1e-12 * scale
    assert numpy.abs(a[:, t:] - b[:, t:]).max() > 1e-6


# ------------------------------------------------------------------ 4. dtypes
def arrays(tree):
    """Every array inside a (nested) cache/state of dicts, lists and tuples."""
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, (list, tuple)):
        return [a for t in tree for a in arrays(t)]
    return [tree] if isinstance(tree, numpy.ndarray) else []


@pytest.mark.parametrize("dtype,cdtype", [("float32", "complex64"), ("float64", "complex128")])
def test_precision_is_kept_everywhere(dtype, cdtype):
    model = make("s4", dtype=dtype)
    idx = numpy.random.default_rng(0).integers(0, model.cfg.vocab_size, (2, 9))
    logits, cache = model.forward(idx)
    grads = model.backward(numpy.ones_like(logits), cache)
    allowed = {numpy.dtype(dtype), numpy.dtype(cdtype)}
    for a in arrays(cache) + arrays(grads) + [logits]:
        if a.dtype.kind in "fc":
            assert a.dtype in allowed, (a.dtype, a.shape)
    # the complex parts really are complex of the right width
    c = cache["layers"][0]
    assert c["conv"][0].dtype == cdtype and c["conv"][1].dtype == cdtype and c["kc"]["zeta"].dtype == cdtype
    assert c["kc"]["Vand"].dtype == dtype
    state = model.init_state(2)
    out, state = model.step(idx[:, 0], state)
    assert out.dtype == dtype and all(s.dtype == cdtype for s in state["s"])
    for a in arrays(state):
        assert a.dtype in allowed, (a.dtype, a.shape)
    assert cache["dx0"].dtype == dtype
