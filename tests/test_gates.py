"""Checks specific to the gated RNNs, lstm.py and gru.py.

- Gate order. A model with its gate blocks in the wrong order (char-rnn's i, f, o, g;
  Chung's GRU interpolation) is still a correct model of *something*: it trains, and
  its gradients pass a self-consistent finite-difference check. Only the PyTorch
  reference catches it, so here is the negative control that proves the reference
  comparison can fail: swap two gate blocks in the reference, and the logits disagree.
- The two bias vectors. For the LSTM, b_ih and b_hh enter the same sum, so their
  gradients are equal. For PyTorch's GRU, b_hn sits inside r * (W_hn h + b_hn) and
  b_in outside it: their n-block gradients differ, the r and z blocks are equal.
- The stable sigmoid, the LSTM's forget-bias init, the GRU's interpolation
  direction, and the standard configs' parameter counts.
"""
import warnings

import numpy
import pytest

from gradcheck import perturb
from models import load, make

GATED = ["lstm", "gru"]
# The two gate blocks swapped in the negative control, and the block width of each model.
SWAP = {"lstm": ("f", "g"), "gru": ("r", "z")}
BLOCKS = {"lstm": "ifgo", "gru": "rzn"}


def swap_blocks(w, order, a, b):
    """A copy of w (kH, ...) with the row blocks of gates a and b exchanged."""
    H = w.shape[0] // len(order)
    i, j = order.index(a), order.index(b)
    w = w.copy()
    w[i * H:(i + 1) * H], w[j * H:(j + 1) * H] = w[j * H:(j + 1) * H].copy(), w[i * H:(i + 1) * H].copy()
    return w


@pytest.mark.parametrize("name", GATED)
def test_reference_catches_a_wrong_gate_order(name):
    """Swapping two gate blocks of weight_ih_l0 in the reference makes it disagree with us;
    unswapped, it agrees. So test_torch.py's comparison is able to fail on a gate-order bug."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (optional: pip install torch==2.13.0)")
    import torch_ref

    model = make(name)
    perturb(model)
    idx = numpy.random.default_rng(0).integers(0, model.cfg.vocab_size, (2, 7))
    ours = model.forward(idx)[0]
    scale = max(1.0, numpy.abs(ours).max())

    ref = torch_ref.build(name, model.cfg, model.params)
    with torch.no_grad():
        same = ref(torch.from_numpy(idx)).numpy()
    assert numpy.abs(same - ours).max() <= 1e-9 * scale

    key = f"{name}.weight_ih_l0"
    swapped = dict(model.params, **{key: swap_blocks(model.params[key], BLOCKS[name], *SWAP[name])})
    ref = torch_ref.build(name, model.cfg, swapped)
    with torch.no_grad():
        wrong = ref(torch.from_numpy(idx)).numpy()
    assert numpy.abs(wrong - ours).max() > 1e-3 * scale, f"swapping {SWAP[name]} went unnoticed"


@pytest.mark.parametrize("name", GATED)
def test_bias_gradients(name):
    """LSTM: d b_ih == d b_hh everywhere. GRU: equal in the r and z blocks, different in n
    (d b_in = sum dn_pre, d b_hn = sum dn_pre * r)."""
    model = make(name)
    perturb(model)
    rng = numpy.random.default_rng(0)
    V, H = model.cfg.vocab_size, model.cfg.d_model
    logits, cache = model.forward(rng.integers(0, V, (2, 6)))
    grads = model.backward(rng.standard_normal(logits.shape), cache)
    for l in range(model.cfg.n_layer):
        d_ih, d_hh = grads[f"{name}.bias_ih_l{l}"], grads[f"{name}.bias_hh_l{l}"]
        if name == "lstm":
            numpy.testing.assert_array_equal(d_ih, d_hh)
        else:
            numpy.testing.assert_allclose(d_ih[:2 * H], d_hh[:2 * H], rtol=1e-12, atol=1e-15)  # r, z
            gap = numpy.abs(d_ih[2 * H:] - d_hh[2 * H:]).max()                                  # n
            assert gap > 1e-3 * numpy.abs(d_ih[2 * H:]).max(), "b_in and b_hn got the same gradient"


@pytest.mark.parametrize("name", GATED)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_is_stable(name, dtype):
    """sigmoid(x, xp) = 0.5 tanh(x/2) + 0.5: no overflow warnings at huge |x|, outputs in
    [0, 1], the input's dtype, and equal to the textbook sigma."""
    mod = load(name)
    x = numpy.array([-1e4, -700.0, -40.0, -3.0, -1e-3, 0.0, 1e-3, 3.0, 40.0, 700.0, 1e4], dtype)
    e = numpy.exp(-numpy.abs(x.astype(float)))                   # the branch form, in float64:
    exact = numpy.where(x >= 0, 1 / (1 + e), e / (1 + e))        # 1/(1+e^-x) and e^x/(1+e^x)
    tol = 4 * numpy.finfo(dtype).eps                              # absolute: a gate multiplies O(1) values
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # an overflow in exp would raise here
        s = mod.sigmoid(x, numpy)
    assert s.dtype == numpy.dtype(dtype)
    assert numpy.abs(s - exact).max() <= tol and s.min() >= 0 and s.max() <= 1


@pytest.mark.parametrize("forget_bias", [1.0, 2.5, 0.0])
def test_lstm_forget_bias(forget_bias):
    """Config.forget_bias v != 0 sets b_ih_f = v, b_hh_f = 0; v = 0 keeps PyTorch's draw.
    Only the forget block differs between the inits: every other array is the same draw."""
    model = make("lstm", forget_bias=forget_bias)
    plain = make("lstm", forget_bias=0.0)
    H = model.cfg.d_model
    for l in range(model.cfg.n_layer):
        b_ih, b_hh = model.params[f"lstm.bias_ih_l{l}"], model.params[f"lstm.bias_hh_l{l}"]
        if forget_bias:
            numpy.testing.assert_array_equal(b_ih[H:2 * H], forget_bias)
            numpy.testing.assert_array_equal(b_hh[H:2 * H], 0.0)
        else:
            assert numpy.abs(b_ih[H:2 * H]).max() < 1 / numpy.sqrt(H)   # PyTorch's U(+-1/sqrt(H))
            assert numpy.abs(b_hh[H:2 * H]).max() < 1 / numpy.sqrt(H)
            assert numpy.abs(b_ih[H:2 * H]).min() > 0                    # drawn, not zeroed
        for b, b0 in ((b_ih, plain.params[f"lstm.bias_ih_l{l}"]), (b_hh, plain.params[f"lstm.bias_hh_l{l}"])):
            numpy.testing.assert_array_equal(numpy.delete(b, numpy.s_[H:2 * H]), numpy.delete(b0, numpy.s_[H:2 * H]))
    for k in model.params:
        if "bias" not in k:
            numpy.testing.assert_array_equal(model.params[k], plain.params[k])


def test_gru_update_gate_keeps_the_old_state():
    """h_t = (1 - z) * n + z * h_{t-1} (Cho et al., PyTorch): z -> 1 keeps h. With z forced to 1
    in layer 0, its output stays at h_{-1} = 0 for ever, whatever the input (Chung et al.'s
    convention would instead give h_t = n, all input): the logits no longer depend on the tokens."""
    model = make("gru")
    perturb(model)
    H = model.cfg.d_model
    model.params["gru.bias_hh_l0"][H:2 * H] = 1e4                     # z = sigma(huge) = 1
    rng = numpy.random.default_rng(0)
    logits, cache = model.forward(rng.integers(0, model.cfg.vocab_size, (2, 6)))
    numpy.testing.assert_array_equal(cache["layers"][0][5], 0.0)      # layer 0's h, all t
    other = model.forward(rng.integers(0, model.cfg.vocab_size, (2, 6)))[0]
    numpy.testing.assert_array_equal(logits, other)


@pytest.mark.parametrize("name, count", [("lstm", 1_086_017), ("gru", 822_849)])
def test_standard_config_size(name, count):
    """The standard configs at vocab 65: lstm ~1.09M, gru ~0.82M parameters.
    Per layer 4H(C + H) + 8H (LSTM) or 3H(C + H) + 6H (GRU), plus embedding and head."""
    mod = load(name)
    model = mod.Model(mod.Config(), dtype=numpy.float32)
    assert sum(v.size for v in model.params.values()) == count
