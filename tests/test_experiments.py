"""experiments.py: the synthetic tasks are what they claim to be, the state counter
counts what it should, and every subcommand runs end to end in --quick mode,
writing its CSV (and its PNG when matplotlib is installed), with bad input ending
in one line on stderr and exit status 2."""
import csv
import importlib.util
import os
import subprocess
import sys

import numpy
import pytest

from models import ROOT

sys.path.insert(0, ROOT)
import experiments  # noqa: E402

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None


# ------------------------------------------------------------------------- MQAR
@pytest.mark.parametrize("pairs", [1, 4, [2, 4, 8]])
def test_mqar_every_answer_appeared_earlier_as_that_keys_value(pairs):
    n_keys = 16
    x, y, mask = experiments.mqar(numpy.random.default_rng(3), 32, 40, pairs, n_keys, n_keys)
    assert x.shape == y.shape == mask.shape == (32, 40)
    assert x.dtype == y.dtype == numpy.int64 and mask.dtype == bool
    allowed = {pairs} if isinstance(pairs, int) else set(pairs)
    seen = set()
    for row_x, row_y, row_m in zip(x, y, mask):
        K = int(row_m.sum())
        assert K in allowed
        seen.add(K)
        keys, values = row_x[0:2 * K:2], row_x[1:2 * K:2]
        # the pairs: keys from the key range, values from the value range, each distinct
        assert ((1 <= keys) & (keys <= n_keys)).all() and len(set(keys)) == K
        assert ((n_keys < values) & (values <= 2 * n_keys)).all() and len(set(values)) == K
        # every query lies after the pairs, asks a key, and its answer is that key's value
        where = numpy.flatnonzero(row_m)
        assert where.min() >= 2 * K
        for p in where:
            earlier = numpy.flatnonzero(row_x[:p] == row_x[p])
            assert len(earlier) == 1 and earlier[0] < 2 * K and earlier[0] % 2 == 0
            assert row_y[p] == row_x[earlier[0] + 1]
        assert sorted(row_x[where]) == sorted(keys)          # every key is asked exactly once
        rest = numpy.ones(40, bool)
        rest[:2 * K] = False
        rest[where] = False
        assert (row_x[rest] == 0).all()                        # the filler everywhere else
    if not isinstance(pairs, int):
        assert seen == allowed                                 # the mixture draws every K


def test_mqar_is_deterministic_with_a_seed():
    a = experiments.mqar(numpy.random.default_rng(5), 8, 32, [2, 4], 8, 8)
    b = experiments.mqar(numpy.random.default_rng(5), 8, 32, [2, 4], 8, 8)
    c = experiments.mqar(numpy.random.default_rng(6), 8, 32, [2, 4], 8, 8)
    assert all((u == v).all() for u, v in zip(a, b))
    assert not (a[0] == c[0]).all()


def test_mqar_rejects_what_does_not_fit():
    with pytest.raises(ValueError):
        experiments.mqar(numpy.random.default_rng(0), 2, 12, 5, 8, 8)   # 3K > T
    with pytest.raises(ValueError):
        experiments.mqar(numpy.random.default_rng(0), 2, 64, 9, 8, 8)   # K > keys


# ----------------------------------------------------------------- selective copy
@pytest.mark.parametrize("selective", [True, False])
def test_copy_targets_are_the_content_tokens_in_order(selective):
    region, n, content = 30, 6, 5
    x, y, mask = experiments.selective_copy(numpy.random.default_rng(1), 16, region, n, content, selective)
    assert x.shape == y.shape == mask.shape == (16, region + n)
    assert (mask[:, region:]).all() and not mask[:, :region].any()
    assert (x[:, region] == experiments.COPY_MARKER).all()
    assert (x[:, region + 1:] == experiments.COPY_BLANK).all()
    for row_x, row_y, row_m in zip(x, y, mask):
        body = row_x[:region]
        is_content = body >= 2
        assert is_content.sum() == n and (body[~is_content] == experiments.COPY_BLANK).all()
        assert ((2 <= body[is_content]) & (body[is_content] < 2 + content)).all()
        assert list(row_y[row_m]) == list(body[is_content])      # exactly the content, in order
        if not selective:
            assert is_content[:n].all()                          # plain copying: at the start


def test_copy_scatters_and_is_deterministic():
    a = experiments.selective_copy(numpy.random.default_rng(2), 64, 40, 4, 8)
    b = experiments.selective_copy(numpy.random.default_rng(2), 64, 40, 4, 8)
    assert all((u == v).all() for u, v in zip(a, b))
    first = [int(numpy.flatnonzero(r[:40] >= 2)[0]) for r in a[0]]
    assert len(set(first)) > 5                                   # positions vary from row to row


# ----------------------------------------------------------------- state bytes
def test_state_bytes_fixed_for_rnn_and_linear_for_kv_cache():
    rnn = experiments.make_model("rnn", 9, d_model=8, n_layer=2)
    assert experiments.state_bytes_after(rnn, 5, 9) == experiments.state_bytes_after(rnn, 20, 9) == 2 * 8 * 4
    gpt = experiments.make_model("transformer", 9, d_model=8, n_layer=2, n_head=2, block_size=32)
    b10, b20 = (experiments.state_bytes_after(gpt, n, 9) for n in (10, 20))
    assert b10 == 2 * 2 * 8 * 10 * 4 and b20 == 2 * b10           # K and V, per layer, per token
    s4 = experiments.make_model("s4", 9, d_model=8, n_layer=2, d_state=8)
    assert experiments.state_bytes_after(s4, 7, 9) == 2 * 8 * 4 * 8   # complex64 (H, N/2) per layer, no consts


def test_masked_cross_entropy_is_zero_off_the_mask():
    logits = numpy.random.default_rng(0).standard_normal((2, 5, 4)).astype(numpy.float32)
    y = numpy.zeros((2, 5), numpy.int64)
    mask = numpy.zeros((2, 5), bool)
    mask[0, 3] = mask[1, 1] = True
    loss, d = experiments.masked_cross_entropy(logits, y, mask)
    assert (d[~mask] == 0).all() and numpy.allclose(d[mask].sum(-1), 0, atol=1e-6)


# ------------------------------------------------------------------ end to end
def run(*args, cwd):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "experiments.py"), *map(str, args)], cwd=cwd,
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out.returncode, out.stdout, out.stderr


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


EXPECT = {
    "recall": ("recall.csv", ["recall.png"], {"model", "state_bytes", "n_pairs", "accuracy"}),
    "copy": ("copy.csv", ["copy.png"], {"model", "task", "token_accuracy"}),
    "cost": ("cost.csv", ["cost.png"], {"model", "N", "train_step_ms", "generate_ms_per_token", "state_bytes"}),
    "length": ("length.csv", ["length.png"], {"model", "pos_start", "pos_end", "mean_loss"}),
    "gradients": ("gradients.csv", ["gradients.png"], {"model", "phase", "k", "grad_norm"}),
}


@pytest.mark.parametrize("command", list(EXPECT))
def test_quick_run_writes_csv(command, tmp_path):
    rc, out, err = run(command, "--quick", "--out-dir", tmp_path / "res", cwd=tmp_path)
    assert rc == 0, err
    assert "done:" in out
    name, pngs, columns = EXPECT[command]
    rows = read_csv(tmp_path / "res" / name)
    assert rows and columns <= set(rows[0])
    models = {r["model"] for r in rows}
    assert set(experiments.MODELS) <= models, models              # all six, every time
    for png in pngs:
        path = tmp_path / "res" / png
        if HAVE_MPL:
            assert path.exists() and path.stat().st_size < 100_000
        else:
            assert not path.exists() and "matplotlib is not installed" in out


def test_quick_outputs_make_sense(tmp_path):
    """Spot checks on the numbers a quick run writes: the KV cache grows, the RNN state does not."""
    rc, out, err = run("cost", "--quick", "--models", "rnn,transformer", "--out-dir", tmp_path, cwd=tmp_path)
    assert rc == 0, err
    rows = read_csv(tmp_path / "cost.csv")
    kv = {int(r["N"]): int(r["state_bytes"]) for r in rows if r["model"] == "transformer"}
    h = {int(r["N"]): int(r["state_bytes"]) for r in rows if r["model"] == "rnn"}
    Ns = sorted(kv)
    assert kv[Ns[-1]] == kv[Ns[0]] * Ns[-1] // Ns[0] and h[Ns[0]] == h[Ns[-1]]
    slopes = read_csv(tmp_path / "cost_slopes.csv")
    assert {r["model"] for r in slopes} == {"rnn", "transformer"}


def test_length_reports_what_learned_positions_cannot_do(tmp_path):
    rc, out, err = run("length", "--quick", "--models", "transformer", "--out-dir", tmp_path, cwd=tmp_path)
    assert rc == 0, err
    rows = read_csv(tmp_path / "length.csv")
    learned = [r for r in rows if r["model"] == "transformer"]
    assert learned[0]["mean_loss"] and not learned[-1]["mean_loss"]      # nothing past block_size
    assert "exceeds block_size" in out
    assert all(r["mean_loss"] for r in rows if r["model"] in ("transformer-nopos", "transformer-window"))


def test_help(tmp_path):
    rc, out, err = run("--help", cwd=tmp_path)
    assert rc == 0 and all(c in out for c in EXPECT)
    rc, out, err = run("recall", "--help", cwd=tmp_path)
    assert rc == 0 and "--pairs" in out and "--quick" in out


@pytest.mark.parametrize("args", [
    [],                                                  # no subcommand
    ["nonsense"],
    ["recall", "--models", "rnn,foo"],
    ["recall", "--pairs", "0"],
    ["recall", "--pairs", "two"],
    ["recall", "--seq-len", "12", "--pairs", "8"],       # 3 x 8 > 12
    ["copy", "--region", "4", "--tokens", "8"],
    ["cost", "--lengths", "-5"],
    ["length", "--data", "/nonexistent/file.txt", "--quick"],
    ["length", "--factor", "1"],
    ["gradients", "--iters", "0"],
    ["recall", "--bogus-flag"],
])
def test_bad_input_exits_2_with_one_line(args, tmp_path):
    rc, out, err = run(*args, "--out-dir", tmp_path / "res", cwd=tmp_path) if args else run(cwd=tmp_path)
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("experiments.py: error:"), err
    assert "Traceback" not in err
