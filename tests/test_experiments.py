"""The experiments package: the synthetic tasks are what they claim to be, the state
counter counts what it should, the masked loss trains through train.train_step, the
curriculum feeds what it says, every subcommand runs end to end in --quick mode
(through `python -m experiments`), and every bad input ends in one line on stderr,
exit status 2, with nothing written."""
import csv
import importlib.util
import os
import subprocess
import sys

import numpy
import pytest

from models import ROOT

sys.path.insert(0, ROOT)
import train  # noqa: E402
from experiments import MODULES, common, copying, induction, recall  # noqa: E402

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None


# ------------------------------------------------------------------------- MQAR
@pytest.mark.parametrize("pairs", [1, 4, [2, 4, 8]])
def test_mqar_every_answer_appeared_earlier_as_that_keys_value(pairs):
    n_keys = 16
    x, y, mask = recall.mqar(numpy.random.default_rng(3), 32, 40, pairs, n_keys, n_keys)
    assert x.shape == y.shape == mask.shape == (32, 40)
    assert x.dtype == y.dtype == numpy.int64 and mask.dtype == bool
    allowed = {pairs} if isinstance(pairs, int) else set(pairs)
    seen = set()
    for row_x, row_y, row_m in zip(x, y, mask):
        K = int(row_m.sum())
        assert K in allowed
        seen.add(K)
        keys, values = row_x[0:2 * K:2], row_x[1:2 * K:2]
        assert ((1 <= keys) & (keys <= n_keys)).all() and len(set(keys)) == K
        assert ((n_keys < values) & (values <= 2 * n_keys)).all() and len(set(values)) == K
        where = numpy.flatnonzero(row_m)
        assert where.min() >= 2 * K
        for p in where:                                        # the answer is that key's value
            earlier = numpy.flatnonzero(row_x[:p] == row_x[p])
            assert len(earlier) == 1 and earlier[0] < 2 * K and earlier[0] % 2 == 0
            assert row_y[p] == row_x[earlier[0] + 1]
        assert sorted(row_x[where]) == sorted(keys)            # every key is asked exactly once
        rest = numpy.ones(40, bool)
        rest[:2 * K] = False
        rest[where] = False
        assert (row_x[rest] == 0).all()                        # the filler everywhere else
    if not isinstance(pairs, int):
        assert seen == allowed                                 # the mixture draws every K


def test_mqar_anywhere_puts_the_block_of_pairs_at_random_places_and_queries_after_it():
    n_keys, T = 16, 40
    x, y, mask = recall.mqar(numpy.random.default_rng(4), 64, T, [2, 5], n_keys, n_keys, place="anywhere")
    starts = set()
    for row_x, row_y, row_m in zip(x, y, mask):
        K = int(row_m.sum())
        o = int(numpy.flatnonzero(row_x)[0])                     # the first key
        starts.add(o)
        assert 0 <= o <= T - 3 * K
        keys, values = row_x[o:o + 2 * K:2], row_x[o + 1:o + 2 * K:2]
        assert ((1 <= keys) & (keys <= n_keys)).all() and ((n_keys < values) & (values <= 2 * n_keys)).all()
        where = numpy.flatnonzero(row_m)
        assert where.min() >= o + 2 * K and sorted(row_x[where]) == sorted(keys)
        for p in where:
            assert row_y[p] == row_x[o + 1 + 2 * int(numpy.flatnonzero(keys == row_x[p])[0])]
    assert len(starts) > 10                                      # not always the same place


def test_weighted_mixture_draws_each_K_in_proportion_to_K(monkeypatch):
    """--mixture weighted: the second stage draws K with probability K / sum(K)."""
    a, _ = common.parse(["recall", "--quick", "--iters", "2", "--stage1-iters", "1", "--seq-len", "30",
                         "--pairs", "2,8", "--n-keys", "8", "--batch", "2000", "--models", "gru"], MODULES)
    seen = {}

    def fake_fit(model, stages, lr, label, probe=None, probe_every=0, weight_decay=None):
        seen["mask"] = numpy.concatenate([stages[1][1]()[2] for _ in range(10)])   # 20,000 rows
        return dict(loss=0.0, seconds=0.0, diverged=False, curve=[])
    monkeypatch.setattr(common, "fit", fake_fit)
    recall.train_one(recall.build("gru", a, 0), a, 0, 1e-3, "test")
    Ks = seen["mask"].sum(1)
    for K in range(2, 9):
        assert abs((Ks == K).mean() - K / 35) < 0.01           # 35 = 2 + 3 + ... + 8; 20000 rows: sd 0.003


def test_mqar_is_deterministic_and_rejects_what_does_not_fit():
    a = recall.mqar(numpy.random.default_rng(5), 8, 32, [2, 4], 8, 8)
    b = recall.mqar(numpy.random.default_rng(5), 8, 32, [2, 4], 8, 8)
    c = recall.mqar(numpy.random.default_rng(6), 8, 32, [2, 4], 8, 8)
    assert all((u == v).all() for u, v in zip(a, b)) and not (a[0] == c[0]).all()
    with pytest.raises(ValueError):
        recall.mqar(numpy.random.default_rng(0), 2, 12, 5, 8, 8)    # 3K > T
    with pytest.raises(ValueError):
        recall.mqar(numpy.random.default_rng(0), 2, 64, 9, 8, 8)    # K > keys


def test_curriculum_feeds_short_rows_first_then_the_full_mixture(monkeypatch, tmp_path):
    """train_one hands fit two stages: stage 1 at --stage1-len with --stage1-pairs, then
    --seq-len with every K from min to max of --pairs."""
    a, _ = common.parse(["recall", "--quick", "--iters", "40", "--stage1-iters", "15", "--stage1-len", "12",
                         "--stage1-pairs", "2,3", "--seq-len", "30", "--pairs", "2,5", "--n-keys", "8",
                         "--batch", "64", "--models", "gru"], MODULES)
    seen = {}

    def fake_fit(model, stages, lr, label, probe=None, probe_every=0, weight_decay=None):
        seen["stages"] = [(n, sample()) for n, sample in stages]
        return dict(loss=0.0, seconds=0.0, diverged=False, curve=[])
    monkeypatch.setattr(common, "fit", fake_fit)
    recall.train_one(recall.build("gru", a, 0), a, 0, 1e-3, "test")
    (n1, (x1, _, m1)), (n2, (x2, _, m2)) = seen["stages"]
    assert (n1, n2) == (15, 25)
    assert x1.shape == (64, 12) and set(m1.sum(1)) <= {2, 3}
    assert x2.shape == (64, 30) and set(m2.sum(1)) == {2, 3, 4, 5}


# ----------------------------------------------------------------- selective copy
def test_copy_curriculum_trains_the_short_region_first(monkeypatch, tmp_path):
    """--stage1-iters N --stage1-region R: fit gets N iterations at R positions, then the rest at --region."""
    a, _ = common.parse(["copy", "--quick", "--iters", "20", "--stage1-iters", "8", "--stage1-region", "10",
                         "--region", "30", "--tokens", "4", "--models", "s4", "--control", "none",
                         "--out-dir", str(tmp_path)], MODULES)
    seen = []

    def fake_fit(model, stages, lr, label, probe=None, probe_every=0, weight_decay=None):
        seen.append([(n, sample()) for n, sample in stages])
        return dict(loss=0.0, seconds=0.0, diverged=False, curve=[])
    monkeypatch.setattr(common, "fit", fake_fit)
    copying.run(a)
    [((n1, (x1, _, m1)), (n2, (x2, _, m2)))] = seen
    assert (n1, n2) == (8, 12)
    assert x1.shape[1] == 10 + 4 and x2.shape[1] == 30 + 4
    assert (m1.sum(1) == 4).all() and (m2.sum(1) == 4).all()


@pytest.mark.parametrize("selective", [True, False])
def test_copy_targets_are_the_content_tokens_in_order(selective):
    region, n, content = 30, 6, 5
    x, y, mask = copying.selective_copy(numpy.random.default_rng(1), 16, region, n, content, selective)
    assert x.shape == y.shape == mask.shape == (16, region + n)
    assert (mask[:, region:]).all() and not mask[:, :region].any()
    assert (x[:, region] == copying.COPY_MARKER).all()
    assert (x[:, region + 1:] == copying.COPY_BLANK).all()
    for row_x, row_y, row_m in zip(x, y, mask):
        body = row_x[:region]
        is_content = body >= 2
        assert is_content.sum() == n and (body[~is_content] == copying.COPY_BLANK).all()
        assert ((2 <= body[is_content]) & (body[is_content] < 2 + content)).all()
        assert list(row_y[row_m]) == list(body[is_content])      # exactly the content, in order
        if not selective:
            assert is_content[:n].all()                          # plain copying: at the start
    first = [int(numpy.flatnonzero(r[:region] >= 2)[0]) for r in x]
    assert (len(set(first)) > 3) == selective                    # scattered only when selective


# ------------------------------------------------------------------ induction
def test_induction_target_is_the_symbol_after_the_first_special_token():
    x, y, mask = induction.induction(numpy.random.default_rng(4), 64, 20, 6)
    assert x.shape == (64, 20) and (mask.sum(1) == 1).all() and mask[:, -1].all()
    for row_x, row_y in zip(x, y):
        special = numpy.flatnonzero(row_x == induction.SPECIAL)
        assert len(special) == 2 and special[1] == 19 and special[0] <= 17
        assert row_y[-1] == row_x[special[0] + 1] and 1 <= row_y[-1] <= 6
    assert len({int(numpy.flatnonzero(r == 0)[0]) for r in x}) > 5


@pytest.mark.parametrize("first, last", [(0, 9), (40, 61), (61, 61)])
def test_induction_places_the_pair_where_asked(first, last):
    x, y, mask = induction.induction(numpy.random.default_rng(5), 256, 64, 6, first, last)
    p = numpy.array([numpy.flatnonzero(r == induction.SPECIAL)[0] for r in x])
    assert set(p) == set(range(first, last + 1))          # every allowed place, and only those
    assert (y[numpy.arange(256), -1] == x[numpy.arange(256), p + 1]).all() and mask[:, -1].all()
    with pytest.raises(ValueError):
        induction.induction(numpy.random.default_rng(5), 4, 64, 6, 10, 62)   # the target would be the query


# ----------------------------------------------------------------- state bytes
def test_state_bytes_fixed_for_rnn_and_linear_for_kv_cache():
    rnn = common.make_model("rnn", 9, d_model=8, n_layer=2)
    assert common.state_bytes_after(rnn, 5, 9) == common.state_bytes_after(rnn, 20, 9) == 2 * 8 * 4
    gpt = common.make_model("transformer", 9, d_model=8, n_layer=2, n_head=2, block_size=32)
    b10, b20 = (common.state_bytes_after(gpt, n, 9) for n in (10, 20))
    assert b10 == 2 * 2 * 8 * 10 * 4 and b20 == 2 * b10           # K and V, per layer, per token
    s4 = common.make_model("s4", 9, d_model=8, n_layer=2, d_state=8)
    assert common.state_bytes_after(s4, 7, 9) == 2 * 8 * 4 * 8   # complex64 (H, N/2) per layer, no consts


# ----------------------------------------------------------------- masked loss
def test_masked_step_is_the_mean_over_the_mask_and_zero_elsewhere():
    """train.train_step through common.Masked: the loss is the mean cross-entropy over the
    masked positions only, and its gradient equals the hand-made masked one."""
    rng = numpy.random.default_rng(0)
    model = common.make_model("gru", 7, d_model=8, n_layer=1, dtype=numpy.float64)
    x, y = rng.integers(0, 7, (3, 6)), rng.integers(0, 7, (3, 6))
    mask = rng.random((3, 6)) < 0.4
    mask[0, 0] = True
    logits, cache = model.forward(x)
    want = common.token_losses(logits, y)[mask].mean()
    loss, d = common.masked_cross_entropy(logits, y, mask)
    assert abs(float(loss) - want) < 1e-12 and (d[~mask] == 0).all()
    masked = common.Masked(model, mask)
    ml, mcache = masked.forward(x)
    loss2, d2 = train.cross_entropy(ml, y[mask][None])
    assert abs(float(loss2) - want) < 1e-12
    g_ref, g = model.backward(d, cache), masked.backward(d2, mcache)
    assert all(numpy.allclose(g[k], g_ref[k], atol=1e-12) for k in g_ref)
    assert any(numpy.abs(g[k]).max() > 0 for k in g)


# ------------------------------------------------------------------ end to end
def run(*args, cwd, env=None):
    out = subprocess.run([sys.executable, "-m", "experiments", *map(str, args)], cwd=cwd, capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, **(env or {})})
    return out.returncode, out.stdout, out.stderr


def test_the_package_imports_from_a_plain_script():
    # `import experiments` in a fresh interpreter, outside `python -m` (whose runpy would
    # have imported importlib.util already): a script that reuses its generators
    out = subprocess.run([sys.executable, "-c", "import experiments; print(len(experiments.common.MODELS))"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == len(common.MODELS)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


EXPECT = {
    "recall": ("recall.csv", {"model", "seed", "lr", "state_bytes", "n_pairs", "accuracy"}),
    "capacity": ("capacity.csv", {"model", "setting", "state_bytes"}),
    "copy": ("copy.csv", {"model", "task", "token_accuracy"}),
    "induction": ("induction.csv", {"model", "length", "factor", "accuracy", "note"}),
    "cost": ("cost.csv", {"model", "N", "train_step_ms", "generate_ms_per_token", "state_bytes"}),
    "length": ("length.csv", {"model", "pos_start", "pos_end", "mean_loss"}),
    "gradients": ("gradients.csv", {"model", "phase", "k", "grad_norm"}),
}


@pytest.mark.parametrize("command", list(EXPECT))
def test_quick_run_writes_csv(command, tmp_path):
    rc, out, err = run(command, "--quick", "--out-dir", tmp_path / "res", cwd=tmp_path)
    assert rc == 0, err
    assert "done:" in out
    name, columns = EXPECT[command]
    rows = read_csv(tmp_path / "res" / name)
    assert rows and columns <= set(rows[0])
    assert set(common.MODELS) <= {r["model"] for r in rows}        # every model, every time
    png = tmp_path / "res" / name.replace(".csv", ".png")
    assert (png.exists() and png.stat().st_size < 100_000) if HAVE_MPL else not png.exists()


def test_capacity_state_grows_with_width_and_induction_marks_what_cannot_run(tmp_path):
    rc, out, err = run("capacity", "--quick", "--models", "gru,s4,transformer", "--out-dir", tmp_path, cwd=tmp_path)
    assert rc == 0, err
    rows = read_csv(tmp_path / "capacity.csv")
    for name in ("gru", "s4"):
        sizes = [int(r["state_bytes"]) for r in rows if r["model"] == name]
        assert len(sizes) == 2 and sizes[1] > sizes[0]
    rc, out, err = run("induction", "--quick", "--models", "mamba,transformer", "--out-dir", tmp_path, cwd=tmp_path)
    assert rc == 0, err
    rows = read_csv(tmp_path / "induction.csv")
    learned = {int(r["factor"]): r for r in rows if r["model"] == "transformer"}
    assert learned[1]["accuracy"] and not learned[4]["accuracy"] and "block_size" in learned[4]["note"]
    assert all(r["accuracy"] for r in rows if r["model"] in ("mamba", "transformer-nopos"))
    # past the training length (16 in --quick: 32 and 64), near and far for each model that runs there
    placed = read_csv(tmp_path / "induction_distance.csv")
    assert {(r["model"], r["length"], r["pair"]) for r in placed} == {
        (m, L, w) for m in ("mamba", "transformer-nopos") for L in ("32", "64") for w in ("near", "far")}


def test_capacity_widths_replace_the_default_widths(tmp_path):
    rc, out, err = run("capacity", "--quick", "--models", "lstm", "--widths", "8,12", "--out-dir", tmp_path,
                       cwd=tmp_path)
    assert rc == 0, err
    rows = read_csv(tmp_path / "capacity.csv")
    assert [r["setting"] for r in rows] == ["d_model=8", "d_model=12"]
    assert [int(r["state_bytes"]) for r in rows] == [2 * 2 * 8 * 4, 2 * 2 * 12 * 4]   # 2 layers x (h, c)


@pytest.mark.skipif(not HAVE_MPL, reason="needs matplotlib (optional) to draw")
def test_capacity_plot_draws_a_variant_run_dashed_in_its_models_colour(tmp_path, monkeypatch):
    from experiments import capacity
    drawn = []
    monkeypatch.setattr(common, "save_png", lambda fig, plt, path: drawn.extend(fig.axes[0].get_lines()))
    rows = [["s4", "d_state=16", 1, 100, 0.1], ["s4", "d_state=64", 1, 400, 0.1],
            ["s4, 16000 iterations", "d_state=16", 1, 100, 0.1], ["s4, 16000 iterations", "d_state=64", 1, 400, 0.6],
            ["transformer", "kv cache", 1, 900, 1.0]]
    capacity.plot(rows, 16, 64, str(tmp_path))
    lines = {ln.get_label(): ln for ln in drawn}
    assert lines["s4"].get_linestyle() == "-" and lines["s4, 16000 iterations"].get_linestyle() == "--"
    assert lines["s4"].get_color() == lines["s4, 16000 iterations"].get_color() == common.COLORS["s4"]
    assert list(lines["s4, 16000 iterations"].get_ydata()) == [0.1, 0.6]


def test_sweep_keeps_the_rate_with_the_best_validation_accuracy(tmp_path):
    rc, out, err = run("recall", "--quick", "--models", "gru,transformer", "--sweep-lr", "1e-3,1e-2",
                       "--seeds", "0,1", "--out-dir", tmp_path, cwd=tmp_path)
    assert rc == 0, err
    sweep = read_csv(tmp_path / "recall_sweep.csv")
    rows = read_csv(tmp_path / "recall.csv")
    for name in ("gru", "transformer"):
        s = [r for r in sweep if r["model"] == name]
        assert sorted(float(r["lr"]) for r in s) == [1e-3, 1e-2]
        best = max(s, key=lambda r: float(r["mean_val_accuracy"]))    # ties: the first, as the sweep
        assert {float(r["lr"]) for r in rows if r["model"] == name} == {float(best["lr"])}
        assert {r["seed"] for r in rows if r["model"] == name} == {"0", "1"}
    assert "learning-rate sweep" in out


def test_quick_cost_kv_cache_grows_and_rnn_state_does_not(tmp_path):
    rc, out, err = run("cost", "--quick", "--models", "rnn,transformer", "--out-dir", tmp_path, cwd=tmp_path)
    assert rc == 0, err
    rows = read_csv(tmp_path / "cost.csv")
    kv = {int(r["N"]): int(r["state_bytes"]) for r in rows if r["model"] == "transformer"}
    h = {int(r["N"]): int(r["state_bytes"]) for r in rows if r["model"] == "rnn"}
    Ns = sorted(kv)
    assert kv[Ns[-1]] == kv[Ns[0]] * Ns[-1] // Ns[0] and h[Ns[0]] == h[Ns[-1]]


def test_help(tmp_path):
    rc, out, err = run("--help", cwd=tmp_path)
    assert rc == 0 and all(c in out for c in EXPECT)
    rc, out, err = run("recall", "--help", cwd=tmp_path)
    assert rc == 0 and "--sweep-lr" in out and "--stage1-iters" in out and "--quick" in out


# ------------------------------------------------------------------ bad input
def bad_inputs(tmp):
    """(argv, what it tests): every bad input known, each must exit 2 in one line, writing nothing."""
    (tmp / "data").mkdir()
    empty, short, binary, a_file = (tmp / "data" / n for n in ("empty.txt", "short.txt", "bin.txt", "file"))
    empty.write_text("")
    short.write_text("to be or not to be " * 3)
    binary.write_bytes(b"abc\x00def" * 100)
    a_file.write_text("keep me")
    return [
        ([], "no subcommand"),
        (["nonsense"], "unknown subcommand"),
        (["recall", "--bogus-flag"], "unknown flag"),
        (["recall", "--models", "rnn,foo"], "unknown model"),
        (["recall", "--models", ","], "empty model list"),
        (["recall", "--pairs", "0"], "zero pairs"),
        (["recall", "--pairs", "two"], "pairs not integers"),
        (["recall", "--seq-len", "12", "--pairs", "8"], "3 x pairs > seq-len"),
        (["recall", "--n-keys", "4"], "more pairs than keys"),
        (["recall", "--stage1-len", "6", "--stage1-pairs", "4"], "stage 1 pairs do not fit"),
        (["recall", "--stage1-iters", "5000"], "stage 1 longer than the run"),
        (["recall", "--lr", "nan"], "NaN learning rate"),
        (["recall", "--lr", "inf"], "infinite learning rate"),
        (["recall", "--lr", "-1e-3"], "negative learning rate"),
        (["recall", "--sweep-lr", "0,1e-3"], "zero rate in the sweep"),
        (["recall", "--sweep-lr", "fast"], "sweep not numbers"),
        (["recall", "--seeds", "-5"], "negative seed"),
        (["recall", "--seeds", "a,b"], "seeds not integers"),
        (["recall", "--transformer", "rope"], "unknown transformer variant"),
        (["recall", "--mixture", "zipf"], "unknown mixture"),
        (["recall", "--place", "middle"], "unknown place of the pairs"),
        (["capacity", "--mixture", "x"], "capacity: unknown mixture"),
        (["recall", "--batch", "100000000000"], "batch whose memory cannot fit"),
        (["recall", "--iters", "2.5"], "fractional iterations"),
        (["capacity", "--seed", "x"], "seed not an integer"),
        (["capacity", "--pairs", "40"], "capacity: pairs do not fit"),
        (["copy", "--region", "4", "--tokens", "8"], "more tokens than positions"),
        (["copy", "--control", "foo"], "unknown control model"),
        (["copy", "--content", "0"], "no content symbols"),
        (["copy", "--stage1-iters", "10", "--stage1-region", "4"], "copy stage 1 shorter than the tokens"),
        (["copy", "--region", "32"], "copy region below the first stage's"),
        (["copy", "--stage1-iters", "2500"], "copy stage 1 as long as the run"),
        (["capacity", "--models", "transformer", "--widths", "8"], "widths with no fixed-state model"),
        (["capacity", "--widths", "0"], "zero width"),
        (["capacity", "--models", "s4", "--widths", "15"], "a width the model refuses (odd d_state)"),
        (["capacity", "--models", "lstm", "--widths", "1000000"], "a width whose memory cannot fit"),
        (["induction", "--seq-len", "2"], "induction too short"),
        (["induction", "--factors", "0"], "zero factor"),
        (["induction", "--seq-len", "1000000", "--factors", "64"], "evaluation that cannot fit"),
        (["induction", "--transformer", "big"], "unknown transformer variant"),
        (["induction", "--stage1-len", "2"], "induction stage 1 too short"),
        (["cost", "--lengths", "-5"], "negative length"),
        (["cost", "--lengths", "10000000"], "length whose memory cannot fit"),
        (["cost", "--max-seconds", "nan"], "NaN seconds"),
        (["length", "--data", str(tmp / "missing.txt")], "missing data file"),
        (["length", "--data", str(tmp / "data")], "a folder as data"),
        (["length", "--data", "/dev/null"], "a device as data"),
        (["length", "--data", str(empty)], "empty data"),
        (["length", "--data", str(binary)], "binary data"),
        (["length", "--data", str(short)], "data too short"),
        (["length", "--factor", "1"], "no extrapolation"),
        (["gradients", "--iters", "0"], "zero iterations"),
        (["gradients", "--seed", "-1"], "negative seed"),
        (["gradients", "--seq-len", "1"], "window of one"),
        (["recall", "--quick", "--out-dir", str(a_file)], "out-dir is a file"),
        (["recall", "--quick", "--out-dir", str(a_file / "sub")], "out-dir under a file"),
    ]


def snapshot(root):
    return sorted((os.path.relpath(os.path.join(d, f), root), os.path.getsize(os.path.join(d, f)))
                  for d, _, fs in os.walk(root) for f in fs) + sorted(
        os.path.relpath(os.path.join(d, s), root) for d, ds, _ in os.walk(root) for s in ds)


def test_every_bad_input_exits_2_in_one_line_writing_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cases = bad_inputs(tmp_path)
    assert len(cases) >= 40
    failures = []
    for argv, what in cases:
        before = snapshot(tmp_path)
        rc = common.main(MODULES, argv)
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        if not (rc == 2 and len(lines) == 1 and lines[0].startswith("experiments: error:")
                and snapshot(tmp_path) == before and not os.path.exists("results")):
            failures.append(f"{what} {argv}: rc {rc}, stderr {err!r}")
    assert not failures, "\n".join(failures)


def test_bad_input_through_the_command_line(tmp_path):
    rc, out, err = run("recall", "--pairs", "0", cwd=tmp_path)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not os.listdir(tmp_path)                               # no results/ left behind


def test_unexpected_errors_are_one_line_unless_debug(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def boom(a):
        raise RuntimeError("boom\nsecond line")
    monkeypatch.setattr(copying, "run", boom)
    assert common.main(MODULES, ["copy", "--quick"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RuntimeError: boom second line" in err[0] and "--debug" in err[0]
    assert common.main(MODULES, ["copy", "--quick", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("SEQ_DEBUG", "1")
    assert common.main(MODULES, ["copy", "--quick"]) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setattr(copying, "run", lambda a: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert common.main(MODULES, ["copy", "--quick"]) == 130


def test_accuracy_by_pair_place_averages_to_the_accuracy():
    """Every row asks every key once, so the places' mean is the accuracy at that K."""
    x, y, mask = recall.mqar(numpy.random.default_rng(2), 32, 24, 4, 8, 8)
    model = common.make_model("gru", 17, d_model=8, n_layer=1)
    places = recall.accuracy_by_pair(model, x, y, mask)
    assert places.shape == (4,)
    assert abs(places.mean() - common.masked_accuracy(model, x, y, mask)[0]) < 1e-12
    y2 = y.copy()
    y2[mask] = model.forward(x)[0].argmax(-1)[mask]             # a model that is always right
    y2[:, :] = numpy.where(mask, y2, 0)
    assert (recall.accuracy_by_pair(model, x, y2, mask) == 1).all()


DEVICE_COMMANDS = [m.NAME for m in MODULES if getattr(m, "DEVICE", False)]


@pytest.mark.parametrize("command", DEVICE_COMMANDS)
def test_device_gpu_keeps_host_and_device_apart(command, tmp_path, monkeypatch, capsys):
    """--device gpu with the CuPy stand-in of tests/strict_xp.py, which raises on any NumPy
    array that meets a device array: every model trains and is measured on the "device",
    the batches go up through fit() and the measurements come back through to_host()."""
    import strict_xp
    monkeypatch.setattr(common, "XP", numpy)        # restored after the test, whatever happens
    monkeypatch.setattr(train, "get_xp", lambda device: (strict_xp.xp, strict_xp.xp.asnumpy)
                        if device == "gpu" else (numpy, lambda a: a))
    built = []
    make = common.make_model
    monkeypatch.setattr(common, "make_model", lambda *a, **k: built.append(make(*a, **k)) or built[-1])
    rc = common.main(MODULES, [command, "--quick", "--device", "gpu", "--out-dir", str(tmp_path / "res")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert built and all(isinstance(p, strict_xp.StrictArray) for m in built for p in m.params.values())
    name = EXPECT[command][0]
    assert set(common.MODELS) <= {r["model"].split("-")[0] for r in read_csv(tmp_path / "res" / name)}
    assert common.XP is strict_xp.xp
    common.use_device("cpu")
    assert common.XP is numpy


def test_device_gpu_without_cupy_is_one_line(tmp_path, monkeypatch, capsys):
    def no_gpu(device):
        if device == "gpu":
            raise train.UsageError("--device gpu needs CuPy and a CUDA GPU (test); use --device cpu")
        return numpy, (lambda a: a)
    monkeypatch.setattr(train, "get_xp", no_gpu)
    rc = common.main(MODULES, ["recall", "--quick", "--device", "gpu", "--out-dir", str(tmp_path / "res")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--device gpu needs CuPy" in err
    assert not (tmp_path / "res").exists()


TRAINING_COMMANDS = [m.NAME for m in MODULES if "lr" in m.DEFAULTS]


@pytest.mark.parametrize("command", TRAINING_COMMANDS)
def test_weight_decay_reaches_every_optimizer(command, tmp_path, monkeypatch, capsys):
    seen = []
    adamw = train.AdamW
    monkeypatch.setattr(train, "AdamW", lambda params, wd, *a, **k: seen.append(wd) or adamw(params, wd, *a, **k))
    data = ["--data", str(tmp_path / "c.txt")] if command in ("length", "gradients") else []
    if data:
        (tmp_path / "c.txt").write_text("the quick brown fox jumps over the lazy dog. " * 400)
    for wd, argv in ((0.1, []), (0.0, ["--weight-decay", "0"]), (0.25, ["--weight-decay", "0.25"])):
        seen.clear()
        rc = common.main(MODULES, [command, "--quick", "--models", "gru", *data, *argv,
                                   "--out-dir", str(tmp_path / "res")])
        assert rc == 0, capsys.readouterr().err
        assert seen and set(seen) == {wd}
    assert set(TRAINING_COMMANDS) == {"recall", "capacity", "copy", "induction", "length", "gradients"}
