"""Checks specific to mamba.py: the fast scan against the readable reference loop
(values and every gradient), the causal conv against a direct loop, the size of the
generation state, and the Delta initialization."""
import numpy
import pytest

from gradcheck import perturb
from models import TINY, load, make

mamba = load("mamba")


def run(model, idx, R):
    """Logits, every parameter gradient of sum(logits * R), and dL/dx0."""
    logits, cache = model.forward(idx)
    grads = model.backward(R, cache)
    return {"logits": logits, "dx0": cache["dx0"], **grads}


def assert_close(ours, ref, rtol, label):
    for k in ref:
        scale = max(numpy.abs(ref[k]).max(), 1e-300)
        err = numpy.abs(ours[k] - ref[k]).max()
        assert err <= rtol * scale, f"{label}, {k}: max |diff| {err:.3g}, relative to max |ref| {err / scale:.3g}"


def test_fast_scan_matches_the_reference_loop():
    """float64: logits, all parameter gradients and dx0 agree with scan="loop" to 1e-12."""
    rng = numpy.random.default_rng(0)
    B, T, V = 3, 21, TINY["mamba"]["vocab_size"]
    idx, R = rng.integers(0, V, (B, T)), rng.standard_normal((B, T, V))
    ref_model = make("mamba", scan="loop")
    model = make("mamba", scan="fast")
    for m in (ref_model, model):
        perturb(m)
        m.params["layers.0.mixer.dt_proj.bias"] += 2.0  # larger Delta: decays well below 1 as well
    assert_close(run(model, idx, R), run(ref_model, idx, R), 1e-12, "fast")


def test_fast_scan_matches_the_reference_loop_float32():
    rng = numpy.random.default_rng(0)
    B, T, V = 2, 20, TINY["mamba"]["vocab_size"]
    idx, R = rng.integers(0, V, (B, T)), rng.standard_normal((B, T, V)).astype(numpy.float32)
    ref, ours = run(make("mamba", "float32", scan="loop"), idx, R), run(make("mamba", "float32", scan="fast"), idx, R)
    for k, v in ours.items():
        assert v.dtype == numpy.float32, k
    assert_close(ours, ref, 1e-4, "fast float32")


def conv_direct(xi, w, b):
    """PyTorch's Conv1d(E, E, K, groups=E, padding=K-1), first T outputs, written out:
    out[t, :, e] = b[e] + sum_k w[e, 0, k] * xpad[t + k, :, e], xpad = K-1 zeros, xi, K-1 zeros."""
    T, B, E = xi.shape
    K = w.shape[-1]
    xpad = numpy.concatenate([numpy.zeros((K - 1, B, E)), xi, numpy.zeros((K - 1, B, E))])
    out = numpy.zeros((T, B, E))
    for t in range(T):
        for e in range(E):
            out[t, :, e] = b[e] + sum(w[e, 0, k] * xpad[t + k, :, e] for k in range(K))
    return out


@pytest.mark.parametrize("T,K", [(9, 4), (5, 3), (2, 4)])  # K > T: taps that only ever see padding
def test_causal_conv_against_a_direct_loop(T, K):
    rng = numpy.random.default_rng(0)
    B, E = 2, 5
    xi, w, b = rng.standard_normal((T, B, E)), rng.standard_normal((E, 1, K)), rng.standard_normal(E)
    xc, cache = mamba.causal_conv_forward(xi, w, b, numpy)
    assert numpy.abs(xc - conv_direct(xi, w, b)).max() < 1e-13
    # The backward, by linearity: for any dxc, <dxc, conv(xi)> is linear in xi, in w and in b,
    # so <dxc, xc - b> = <dxi, xi> = <dw, w>, and db = sum dxc.
    dxc = rng.standard_normal((T, B, E))
    dxi, dw, db = mamba.causal_conv_backward(dxc, cache, numpy)
    lhs = (dxc * (xc - b)).sum()
    assert abs((dxi * xi).sum() - lhs) < 1e-12 * max(1, abs(lhs))
    assert abs((dw * w).sum() - lhs) < 1e-12 * max(1, abs(lhs))
    assert numpy.abs(db - dxc.sum((0, 1))).max() < 1e-12
    # and entry by entry against the direct loop's finite differences (it is linear: exact)
    for k in range(K):
        w2 = w.copy()
        w2[:, 0, k] += 1.0
        assert numpy.allclose(dw[:, 0, k], (dxc * (conv_direct(xi, w2, b) - conv_direct(xi, w, b))).sum((0, 1)),
                              rtol=1e-12, atol=1e-12)


def test_step_state_has_constant_size():
    """The generation state is E*(K-1) + E*N numbers per layer and sequence, at every position."""
    model = make("mamba")
    cfg = model.cfg
    B = 2
    state = model.init_state(B)
    shapes = [tuple(a.shape for a in layer) for layer in state]
    assert shapes == [((B, cfg.d_inner, cfg.d_conv - 1), (B, cfg.d_state, cfg.d_inner))] * cfg.n_layer
    idx = numpy.random.default_rng(0).integers(0, cfg.vocab_size, (B, 50))
    for t in range(50):
        _, state = model.step(idx[:, t], state)
        assert [tuple(a.shape for a in layer) for layer in state] == shapes, f"state changed size at t={t}"


def test_conv_state_holds_the_raw_conv_inputs():
    """After steps, the conv state is the last K-1 inputs xi of the conv (before conv and SiLU)."""
    model = make("mamba")
    perturb(model)
    idx = numpy.random.default_rng(0).integers(0, model.cfg.vocab_size, (2, 7))
    _, cache = model.forward(idx)
    state = model.init_state(2)
    for t in range(7):
        _, state = model.step(idx[:, t], state)
    K = model.cfg.d_conv
    for l, (conv, _) in enumerate(state):
        xi = cache["layers"][l][1]["conv"][0]                 # the conv's input (T, B, E)
        assert numpy.abs(conv - xi[-(K - 1):].transpose(1, 2, 0)).max() < 1e-12


def test_init():
    """Delta at init = softplus(dt_proj.bias) lies in [1e-3, 1e-1] (log-uniform, the paper's
    section 3.6 and mamba_ssm); A = -(1, ..., N) in every channel; D = 1."""
    model = mamba.Model(mamba.Config(), dtype=numpy.float64)
    cfg = model.cfg
    for l in range(cfg.n_layer):
        m = f"layers.{l}.mixer."
        dt = numpy.logaddexp(0, model.params[m + "dt_proj.bias"])
        assert dt.min() >= 1e-3 * (1 - 1e-12) and dt.max() <= 1e-1 * (1 + 1e-12)
        assert dt.min() < 2e-3 and dt.max() > 5e-2          # it does spread over the range
        A = -numpy.exp(model.params[m + "A_log"])
        assert numpy.allclose(A, -numpy.arange(1, cfg.d_state + 1)[None, :].repeat(cfg.d_inner, 0), rtol=1e-14)
        assert (model.params[m + "D"] == 1).all()
    n = sum(v.size for v in model.params.values())
    assert 0.4e6 < n < 0.5e6, n                                 # the standard config: ~0.46M at vocab 65


@pytest.mark.parametrize("scan", ["parallel", "chunked", "batched"])
def test_unknown_scan_raises(scan):
    with pytest.raises(ValueError):
        make("mamba", scan=scan)
