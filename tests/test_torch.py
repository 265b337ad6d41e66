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


def test_torch_ref_train_runs_train_pys_recipe(tmp_path):
    """`python -m torch_ref.train` starts from the same arrays on the same windows as train.py: the
    first evaluation line is the same to the printed digits; bad input is one line, exit 2."""
    import os
    import subprocess
    import sys
    from models import ROOT
    text = tmp_path / "text.txt"
    text.write_text("".join(f"the {w} fox jumps over {i % 7} lazy dogs.\n" for i, w in
                            enumerate(["quick", "slow", "red"] * 300)))
    flags = ["--model", "gru", "--data", str(text), "--max-iters", "4", "--eval-interval", "4", "--eval-iters",
             "2", "--batch-size", "4", "--seq-len", "16", "--d-model", "16", "--log-interval", "2"]
    env = {**os.environ, "PYTHONPATH": ROOT}

    def run(*cmd):
        out = subprocess.run([sys.executable, *cmd], cwd=tmp_path, capture_output=True, text=True, env=env)
        return out.returncode, out.stdout, out.stderr

    rc, theirs, err = run("-m", "torch_ref.train", *flags)
    assert rc == 0, err
    rc, ours, err = run(os.path.join(ROOT, "train.py"), *flags, "--sample-tokens", "0", "--out-dir", "o")
    assert rc == 0, err
    step0 = [[line for line in out.splitlines() if line.startswith("step 0:")] for out in (theirs, ours)]
    assert step0[0] == step0[1] and len(step0[0]) == 1, step0
    assert "done: 4 iterations" in theirs
    rc, out, err = run("-m", "torch_ref.train", *flags, "--lr", "nan")
    assert rc == 2 and err.strip().splitlines() == ["torch_ref.train: error: argument --lr: must be a finite "
                                                    "number, got nan"], err
