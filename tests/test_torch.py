"""Each model against its PyTorch reference (torch_ref/<model>.py) loaded with
the same arrays, in float64: logits, and every gradient of sum(logits * R).
Skips, with the reason, where PyTorch is not installed."""
import numpy
import pytest

from gradcheck import perturb
from models import MODELS, TINY, make

torch = pytest.importorskip("torch", reason="PyTorch is not installed (optional: pip install torch==2.13.0)")
import torch_ref  # noqa: E402

RTOL, ATOL = 1e-9, 1e-11  # float64 on both sides: agreement is ~1e-14 when the math is the same


def compare(name, ours, ref):
    ref = ref.detach().numpy()
    scale = max(1.0, numpy.abs(ref).max())
    err = numpy.abs(ours - ref).max()
    assert err <= ATOL * scale + RTOL * scale, f"{name}: max |ours - torch| {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("name", MODELS)
def test_matches_pytorch(name):
    model = make(name)
    perturb(model)
    B, T, V = 2, 7, TINY[name]["vocab_size"]
    rng = numpy.random.default_rng(0)
    idx = rng.integers(0, V, (B, T))
    R = rng.standard_normal((B, T, V))
    ref = torch_ref.build(name, model.cfg, model.params)

    logits, cache = model.forward(idx)
    ref_logits = ref(torch.from_numpy(idx))
    compare("logits", logits, ref_logits)

    grads = model.backward(R, cache)
    (ref_logits * torch.from_numpy(R)).sum().backward()
    ref_grads = dict(ref.named_parameters())
    assert sorted(grads) == sorted(ref_grads)
    for k in grads:
        compare(k, grads[k], ref_grads[k].grad)


@pytest.mark.parametrize("name", MODELS)
def test_reference_step_matches_its_forward(name):
    """The torch side of bench.py's generation benchmark computes the same thing."""
    model = make(name)
    ref = torch_ref.build(name, model.cfg, model.params)
    idx = torch.from_numpy(numpy.random.default_rng(0).integers(0, model.cfg.vocab_size, (2, 8)))
    with torch.no_grad():
        full = ref(idx)
        state = ref.init_state(2)
        for t in range(8):
            out, state = ref.step(idx[:, t], state)
            compare(f"step {t}", out.numpy(), full[:, t])
