"""Checks specific to mamba2.py: the three forms of the SSD (the recurrence, the
quadratic "attention" form, the chunked algorithm) agree in value, and the chunked
backward in gradient, at every chunk size, including sequences that are not a multiple
of it; the chunked backward against finite differences on its own; the size of the
generation state; the initialization."""
import numpy
import pytest

from gradcheck import perturb
from models import TINY, load, make

mamba2 = load("mamba2")


def ssd_inputs(seed=0, B=2, T=21, H=3, P=4, N=5, dtype=numpy.float64, big_decay=False):
    """Random SSD inputs: x (B, T, H, P), Delta > 0 (B, T, H), A < 0 (H,), B_t, C_t (B, T, N).
    big_decay: Delta up to ~20, so that whole chunks decay to ~exp(-1000) (underflow to 0)."""
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal((B, T, H, P))
    dt = numpy.exp(rng.standard_normal((B, T, H)) + (2.0 if big_decay else 0.0))
    A = -numpy.exp(rng.standard_normal(H))
    Bm, Cm = rng.standard_normal((B, T, N)), rng.standard_normal((B, T, N))
    return [a.astype(dtype) for a in (x, dt, A, Bm, Cm)]


CHUNKS = [1, 2, 4, 7, 21, 32]  # T = 21: a multiple of 1, 7, 21; not of 2, 4; and 32 > T (one padded chunk)


@pytest.mark.parametrize("big_decay", [False, True])
def test_three_forms_agree(big_decay):
    """float64: recurrence == quadratic == chunked (every chunk size) to 1e-12."""
    args = ssd_inputs(big_decay=big_decay)
    y_rec, h = mamba2.ssd_recurrent(*args, numpy)
    scale = numpy.abs(y_rec).max()
    y_quad, M = mamba2.ssd_quadratic(*args, numpy)
    assert numpy.abs(y_quad - y_rec).max() <= 1e-12 * scale
    for Q in CHUNKS:
        y, _ = mamba2.ssd_chunked_forward(*args, Q, numpy)
        assert y.shape == y_rec.shape
        err = numpy.abs(y - y_rec).max()
        assert err <= 1e-12 * scale, f"chunk {Q}: max |chunked - recurrent| {err:.3g} (scale {scale:.3g})"
    assert numpy.isfinite(y_rec).all() and numpy.isfinite(M).all()


def test_quadratic_form_is_masked_attention():
    """M is causal (zero above the diagonal), M[t, s] = exp(S_t - S_s) C_t . B_s, and y = M (Delta x)."""
    x, dt, A, Bm, Cm = ssd_inputs(T=9)
    _, M = mamba2.ssd_quadratic(x, dt, A, Bm, Cm, numpy)
    assert M.shape == (2, 3, 9, 9)
    assert (numpy.triu(M, 1) == 0).all()
    S = numpy.cumsum(dt * A, axis=1)                           # (B, T, H)
    b, h, t, s = 1, 2, 7, 3
    want = numpy.exp(S[b, t, h] - S[b, s, h]) * (Cm[b, t] @ Bm[b, s])
    assert abs(M[b, h, t, s] - want) <= 1e-14 * abs(want)


def test_chunked_backward_gradients_agree_across_chunk_sizes():
    """The chunked backward gives the same dx, dDelta, dA, dB, dC at every chunk size (1e-12):
    Q = 1 is the recurrence's backward, Q >= T the quadratic form's."""
    args = ssd_inputs()
    dy = numpy.random.default_rng(1).standard_normal(args[0].shape)
    ref = mamba2.ssd_chunked_backward(dy, mamba2.ssd_chunked_forward(*args, 1, numpy)[1], numpy)
    for Q in CHUNKS[1:]:
        got = mamba2.ssd_chunked_backward(dy, mamba2.ssd_chunked_forward(*args, Q, numpy)[1], numpy)
        for name, g, r in zip(("dx", "dDelta", "dA", "dB", "dC"), got, ref):
            assert g.shape == r.shape, name
            err = numpy.abs(g - r).max()
            assert err <= 1e-12 * numpy.abs(r).max(), f"chunk {Q}, {name}: max |diff| {err:.3g}"


@pytest.mark.parametrize("Q", [1, 3, 4, 8])
def test_chunked_backward_by_finite_differences(Q):
    """Every entry of every input of the chunked SSD, at T = 7 (Q = 3, 4: a padded last
    chunk; Q = 8: one chunk, the quadratic form), loss sum(y * R), centered differences."""
    args = ssd_inputs(T=7, B=2, H=2, P=3, N=3)
    R = numpy.random.default_rng(2).standard_normal(args[0].shape)
    grads = mamba2.ssd_chunked_backward(R, mamba2.ssd_chunked_forward(*args, Q, numpy)[1], numpy)
    h = 1e-6
    for name, a, g in zip(("x", "Delta", "A", "B", "C"), args, grads):
        num = numpy.zeros_like(a)
        for i in numpy.ndindex(a.shape):
            old = a[i]
            a[i] = old + h
            Lp = (mamba2.ssd_chunked_forward(*args, Q, numpy)[0] * R).sum()
            a[i] = old - h
            Lm = (mamba2.ssd_chunked_forward(*args, Q, numpy)[0] * R).sum()
            a[i] = old
            num[i] = (Lp - Lm) / (2 * h)
        err = numpy.abs(g - num).max()
        assert err <= 1e-7 * max(1.0, numpy.abs(num).max()), f"Q {Q}, d{name}: max |analytic - numerical| {err:.3g}"


def test_three_forms_agree_float32():
    args = ssd_inputs(dtype=numpy.float32)
    y_rec, _ = mamba2.ssd_recurrent(*args, numpy)
    y_quad, _ = mamba2.ssd_quadratic(*args, numpy)
    y_chunk, _ = mamba2.ssd_chunked_forward(*args, 4, numpy)
    scale = numpy.abs(y_rec).max()
    for y in (y_quad, y_chunk):
        assert y.dtype == numpy.float32
        assert numpy.abs(y - y_rec).max() <= 1e-5 * scale


def run(model, idx, R):
    """Logits, every parameter gradient of sum(logits * R), and dL/dx0."""
    logits, cache = model.forward(idx)
    grads = model.backward(R, cache)
    return {"logits": logits, "dx0": cache["dx0"], **grads}


@pytest.mark.parametrize("chunk", [2, 4, 8, 32])
def test_model_is_the_same_at_every_chunk_size(chunk):
    """The whole model, float64: logits, every parameter gradient and dx0 at chunk_size
    2, 4, 8, 32 (T = 21: padded last chunks, and one chunk longer than T) equal those
    at chunk_size 1 (the recurrence) to 1e-12. Larger Delta in layer 0: strong decays too."""
    rng = numpy.random.default_rng(0)
    B, T, V = 3, 21, TINY["mamba2"]["vocab_size"]
    idx, R = rng.integers(0, V, (B, T)), rng.standard_normal((B, T, V))
    ref_model, model = make("mamba2", chunk_size=1), make("mamba2", chunk_size=chunk)
    for m in (ref_model, model):
        perturb(m)
        m.params["layers.0.mixer.dt_bias"] += 2.0
    ours, ref = run(model, idx, R), run(ref_model, idx, R)
    for k in ref:
        err = numpy.abs(ours[k] - ref[k]).max()
        assert err <= 1e-12 * numpy.abs(ref[k]).max(), f"chunk {chunk}, {k}: max |diff| {err:.3g}"


def test_step_state_has_constant_size():
    """The generation state is (E + 2N)(K-1) + H P N numbers per layer and sequence, at every position."""
    model = make("mamba2")
    cfg = model.cfg
    B = 2
    state = model.init_state(B)
    F = cfg.d_inner + 2 * cfg.d_state
    shapes = [tuple(a.shape for a in layer) for layer in state]
    assert shapes == [((B, F, cfg.d_conv - 1), (B, cfg.nheads, cfg.headdim, cfg.d_state))] * cfg.n_layer
    idx = numpy.random.default_rng(0).integers(0, cfg.vocab_size, (B, 40))
    for t in range(40):
        _, state = model.step(idx[:, t], state)
        assert [tuple(a.shape for a in layer) for layer in state] == shapes, f"state changed size at t={t}"


def test_conv_state_holds_the_raw_conv_inputs():
    """After steps, the conv state is the last K-1 inputs xBC of the conv (before conv and SiLU)."""
    model = make("mamba2")
    perturb(model)
    idx = numpy.random.default_rng(0).integers(0, model.cfg.vocab_size, (2, 7))
    _, cache = model.forward(idx)
    state = model.init_state(2)
    for t in range(7):
        _, state = model.step(idx[:, t], state)
    K = model.cfg.d_conv
    for l, (conv, _) in enumerate(state):
        xBC = cache["layers"][l][1]["conv"][0]                # (B, T, F)
        assert numpy.abs(conv - xBC[:, -(K - 1):].transpose(0, 2, 1)).max() < 1e-12


def test_init():
    """Delta = softplus(dt_bias) log-uniform in [1e-3, 1e-1]; A = -exp(A_log) in [-16, -1]
    per head; D = 1; about 0.48M parameters at the standard config and vocab 65."""
    model = mamba2.Model(mamba2.Config(), dtype=numpy.float64)
    cfg = model.cfg
    assert (cfg.d_inner, cfg.nheads) == (256, 8)
    for l in range(cfg.n_layer):
        m = f"layers.{l}.mixer."
        dt = numpy.logaddexp(0, model.params[m + "dt_bias"])
        assert dt.shape == (cfg.nheads,)
        assert dt.min() >= 1e-3 * (1 - 1e-12) and dt.max() <= 1e-1 * (1 + 1e-12)
        A = -numpy.exp(model.params[m + "A_log"])
        assert A.shape == (cfg.nheads,) and (A <= -1).all() and (A >= -16).all()
        assert (model.params[m + "D"] == 1).all()
        assert model.params[m + "in_proj.weight"].shape == (2 * 256 + 2 * 64 + 8, 128)
    n = sum(v.size for v in model.params.values())
    assert 0.45e6 < n < 0.5e6, n


def test_bad_config_raises():
    with pytest.raises(ValueError):
        make("mamba2", headdim=5)                              # d_inner 16 is not a multiple of 5
    with pytest.raises(ValueError):
        make("mamba2", chunk_size=0)


def test_float32_matches_pytorch_float32():
    """float32 on both sides (the training dtype): logits and every gradient within 1e-4 of
    the largest entry, the float32 tolerance the other checks use. Skips without PyTorch."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (optional)")
    import torch_ref
    model = make("mamba2", dtype="float32")
    perturb(model)
    rng = numpy.random.default_rng(0)
    B, T, V = 2, 11, TINY["mamba2"]["vocab_size"]
    idx, R = rng.integers(0, V, (B, T)), rng.standard_normal((B, T, V)).astype(numpy.float32)
    ref = torch_ref.build("mamba2", model.cfg, model.params, dtype=torch.float32)
    ours = run(model, idx, R)
    logits = ref(torch.from_numpy(idx))
    (logits * torch.from_numpy(R)).sum().backward()
    theirs = {"logits": logits.detach().numpy(), **{k: p.grad.numpy() for k, p in ref.named_parameters()}}
    for k, r in theirs.items():
        assert ours[k].dtype == numpy.float32, k
        err = numpy.abs(ours[k] - r).max()
        assert err <= 1e-4 * numpy.abs(r).max(), f"{k}: max |ours - torch| {err:.3g}, scale {numpy.abs(r).max():.3g}"
