"""Checks specific to transformer.py (the generic protocol tests are in test_models.py):

- gradients with dropout on, the masks held fixed across the finite differences;
- attention against a plain loop-over-heads, loop-over-rows version written here
  (a head reshape or transposition error passes a self-consistent gradient check);
- the KV cache's block_size policy (re-encode the last block_size tokens), and
  pos_emb="none" (no wpe, no limit);
- forward with T > block_size raises ValueError;
- dropout's rng: model.rng drives the masks, and restoring its state repeats them;
- nanoGPT's init and the standard config's size;
- mlp=False, the attention-only transformer: no ln_2 or MLP parameters, gradients,
  step == forward, and equality with the PyTorch reference.
"""
import math
import warnings

import numpy
import pytest

from gradcheck import check_model, perturb
from models import TINY, load, make

V = TINY["transformer"]["vocab_size"]
BS = TINY["transformer"]["block_size"]


def tokens(B, T, seed=0):
    return numpy.random.default_rng(seed).integers(0, V, (B, T))


class FixedMasks:
    """The model seen through forward(train=True), with model.rng reset to the same seed
    before every forward, so every perturbed forward pass draws the same dropout masks.
    It has what check_model uses: params, cfg, xp, forward(idx, x0=...), backward."""

    def __init__(self, model, seed=123, drop_in_backward=None):
        self.model, self.seed = model, seed
        self.params, self.cfg, self.xp = model.params, model.cfg, model.xp
        self.drop_in_backward = drop_in_backward

    def forward(self, idx, train=True, x0=None):
        self.model.rng = numpy.random.default_rng(self.seed)
        return self.model.forward(idx, train=True, x0=x0)

    def backward(self, dlogits, cache):
        if self.drop_in_backward:            # the negative control: forget one mask in backward
            layer, key = self.drop_in_backward
            c = cache["layers"][layer]
            if key == "keep_att":                # the attention weights' mask, in attention's cache
                c["attn"]["keep"] = None
            else:
                c[key] = None
        return self.model.backward(dlogits, cache)


# ---------------------------------------------------------------- dropout
def test_gradients_with_dropout():
    model = make("transformer", dropout=0.3)
    perturb(model)
    wrapped = FixedMasks(model)
    idx = tokens(2, 6)
    # dropout is really on: the masks hold zeros, and the logits differ from eval mode
    logits, cache = wrapped.forward(idx)
    assert (cache["keep0"] == 0).any() and (cache["layers"][0]["attn"]["keep"] == 0).any()
    assert numpy.abs(logits - model.forward(idx)[0]).max() > 1e-3
    failures = check_model(wrapped, idx)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("key", ["keep_att", "keep_r1", "keep_r2"])
def test_gradcheck_catches_a_forgotten_dropout_mask(key):
    """Negative control: a backward that ignores one of layer 0's masks must fail."""
    model = make("transformer", dropout=0.3)
    perturb(model)
    failures = check_model(FixedMasks(model, drop_in_backward=(0, key)), tokens(2, 6))
    assert any(f.startswith("transformer.h.0.") for f in failures), failures


def test_dropout_is_inverted_and_only_in_training():
    model = make("transformer", dropout=0.25)
    idx = tokens(4, 16)
    plain = make("transformer")                      # same seed, same params, dropout 0
    state = model.rng.bit_generator.state
    assert numpy.array_equal(model.forward(idx)[0], plain.forward(idx)[0])   # train=False: no dropout
    assert model.rng.bit_generator.state == state                            # ... and no draws
    _, cache = model.forward(idx, train=True)
    keep = cache["layers"][1]["attn"]["keep"]
    assert set(numpy.unique(keep)) == {0.0, 1 / 0.75}                        # inverted dropout
    assert abs((keep == 0).mean() - 0.25) < 0.02
    # float32 stays float32 through the masks, in forward and backward
    m32 = make("transformer", dtype="float32", dropout=0.25)
    logits, cache = m32.forward(idx, train=True)
    grads = m32.backward(numpy.ones_like(logits), cache)
    assert logits.dtype == numpy.float32 and all(g.dtype == numpy.float32 for g in grads.values())
    # dropout 0 draws nothing even in training
    st = plain.rng.bit_generator.state
    plain.forward(idx, train=True)
    assert plain.rng.bit_generator.state == st


def test_restoring_rng_state_repeats_the_masks():
    """What train.py's resume relies on: model.rng.bit_generator.state determines the masks."""
    model = make("transformer", dropout=0.2)
    idx = tokens(2, 8)
    model.forward(idx, train=True)                   # advance the generator a little
    saved = model.rng.bit_generator.state
    a = model.forward(idx, train=True)[0]
    b = model.forward(idx, train=True)[0]
    assert numpy.abs(a - b).max() > 1e-6             # fresh masks each call
    model.rng.bit_generator.state = saved
    assert numpy.array_equal(model.forward(idx, train=True)[0], a)


# ------------------------------------------------- attention, the slow clear way
def layernorm(x, w, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / numpy.sqrt(var + 1e-5) * w + b


def slow_forward(model, idx):
    """The GPT written out with loops over batch rows, heads and query positions; returns
    the logits and every layer's attention matrices P[b][h] (T, T)."""
    p, cfg = model.params, model.cfg
    B, T = idx.shape
    C, nh = cfg.d_model, cfg.n_head
    hs = C // nh
    x = p["transformer.wte.weight"][idx]
    if cfg.pos_emb == "learned":
        x = x + p["transformer.wpe.weight"][:T]
    Ps = []
    for i in range(cfg.n_layer):
        w = lambda name: p[f"transformer.h.{i}.{name}"]  # noqa: E731
        a = layernorm(x, w("ln_1.weight"), w("ln_1.bias"))
        qkv = a @ w("attn.c_attn.weight").T + w("attn.c_attn.bias")
        q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
        y = numpy.zeros((B, T, C))
        P = numpy.zeros((B, nh, T, T))
        for b in range(B):
            for h in range(nh):
                cols = slice(h * hs, (h + 1) * hs)               # head h: a contiguous slice
                for t in range(T):                               # query t sees keys 0..t
                    s = k[b, :t + 1, cols] @ q[b, t, cols] / math.sqrt(hs)
                    e = numpy.exp(s - s.max())
                    P[b, h, t, :t + 1] = e / e.sum()
                    y[b, t, cols] = P[b, h, t, :t + 1] @ v[b, :t + 1, cols]
        Ps.append(P)
        x = x + y @ w("attn.c_proj.weight").T + w("attn.c_proj.bias")
        hpre = layernorm(x, w("ln_2.weight"), w("ln_2.bias")) @ w("mlp.c_fc.weight").T + w("mlp.c_fc.bias")
        g = 0.5 * hpre * (1 + numpy.tanh(math.sqrt(2 / math.pi) * (hpre + 0.044715 * hpre ** 3)))
        x = x + g @ w("mlp.c_proj.weight").T + w("mlp.c_proj.bias")
    x = layernorm(x, p["transformer.ln_f.weight"], p["transformer.ln_f.bias"])
    return x @ p["transformer.wte.weight"].T, Ps


@pytest.mark.parametrize("pos_emb", ["learned", "none"])
def test_attention_matches_loop_over_heads(pos_emb):
    model = make("transformer", n_head=4, pos_emb=pos_emb)    # hs = 2: four heads to mix up
    perturb(model)
    idx = tokens(2, 9)
    logits, cache = model.forward(idx)
    ref, Ps = slow_forward(model, idx)
    scale = max(1.0, numpy.abs(ref).max())
    assert numpy.abs(logits - ref).max() <= 1e-12 * scale
    mod = load("transformer")
    for i, P in enumerate(Ps):
        Pi = mod.attention_weights(cache["layers"][i]["attn"])   # the causal blocks, zeros above
        assert numpy.abs(Pi - P).max() <= 1e-12, f"layer {i} attention"


def test_gelu_in_row_blocks_matches_the_formula():
    """gelu_forward runs in row blocks (cache blocking); the tiny configs fit in one block,
    so here an array of several blocks, the last one partial: g against the formula, and
    the cached g'(h) against centered differences."""
    mod = load("transformer")
    h = 3 * numpy.random.default_rng(0).standard_normal((300, 512))
    assert len(mod.row_blocks(*h.shape, numpy)) == 3

    def gelu(x):
        return 0.5 * x * (1 + numpy.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    g, dg_dh = mod.gelu_forward(h, numpy)
    assert numpy.abs(g - gelu(h)).max() <= 1e-14
    eps = 1e-6
    assert numpy.abs(dg_dh - (gelu(h + eps) - gelu(h - eps)) / (2 * eps)).max() <= 1e-8


def test_gelu_tail_in_float32_is_exact_and_silent():
    """s = 1 / (1 + e^(-2u)): far left e^(-2u) overflows to inf and g = 0, g' = 0 exactly,
    with no warning; the small negative values of the tail (where 1 + tanh u would cancel
    to 0 in float32) are right to float32 rounding."""
    mod = load("transformer")
    h = numpy.array([[-1e4, -100, -30, -9, -8, -5, -3, -1, 0, 1, 8, 30, 100, 1e4]], numpy.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g, dg_dh = mod.gelu_forward(h, numpy)
    x = h.astype(numpy.float64)
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)
    with numpy.errstate(over="ignore"):
        s = 1 / (1 + numpy.exp(-2 * u))
    want = x * s
    assert numpy.all(numpy.isfinite(g)) and numpy.all(numpy.isfinite(dg_dh))
    assert g[0, 0] == 0 and dg_dh[0, 0] == 0 and g[0, -1] == 1e4 and dg_dh[0, -1] == 1
    tail = (x > -10) & (x < 0)                 # g down to -1e-28 at -9 (the tanh form: 0 below -5.5)
    assert numpy.all(g[tail] < 0)
    assert numpy.allclose(g[tail], want[tail], rtol=1e-5, atol=0)


# --------------------------------------------------------- block_size and step
def test_forward_longer_than_block_size_raises():
    model = make("transformer")
    model.forward(tokens(1, BS))
    with pytest.raises(ValueError, match="block_size"):
        model.forward(tokens(1, BS + 1))


def test_step_past_block_size_is_forward_on_the_last_block():
    """Past block_size the context is the last block_size tokens, re-encoded at positions
    0.. (nanoGPT's generate): step's logits equal forward on that window."""
    model = make("transformer")
    perturb(model)
    T = 2 * BS + 7
    idx = tokens(2, T)
    state = model.init_state(2)
    for t in range(T):
        out, new = model.step(idx[:, t], state)
        window = idx[:, max(0, t + 1 - BS):t + 1]
        ref = model.forward(window)[0][:, -1]
        err = numpy.abs(out - ref).max()
        assert err <= 1e-10 * max(1.0, numpy.abs(ref).max()), f"t={t}: {err:.3g}"
        assert new["k"][0].shape[2] == min(t + 1, BS)       # the cache never outgrows wpe
        again, _ = model.step(idx[:, t], state)             # the old state is left unchanged
        assert numpy.array_equal(again, out)
        state = new


def test_pos_emb_none_has_no_wpe_and_no_length_limit():
    model = make("transformer", pos_emb="none")
    assert "transformer.wpe.weight" not in model.params
    perturb(model)
    T = 2 * BS + 5
    idx = tokens(2, T)
    logits = model.forward(idx)[0]                          # T > block_size is fine here
    state = model.init_state(2)
    for t in range(T):
        out, state = model.step(idx[:, t], state)
        err = numpy.abs(out - logits[:, t]).max()
        assert err <= 1e-10 * max(1.0, numpy.abs(logits).max()), f"t={t}: {err:.3g}"
    assert state["k"][0].shape[2] == T                      # the cache keeps the whole history


def test_pos_emb_none_gradients():
    model = make("transformer", pos_emb="none")
    perturb(model)
    failures = check_model(model, tokens(2, 6))
    assert not failures, "\n".join(failures)


def test_pos_emb_none_sees_no_position():
    """One token repeated: with no position information every position has the same input
    and attends over identical values, so all positions give the same logits. With
    learned positions they differ."""
    same = numpy.full((1, 6), 3)
    for pos_emb, differs in [("none", False), ("learned", True)]:
        model = make("transformer", pos_emb=pos_emb)
        perturb(model)
        logits = model.forward(same)[0]
        spread = numpy.abs(logits - logits[:, :1]).max()
        assert (spread > 1e-6) == differs, (pos_emb, spread)


# ------------------------------------------------- mlp=False: attention-only blocks
ATTN_ONLY = {"attn-only": dict(mlp=False),
             "attn-only, pos_emb none": dict(mlp=False, pos_emb="none"),
             "attn-only, dropout": dict(mlp=False, dropout=0.3)}


@pytest.mark.parametrize("overrides", ATTN_ONLY.values(), ids=ATTN_ONLY.keys())
def test_attention_only_gradients(overrides):
    model = make("transformer", **overrides)
    assert not any(".ln_2." in k or ".mlp." in k for k in model.params)
    n = sum(v.size for v in model.params.values())
    full = sum(v.size for v in make("transformer", **{**overrides, "mlp": True}).params.values())
    C = model.cfg.d_model
    assert full - n == model.cfg.n_layer * (2 * C + 4 * C * C + 4 * C + 4 * C * C + C)
    perturb(model)
    failures = check_model(FixedMasks(model) if model.cfg.dropout else model, tokens(2, 6))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("overrides", ATTN_ONLY.values(), ids=ATTN_ONLY.keys())
def test_attention_only_step_equals_forward(overrides):
    model = make("transformer", **overrides)
    perturb(model)
    idx = tokens(2, 11)
    logits = model.forward(idx)[0]
    state = model.init_state(2)
    for t in range(idx.shape[1]):
        out, state = model.step(idx[:, t], state)
        err = numpy.abs(out - logits[:, t]).max()
        assert err <= 1e-10 * max(1.0, numpy.abs(logits).max()), f"t={t}: {err:.3g}"


# ------------------------------------------------------------- init and size
def test_standard_config_size_and_init():
    mod = load("transformer")
    model = mod.Model(mod.Config(), dtype=numpy.float64, seed=0)
    n = sum(v.size for v in model.params.values())
    assert n == 818_048                                     # ~0.82M with vocab 65
    assert "lm_head.weight" not in model.params             # the head is tied to wte
    p = model.params
    assert abs(p["transformer.wte.weight"].std() - 0.02) < 0.002
    assert abs(p["transformer.h.0.mlp.c_fc.weight"].std() - 0.02) < 0.001
    assert abs(p["transformer.h.3.attn.c_proj.weight"].std() - 0.02 / math.sqrt(8)) < 0.0005
    assert abs(p["transformer.h.3.mlp.c_proj.weight"].std() - 0.02 / math.sqrt(8)) < 0.0005
    assert (p["transformer.h.0.attn.c_attn.bias"] == 0).all() and (p["transformer.ln_f.weight"] == 1).all()


# --------------------------------------------- PyTorch, the cases test_torch.py leaves out
@pytest.mark.parametrize("mlp", [True, False], ids=["mlp", "attn-only"])
def test_pytorch_pos_emb_none_and_step_past_block_size(mlp):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    import torch_ref
    for pos_emb in ["learned", "none"]:
        model = make("transformer", pos_emb=pos_emb, mlp=mlp)
        perturb(model)
        ref = torch_ref.build("transformer", model.cfg, model.params)
        idx = tokens(2, 12)
        logits, cache = model.forward(idx)
        R = numpy.random.default_rng(5).standard_normal(logits.shape)
        ref_logits = ref(torch.from_numpy(idx))
        assert numpy.abs(logits - ref_logits.detach().numpy()).max() <= 1e-12
        grads = model.backward(R, cache)
        (ref_logits * torch.from_numpy(R)).sum().backward()
        for k, v in ref.named_parameters():
            assert numpy.abs(grads[k] - v.grad.numpy()).max() <= 1e-11 * max(1.0, numpy.abs(grads[k]).max()), k
        # the reference's KV-cache generation follows the same block_size policy
        idx = tokens(2, BS + 9, seed=3)
        state, ref_state = model.init_state(2), ref.init_state(2)
        with torch.no_grad():
            for t in range(idx.shape[1]):
                out, state = model.step(idx[:, t], state)
                ref_out, ref_state = ref.step(torch.from_numpy(idx[:, t]), ref_state)
                assert numpy.abs(out - ref_out.numpy()).max() <= 1e-12, (pos_emb, t)
