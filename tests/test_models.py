"""Tests every model in tests/models.py MODELS through the models' shared protocol:
gradients by finite differences, step == forward, causality, dtypes, input
errors and standalone imports. With CuPy and a GPU the gradient and step tests
run on the GPU as well; without them those cases skip with the reason."""
import ast
import os
import shutil
import subprocess
import sys

import numpy
import pytest

from gradcheck import check_model, perturb
from models import MODELS, ROOT, TINY, make, to_host


def _gpu():
    try:
        import cupy
        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:
        return None


CUPY = _gpu()
DEVICES = ["cpu", pytest.param("gpu", marks=pytest.mark.skipif(CUPY is None, reason="needs CuPy and a GPU"))]


def xp_of(device):
    return numpy if device == "cpu" else CUPY


def tokens(B, T, V, seed=0):
    return numpy.random.default_rng(seed).integers(0, V, (B, T))


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", MODELS)
def test_gradients(name, device):
    model = make(name, xp=xp_of(device))
    perturb(model)
    failures = check_model(model, tokens(2, 6, TINY[name]["vocab_size"]))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", MODELS)
def test_gradcheck_catches_a_wrong_gradient(name):
    """Negative control: one entry off by 0.1% in any one tensor must be caught."""
    model = make(name)
    perturb(model)
    last = list(model.params)[-1]

    def corrupt(grads):
        g = grads[last].ravel()
        i = numpy.argmax(numpy.abs(g))
        g[i] *= 1.001

    failures = check_model(model, tokens(2, 6, TINY[name]["vocab_size"]), corrupt=corrupt)
    assert any(f.startswith(last) for f in failures), failures


# --------------------------------------------------------- step == forward
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", MODELS)
def test_step_equals_forward(name, device):
    model = make(name, xp=xp_of(device))
    perturb(model)
    V = model.cfg.vocab_size
    T = getattr(model.cfg, "block_size", 12)  # the transformer's whole block; 12 > the gradcheck's T otherwise
    idx = tokens(3, T, V)
    logits = to_host(model.forward(idx)[0])
    state = model.init_state(3)
    steps = []
    for t in range(T):
        out, state = model.step(idx[:, t], state)
        steps.append(to_host(out))
    err = numpy.abs(numpy.stack(steps, 1) - logits).max()
    assert err <= 1e-10 * max(1.0, numpy.abs(logits).max()), f"step vs forward: max |diff| {err:.3g}"


@pytest.mark.parametrize("name", MODELS)
def test_step_equals_forward_float32(name):
    model = make(name, dtype="float32")
    V = model.cfg.vocab_size
    T = getattr(model.cfg, "block_size", 12)
    idx = tokens(2, T, V)
    logits = model.forward(idx)[0]
    state = model.init_state(2)
    steps = []
    for t in range(T):
        out, state = model.step(idx[:, t], state)
        assert out.dtype == numpy.float32
        steps.append(out)
    err = numpy.abs(numpy.stack(steps, 1) - logits).max()
    assert err <= 1e-4 * max(1.0, numpy.abs(logits).max()), f"float32 step vs forward: {err:.3g}"


# --------------------------------------------------------------- invariants
@pytest.mark.parametrize("name", MODELS)
def test_causal_and_batch_independent(name):
    """Changing tokens from t on leaves logits before t alone; rows don't mix."""
    model = make(name)
    perturb(model)
    V = model.cfg.vocab_size
    idx = tokens(3, 10, V)
    logits = model.forward(idx)[0]
    other = idx.copy()
    other[:, 6:] = (other[:, 6:] + 1) % V
    other[2] = (other[2] + 3) % V  # row 2 changes everywhere
    changed = model.forward(other)[0]
    scale = max(1.0, numpy.abs(logits).max())
    assert numpy.abs(changed[:2, :6] - logits[:2, :6]).max() <= 1e-12 * scale
    assert numpy.abs(changed[:2, 6:] - logits[:2, 6:]).max() > 1e-6  # the change is seen later on


@pytest.mark.parametrize("name", MODELS)
def test_prefix_consistency(name):
    model = make(name)
    perturb(model)
    idx = tokens(2, 10, model.cfg.vocab_size)
    full = model.forward(idx)[0]
    part = model.forward(idx[:, :7])[0]
    assert numpy.abs(full[:, :7] - part).max() <= 1e-12 * max(1.0, numpy.abs(full).max())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", MODELS)
def test_dtypes(name, dtype):
    model = make(name, dtype=dtype)
    for k, v in model.params.items():
        assert v.dtype == numpy.dtype(dtype), k
    logits, cache = model.forward(tokens(2, 5, model.cfg.vocab_size))
    assert logits.dtype == numpy.dtype(dtype) and logits.shape == (2, 5, model.cfg.vocab_size)
    grads = model.backward(numpy.ones_like(logits), cache)
    assert list(grads) == list(model.params)
    for k, g in grads.items():
        assert g.dtype == numpy.dtype(dtype) and g.shape == model.params[k].shape, k
        assert numpy.isfinite(g).all(), k


@pytest.mark.parametrize("name", MODELS)
def test_params_are_live(name):
    """forward reads .params each call: an in-place edit takes effect."""
    model = make(name)
    idx = tokens(1, 4, model.cfg.vocab_size)
    before = model.forward(idx)[0].copy()
    for v in model.params.values():
        v *= 1.5
    assert numpy.abs(model.forward(idx)[0] - before).max() > 1e-6


@pytest.mark.parametrize("name", MODELS)
def test_loss_at_init_is_near_log_vocab(name):
    """A fresh model predicts near-uniformly: mean cross-entropy within 2 nats of ln V."""
    model = make(name, vocab_size=65)
    idx = tokens(4, 16, 65)
    z = model.forward(idx)[0]
    z = z - z.max(-1, keepdims=True)
    lse = numpy.log(numpy.exp(z).sum(-1))
    loss = (lse - numpy.take_along_axis(z, tokens(4, 16, 65, seed=1)[..., None], -1)[..., 0]).mean()
    assert abs(loss - numpy.log(65)) < 2.0, loss


@pytest.mark.parametrize("name", MODELS)
def test_bad_token_ids_raise(name):
    model = make(name)
    V = model.cfg.vocab_size
    for bad in [numpy.full((2, 3), V), numpy.full((2, 3), -1), numpy.zeros((2, 3), float), numpy.zeros(3, int)]:
        with pytest.raises(ValueError):
            model.forward(bad)
    with pytest.raises(ValueError):
        model.step(numpy.full(2, V), model.init_state(2))


# -------------------------------------------------------------- standalone
@pytest.mark.parametrize("name", MODELS)
def test_model_file_stands_alone(name, tmp_path):
    """Imports only the standard library and NumPy, and works copied elsewhere."""
    path = os.path.join(ROOT, name + ".py")
    tree = ast.parse(open(path).read())
    stdlib = set(sys.stdlib_module_names)
    for node in ast.walk(tree):
        mods = []
        if isinstance(node, ast.Import):
            mods = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mods = [(node.module or "").split(".")[0]]
        for m in mods:
            assert m == "numpy" or m in stdlib, f"{name}.py imports {m}"
    shutil.copy(path, tmp_path)
    code = (f"import numpy, {name}; m = {name}.Model({name}.Config(**{TINY[name]!r}));"
            f"print(m.forward(numpy.zeros((1, 3), int))[0].shape)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
