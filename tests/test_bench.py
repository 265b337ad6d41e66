"""bench.py as a user runs it: a tiny measurement gives every column (threads,
FLOPs, GFLOP/s, fraction of the sgemm peak), every kind of bad input ends with
one line on stderr and exit 2 with nothing written, and the FLOPs formulas
count exactly the matmul weights each model holds."""
import importlib
import json
import math
import os
import subprocess
import sys

import pytest

from models import MODELS, ROOT

sys.path.insert(0, ROOT)
import bench  # noqa: E402  (importing it parses nothing and runs nothing)


def cli(*args, cwd):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench.py"), *map(str, args)], cwd=cwd,
                         capture_output=True, text=True)
    return out.returncode, out.stdout, out.stderr


TINY = ["--no-generate", "--repeats", "1", "--warmup", "0", "--batch-size", "2", "--seq-len", "8"]


def test_tiny_run_reports_threads_flops_and_peak(tmp_path):
    rc, out, err = cli("--model", "rnn", "transformer", "--config", "d_model=16", "--json", *TINY, cwd=tmp_path)
    assert rc == 0 and not err, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["model"] for r in rows] == ["rnn", "transformer"]
    for r in rows:
        assert r["threads"] == 1 and r["sgemm_peak_gflop_s"] > 0
        cfg = importlib.import_module(r["model"]).Config(vocab_size=65, d_model=16)
        assert math.isclose(r["step_gflop"], bench.step_flops(r["model"], cfg, 2, 8) / 1e9)
        assert math.isclose(r["peak_fraction"], r["gflop_s"] / r["sgemm_peak_gflop_s"])
    rc, out, err = cli("--model", "rnn", "--config", "d_model=16", *TINY, cwd=tmp_path)
    assert rc == 0, err
    assert out.startswith("1 thread on cpu; float32 sgemm peak ") and "% of peak" in out
    assert os.listdir(tmp_path) == []


def test_ours_torch_and_the_peak_matmul_alternate():
    calls = []
    times = bench.alternate([lambda: calls.append("ours"), lambda: calls.append("torch"),
                             lambda: calls.append("sgemm")], 2, 3, lambda: None)
    assert calls == ["ours", "torch", "sgemm"] * 5
    assert [len(ts) for ts in times] == [3, 3, 3] and all(t >= 0 for ts in times for t in ts)


def test_torch_run_reports_a_ratio_for_every_kind(tmp_path):
    pytest.importorskip("torch", reason="PyTorch is not installed (optional)")
    rc, out, err = cli("--model", "gru", "--torch", "--json", "--gen-tokens", "3", *TINY[1:], cwd=tmp_path)
    assert rc == 0 and not err, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["kind"] for r in rows] == ["train", "generate"]
    for r in rows:
        assert r["torch_ms"] > 0 and math.isclose(r["ratio"], r["torch_ms"] / r["ours_ms"])


BAD = [
    ([], ["--model"]),
    (["--model", "foo"], ["invalid choice"]),
    (["--model", "rnn", "--config", "d_model=abc"], ["--config d_model=abc", "not an integer"]),
    (["--model", "rnn", "--config", "d_model=0"], ["--config d_model=0", "must be > 0"]),
    (["--model", "rnn", "--config", "nope=1"], ["has no field 'nope'"]),
    (["--model", "rnn", "--config", "d_model"], ["KEY=VALUE"]),
    (["--model", "rnn", "--config", "vocab_size=9"], ["--vocab-size"]),
    (["--model", "transformer", "--config", "dropout=1.5"], ["dropout=1.5", "must be < 1"]),
    (["--model", "transformer", "--config", "dropout=nan"], ["dropout=nan", "finite"]),
    (["--model", "transformer", "--config", "n_head=3"], ["invalid transformer configuration"]),
    (["--model", "mamba", "--config", "scan=chunked"], ["invalid mamba configuration"]),
    (["--model", "s4", "--config", "d_state=7"], ["invalid s4 configuration"]),
    (["--model", "rnn", "--config", "d_model=1000000"], ["needs about", "GiB", "available"]),
    (["--model", "rnn", "--batch-size", "100000000"], ["needs about", "GiB"]),
    (["--model", "rnn", "--threads", "0"], ["--threads", "must be >= 1"]),
    (["--model", "rnn", "--threads", "two"], ["--threads", "not an integer"]),
    (["--model", "rnn", "--seq-len", "0"], ["--seq-len", "must be >= 1"]),
    (["--model", "rnn", "--batch-size", "-1"], ["--batch-size"]),
    (["--model", "rnn", "--repeats", "x"], ["--repeats", "not an integer"]),
    (["--model", "rnn", "--warmup", "-1"], ["--warmup"]),
    (["--model", "rnn", "--gen-tokens", "0"], ["--gen-tokens", "must be >= 1"]),
    (["--model", "rnn", "--vocab-size", "0"], ["--vocab-size", "must be >= 1"]),
    (["--model", "rnn", "--dtype", "float16"], ["--dtype"]),
    (["--model", "rnn", "--device", "tpu"], ["--device"]),
    (["--model", "rnn", "--torch-option", "scan"], ["KEY=VALUE"]),
]


@pytest.mark.parametrize("args,words", BAD, ids=[" ".join(a) or "(none)" for a, _ in BAD])
def test_bad_input(args, words, tmp_path):
    rc, out, err = cli(*args, cwd=tmp_path)
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench.py: error:") and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    assert os.listdir(tmp_path) == []   # nothing written
    assert "ours" not in out            # refused before anything was timed


def test_torch_option_the_reference_refuses(tmp_path):
    pytest.importorskip("torch", reason="PyTorch is not installed (optional)")
    rc, out, err = cli("--model", "rnn", "--torch", "--torch-option", "foo=1", *TINY, cwd=tmp_path)
    assert rc == 2 and err.strip().splitlines() == [
        "bench.py: error: --torch-option foo=1: torch_ref.rnn refuses it (build() got an unexpected keyword "
        "argument 'foo')"], err


def test_unexpected_error_is_one_line_exit_1(monkeypatch, capsys):
    def broken(argv):
        raise RuntimeError("something nobody planned for")
    monkeypatch.setattr(bench, "run", broken)
    assert bench.main(["--model", "rnn"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "bench.py: unexpected error: RuntimeError: something nobody planned for (run with --debug, or "
        "SEQ_DEBUG=1, for the traceback)"]
    with pytest.raises(RuntimeError):
        bench.main(["--model", "rnn", "--debug"])


# Forward multiply-adds per token that are not weight matmuls: the attention scores,
# the selective scan, the FFT convolution and the S4D kernel.
EXTRA = {
    "rnn": lambda c, B, T: 0, "lstm": lambda c, B, T: 0, "gru": lambda c, B, T: 0,
    "transformer": lambda c, B, T: c.n_layer * 2 * T * c.d_model,
    "mamba": lambda c, B, T: c.n_layer * 3 * c.expand * c.d_model * c.d_state,
    "s4": lambda c, B, T: c.n_layer * (7.5 * math.log2(2 * T) * c.d_model + 2 * c.d_model * c.d_state / B),
    "mamba2": lambda c, B, T: c.n_layer * (c.chunk_size * c.d_state + c.chunk_size * c.expand * c.d_model
                                           + (2 + 1 / c.chunk_size) * c.expand * c.d_model * c.d_state),
}


@pytest.mark.parametrize("name", MODELS)
def test_flops_formula_counts_the_models_weights(name):
    """Every weight of a matmul or convolution is one multiply-add per token: the formula's weight
    part equals the count of those entries in .params (the tied head counts the embedding once,
    as the head; lookups, the SSM dynamics, norms and biases are not multiply-adds)."""
    assert name in bench.FLOPS, f"bench.FLOPS has no entry for {name}"
    module = importlib.import_module(name)
    cfg = module.Config(vocab_size=65)
    params = module.Model(cfg, seed=0).params
    lookups = ("embedding.weight", "transformer.wte.weight", "transformer.wpe.weight")
    weights = sum(v.size for k, v in params.items() if v.ndim >= 2 and k not in lookups
                  and k.rsplit(".", 1)[-1] not in ("A_log", "C", "log_A_real", "A_imag"))
    tied = "lm_head.weight" not in params
    head = cfg.vocab_size * cfg.d_model if tied else 0
    B, T = 16, 128
    assert bench.FLOPS[name](cfg, B, T) == pytest.approx(weights + head + EXTRA[name](cfg, B, T), rel=1e-12)
    assert bench.step_flops(name, cfg, B, T) == 6 * bench.FLOPS[name](cfg, B, T) * B * T
