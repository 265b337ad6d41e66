"""The device path without a GPU: every model's forward, backward and step run on
tests/strict_xp.py, a stand-in for CuPy that refuses host arrays on the device
path, and must give NumPy's numbers. A planted `numpy.` call inside a forward
pass must be caught (the negative control that shows the stand-in can fail)."""
import importlib.util
import re

import numpy
import pytest

import strict_xp
from models import MODELS, TINY, load, make

XP = strict_xp.xp


def tokens(B, T, V, seed=0):
    return numpy.random.default_rng(seed).integers(0, V, (B, T))


def run(model, idx, dlogits):
    """forward, backward and a token-by-token step over idx; everything back on the host."""
    xp = model.xp
    logits, cache = model.forward(xp.asarray(idx))
    grads = model.backward(xp.asarray(dlogits), cache)
    state = model.init_state(idx.shape[0])
    steps = []
    for t in range(idx.shape[1]):
        out, state = model.step(xp.asarray(idx[:, t]), state)
        steps.append(XP.asnumpy(out))
    return (XP.asnumpy(logits), {k: XP.asnumpy(g) for k, g in grads.items()}, numpy.stack(steps, 1))


@pytest.mark.parametrize("name", MODELS)
def test_device_path_matches_numpy(name):
    V = TINY[name]["vocab_size"]
    idx = tokens(2, 7, V)
    dlogits = numpy.random.default_rng(1).standard_normal((2, 7, V))
    host = make(name)
    dev = make(name, xp=XP)
    assert all(isinstance(p, strict_xp.StrictArray) for p in dev.params.values()), \
        "parameters must live on the device (xp.asarray)"
    logits, cache = host.forward(idx)
    grads = host.backward(dlogits, cache)
    d_logits, d_grads, d_steps = run(dev, idx, dlogits)
    numpy.testing.assert_allclose(d_logits, logits, rtol=0, atol=1e-12)
    assert d_grads.keys() == grads.keys()
    for k in grads:
        numpy.testing.assert_allclose(d_grads[k], grads[k], rtol=0, atol=1e-12, err_msg=k)
    numpy.testing.assert_allclose(d_steps, logits, rtol=0, atol=1e-10)


def test_stand_in_refuses_host_arrays():
    a = XP.asarray(numpy.arange(4.0))
    host = numpy.ones(4)
    for bad in (lambda: numpy.exp(a), lambda: numpy.asarray(a), lambda: a + host,
                lambda: host * a, lambda: a[numpy.array([0, 1])], lambda: XP.matmul(a, host),
                lambda: a.__setitem__(slice(None), host)):
        with pytest.raises(TypeError):
            bad()
    assert float((a * 2.0).sum()) == 12.0                     # scalars and read-back are fine
    assert isinstance(XP.asnumpy(a), numpy.ndarray)


# ------------------------------------------------------------- planted bug
CALL = re.compile(r"\bxp\.(exp|tanh|matmul|sqrt|maximum|multiply|log|cos)\(")


def planted(name):
    """The model module with every `xp.<ufunc>(` of its source turned into `numpy.<ufunc>(`:
    the same numbers on NumPy, a host call on the device path."""
    mod = load(name)
    src = open(mod.__file__).read()
    bad, n = CALL.subn(lambda m: f"numpy.{m.group(1)}(", src)
    assert n > 0, f"{name}.py has none of the planted calls"
    spec = importlib.util.spec_from_loader(f"planted_{name}", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(bad, f"planted_{name}.py", "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("name", MODELS)
def test_planted_numpy_call_is_caught(name):
    mod = planted(name)
    cfg = mod.Config(**TINY[name])
    idx = tokens(2, 5, TINY[name]["vocab_size"])
    good = mod.Model(cfg, xp=numpy, dtype=numpy.float64, seed=0).forward(idx)[0]
    ref = make(name).forward(idx)[0]
    numpy.testing.assert_allclose(good, ref, rtol=0, atol=1e-12)    # NumPy cannot see the bug
    dev = mod.Model(cfg, xp=XP, dtype=numpy.float64, seed=0)
    with pytest.raises(TypeError):                                    # the stand-in does
        dev.forward(XP.asarray(idx))
