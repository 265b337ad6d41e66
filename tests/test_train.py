"""train.py end to end, as a user runs it: training makes the loss fall, resume is
exact, every kind of bad input ends with one line on stderr and exit 2 with
nothing written or destroyed, and late failures (divergence, a full disk,
Ctrl-C) leave the last good checkpoint's bytes untouched."""
import argparse
import dataclasses
import errno
import hashlib
import importlib
import json
import os
import subprocess
import sys
import tracemalloc

import numpy
import pytest

from models import MODELS, ROOT, TINY

sys.path.insert(0, ROOT)
import train  # noqa: E402

TEXT = "".join(f"{w} jumps over the lazy dog {i % 7}.\n" for i, w in
               enumerate(["the quick brown fox", "a slow red hen", "my old cat"] * 400))


def tiny_flags(name):
    return [x for k, v in TINY[name].items() if k != "vocab_size" for x in (f"--{k.replace('_', '-')}", str(v))]


def cli(*args, cwd, env=None):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *map(str, args)], cwd=cwd,
                         capture_output=True, text=True, env={**os.environ, **(env or {})})
    return out.returncode, out.stdout, out.stderr


def assert_usage_error(rc, out, err, *words):
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error:"), err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path


def test_help(tmp_path):
    rc, out, err = cli("--help", cwd=tmp_path)
    assert rc == 0 and "--max-iters" in out and "--resume" in out and "--temperature" in out
    rc, out, err = cli("--model", "rnn", "--help", cwd=tmp_path)
    assert rc == 0 and "--d-model" in out and "--n-layer" in out


@pytest.mark.parametrize("name", MODELS)
def test_loss_falls(name, corpus, tmp_path):
    rc, out, err = cli("--model", name, "--data", corpus, "--max-iters", 50, "--eval-interval", 50,
                       "--eval-iters", 4, "--batch-size", 8, "--seq-len", 32, "--warmup-iters", 5,
                       "--lr", 3e-3, "--sample-tokens", 20, "--out-dir", tmp_path / "out", cwd=tmp_path)
    assert rc == 0, err
    evals = [line for line in out.splitlines() if line.startswith("step ")]
    first, last = (float(line.rsplit("val loss ", 1)[1]) for line in (evals[0], evals[-1]))
    assert evals[-1].startswith("step 50: train loss ")
    assert last < 0.75 * first, evals
    assert (tmp_path / "out" / "ckpt.npz").exists() and "--- sample" in out


def losses(out):
    """Per-iteration losses and eval lines, without the timing columns."""
    keep = []
    for line in out.splitlines():
        if line.startswith("iter "):
            keep.append(line.split(" | ")[1:4])
        elif line.startswith("step "):
            keep.append(line)
    return keep


@pytest.mark.parametrize("name", MODELS)
def test_resume_is_exact(name, corpus, tmp_path):
    common = ["--model", name, "--data", corpus, "--eval-interval", 4, "--eval-iters", 2, "--batch-size", 4,
              "--seq-len", 16, "--log-interval", 1, "--sample-tokens", 10, *tiny_flags(name)]
    if name == "transformer":
        common += ["--dropout", "0.2"]  # the dropout RNG must be restored too
    rc, whole, err = cli(*common, "--max-iters", 12, "--out-dir", tmp_path / "a", cwd=tmp_path)
    assert rc == 0, err
    rc, part1, err = cli(*common, "--max-iters", 8, "--lr-decay-iters", 12, "--out-dir", tmp_path / "b",
                         cwd=tmp_path)
    assert rc == 0, err
    rc, part2, err = cli("--resume", tmp_path / "b" / "ckpt.npz", "--data", corpus, "--max-iters", 12,
                         "--log-interval", 1, "--sample-tokens", 10, cwd=tmp_path)
    assert rc == 0, err
    assert losses(whole) == losses(part1) + losses(part2)
    assert whole.split("--- sample")[1] == part2.split("--- sample")[1]
    a, b = (numpy.load(tmp_path / d / "ckpt.npz") for d in "ab")
    for k in a.files:
        if k != "meta":
            assert numpy.array_equal(a[k], b[k]), k


def test_sample_only(corpus, tmp_path):
    rc, out, err = cli("--model", "rnn", "--data", corpus, "--max-iters", 4, "--eval-interval", 4,
                       "--eval-iters", 1, "--d-model", 16, "--out-dir", tmp_path / "o", cwd=tmp_path)
    assert rc == 0, err
    rc, out, err = cli("--resume", tmp_path / "o" / "ckpt.npz", "--data", corpus, "--max-iters", 0,
                       "--prompt", "the", "--sample-tokens", 30, "--top-k", 3, "--temperature", 0.8,
                       cwd=tmp_path)
    assert rc == 0, err
    assert "iter " not in out and "--- sample (30 characters, temperature 0.8, top-k 3) ---" in out
    assert out.rstrip().splitlines()[-1].startswith("the") or "\nthe" in out


# ------------------------------------------------------------------ bad input
def make_checkpoint(tmp_path, corpus, name="c"):
    rc, out, err = cli("--model", "rnn", "--data", corpus, "--max-iters", 2, "--eval-interval", 2,
                       "--eval-iters", 1, "--d-model", 16, "--sample-tokens", 0, "--out-dir", tmp_path / name,
                       cwd=tmp_path)
    assert rc == 0, err
    return tmp_path / name / "ckpt.npz"


@pytest.fixture
def ckpt(corpus, tmp_path):
    return make_checkpoint(tmp_path, corpus)


def edited(src, dst, meta=None, **arrays):
    """A copy of checkpoint src with its meta changed by meta(m) and some arrays replaced."""
    z = dict(numpy.load(src))
    m = json.loads(str(z["meta"]))
    if meta:
        meta(m)
    z["meta"] = numpy.array(json.dumps(m))
    z.update(arrays)
    numpy.savez(dst, **z)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """A folder of every bad file the table refers to, made once."""
    d = tmp_path_factory.mktemp("bad")
    (d / "text.txt").write_text(TEXT)
    (d / "empty.txt").write_bytes(b"")
    (d / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (d / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 100)
    (d / "short.txt").write_text("too short\n" * 10)
    (d / "other.txt").write_text(TEXT + "\u00e9\u00e8\u00ea{}\n" * 300)
    (d / "afile").write_text("not a folder\n")
    (d / "folder").mkdir()
    ck = make_checkpoint(d, d / "text.txt")
    raw = ck.read_bytes()
    (d / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    (d / "garbage.npz").write_bytes(os.urandom(5000))
    numpy.save(d / "array.npy", numpy.zeros(3))
    numpy.savez(d / "objects.npz", meta=numpy.array([{"a": 1}], dtype=object))
    numpy.savez(d / "nometa.npz", x=numpy.zeros(3))
    z = dict(numpy.load(ck))
    numpy.savez(d / "notjson.npz", **{**z, "meta": numpy.array("{'model': 'rnn',")})
    edited(ck, d / "novocab.npz", lambda m: m.pop("vocab"))
    edited(ck, d / "step.npz", lambda m: m.update(step="abc"))
    edited(ck, d / "negstep.npz", lambda m: m.update(step=-3))
    edited(ck, d / "lr.npz", lambda m: m["recipe"].update(lr=float("nan")))
    edited(ck, d / "seed.npz", lambda m: m["recipe"].update(seed=-5))
    edited(ck, d / "dmodel.npz", lambda m: m["config"].update(d_model="abc"))
    edited(ck, d / "vocabsize.npz", lambda m: m["config"].update(vocab_size=99))
    edited(ck, d / "model.npz", lambda m: m.update(model="gpt5"))
    edited(ck, d / "rng.npz", lambda m: m.update(data_rng={"bit_generator": "PCG64", "state": "x"}))
    edited(ck, d / "gone.npz", lambda m: m.update(data=str(d / "deleted.txt")))
    edited(ck, d / "nan.npz", **{"param/rnn.weight_hh_l0": z["param/rnn.weight_hh_l0"] * numpy.nan})
    edited(ck, d / "shape.npz", **{"param/rnn.weight_hh_l0": z["param/rnn.weight_hh_l0"][:, :3]})
    return d


T1 = ["--data", "text.txt"]
RNN = ["--model", "rnn", *T1]
BAD = [  # (arguments, words the one line must contain); every one ends with exit status 2
    (["--model", "lstmm"], ["invalid choice"]),
    (["--model", "rnn", "--no-such-flag", "1"], ["unrecognized arguments"]),
    (["--max-iters", "5"], ["--model is required"]),
    ([*RNN, "--batch-size", "0"], ["--batch-size", "must be > 0"]),
    ([*RNN, "--seq-len", "-4"], ["--seq-len", "must be > 0"]),
    ([*RNN, "--d-model", "0"], ["--d-model", "must be > 0"]),
    ([*RNN, "--n-layer", "2.5"], ["--n-layer", "not an integer"]),
    ([*RNN, "--lr", "abc"], ["--lr", "not a number"]),
    ([*RNN, "--lr", "nan"], ["--lr", "finite"]),
    ([*RNN, "--lr", "inf"], ["--lr", "finite"]),
    ([*RNN, "--lr", "-1"], ["--lr", "must be > 0"]),
    ([*RNN, "--lr=-1e-3"], ["--lr", "must be > 0"]),
    ([*RNN, "--min-lr", "0.1"], ["--min-lr 0.1 is above --lr"]),
    ([*RNN, "--weight-decay", "-0.1"], ["--weight-decay", "must be >= 0"]),
    ([*RNN, "--weight-decay", "nan"], ["--weight-decay", "finite"]),
    ([*RNN, "--beta1", "1"], ["--beta1", "must be < 1"]),
    ([*RNN, "--beta2", "-0.5"], ["--beta2", "must be >= 0"]),
    ([*RNN, "--grad-clip", "0"], ["--grad-clip", "must be > 0"]),
    ([*RNN, "--ssm-lr-scale", "inf"], ["--ssm-lr-scale", "finite"]),
    ([*RNN, "--temperature", "0"], ["--temperature", "must be > 0"]),
    ([*RNN, "--temperature", "inf"], ["--temperature", "finite"]),
    ([*RNN, "--top-k", "0"], ["--top-k", "must be > 0"]),
    ([*RNN, "--seed", "-5"], ["argument --seed", "must be >= 0"]),
    ([*RNN, "--max-iters", "-1"], ["--max-iters", "must be >= 0"]),
    ([*RNN, "--eval-iters", "0"], ["--eval-iters", "must be > 0"]),
    ([*RNN, "--dtype", "float16"], ["--dtype"]),
    ([*RNN, "--device", "tpu"], ["--device"]),
    ([*RNN, "--prompt", ""], ["--prompt", "is empty"]),
    ([*RNN, "--prompt", "\u00e9t\u00e9"], ["--prompt", "outside the vocabulary"]),
    (["--model", "rnn", "--data", "missing.txt"], ["does not exist"]),
    (["--model", "rnn", "--data", "empty.txt"], ["is empty"]),
    (["--model", "rnn", "--data", "binary.bin"], ["binary"]),
    (["--model", "rnn", "--data", "latin1.txt"], ["not UTF-8"]),
    (["--model", "rnn", "--data", "short.txt"], ["too short"]),
    (["--model", "rnn", "--data", "folder"], ["is a folder"]),
    (["--model", "rnn", "--data", os.devnull], ["not a regular file"]),
    ([*RNN, "--seq-len", "50000"], ["too short"]),
    ([*RNN, "--out-dir", "afile"], ["--out-dir", "is a file"]),
    ([*RNN, "--out-dir", "afile/sub"], ["--out-dir", "cannot be created"]),
    ([*RNN, "--d-model", "1000000"], ["needs about", "GiB", "available"]),
    ([*RNN, "--batch-size", "100000000"], ["needs about", "GiB", "--batch-size"]),
    (["--model", "transformer", *T1, "--n-head", "3"], ["invalid transformer configuration"]),
    (["--model", "transformer", *T1, "--seq-len", "256"], ["invalid transformer configuration", "block_size"]),
    (["--model", "transformer", *T1, "--dropout", "1.5"], ["--dropout", "must be < 1"]),
    (["--model", "transformer", *T1, "--dropout", "nan"], ["--dropout", "finite"]),
    (["--model", "s4", *T1, "--dt-min", "-1"], ["--dt-min", "must be > 0"]),
    (["--model", "s4", *T1, "--d-state", "7"], ["invalid s4 configuration"]),
    (["--model", "mamba", *T1, "--scan", "chunked"], ["invalid mamba configuration"]),
    (["--model", "mamba", *T1, "--expand", "0"], ["--expand", "must be > 0"]),
    (["--resume", "nothing.npz"], ["does not exist"]),
    (["--resume", "folder"], ["is a folder"]),
    (["--resume", os.devnull], ["not a regular file"]),
    (["--resume", "truncated.npz"], ["truncated or corrupt"]),
    (["--resume", "garbage.npz"], ["truncated or corrupt"]),
    (["--resume", "array.npy"], ["truncated or corrupt", "not an .npz"]),
    (["--resume", "objects.npz"], ["holds Python objects"]),
    (["--resume", "nometa.npz"], ["no 'meta' entry"]),
    (["--resume", "notjson.npz"], ["corrupt 'meta'", "not JSON"]),
    (["--resume", "novocab.npz"], ["corrupt 'meta'", "'vocab'"]),
    (["--resume", "step.npz"], ["corrupt 'meta'", "'step'"]),
    (["--resume", "negstep.npz"], ["step", "must be >= 0"]),
    (["--resume", "lr.npz"], ["recipe value lr", "finite"]),
    (["--resume", "seed.npz"], ["recipe value seed", "must be >= 0"]),
    (["--resume", "dmodel.npz"], ["config value d_model", "not an integer"]),
    (["--resume", "vocabsize.npz"], ["vocab_size 99"]),
    (["--resume", "model.npz"], ["unknown model 'gpt5'"]),
    (["--resume", "rng.npz"], ["random-generator state"]),
    (["--resume", "gone.npz"], ["deleted.txt", "pass --data"]),
    (["--resume", "nan.npz"], ["non-finite values in param/rnn.weight_hh_l0"]),
    (["--resume", "shape.npz"], ["does not fit"]),
    (["--resume", "c/ckpt.npz", "--model", "lstm"], ["holds a rnn model, not lstm"]),
    (["--resume", "c/ckpt.npz", "--d-model", "32"], ["d_model=16", "differs"]),
    (["--resume", "c/ckpt.npz", "--seed", "5"], ["seed=1337", "differs"]),
    (["--resume", "c/ckpt.npz", "--data", "other.txt"], ["vocabulary does not cover"]),
]


def snapshot(folder):
    """Every file under folder with the sha256 of its bytes."""
    return {os.path.relpath(os.path.join(d, f), folder): hashlib.sha256(open(os.path.join(d, f), "rb").read())
            .hexdigest() for d, _, files in os.walk(folder) for f in files} | \
        {os.path.relpath(os.path.join(d, s), folder) + "/": "" for d, subs, _ in os.walk(folder) for s in subs}


@pytest.mark.parametrize("args,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input(args, words, bad_inputs):
    """Each is refused before the first iteration: exit 2, one line, nothing written or destroyed."""
    before = snapshot(bad_inputs)
    rc, out, err = cli(*args, "--max-iters", "3", "--eval-iters", "1", cwd=bad_inputs) if "--max-iters" not in \
        args else cli(*args, cwd=bad_inputs)
    assert_usage_error(rc, out, err, *words)
    assert "allow_pickle" not in err
    assert snapshot(bad_inputs) == before


def test_checkpoint_path_is_a_folder(corpus, tmp_path):
    (tmp_path / "o" / "ckpt.npz").mkdir(parents=True)
    before = snapshot(tmp_path)
    assert_usage_error(*cli("--model", "rnn", "--data", corpus, "--out-dir", "o", cwd=tmp_path),
                       "is not a checkpoint file")
    assert snapshot(tmp_path) == before


def test_data_too_large_for_memory_is_refused_before_reading(tmp_path):
    """A (sparse) file whose token ids could not fit in memory is refused from its size alone."""
    avail = train.available_memory(numpy)
    if not avail:
        pytest.skip("the available memory is unknown here")
    with open(tmp_path / "huge.txt", "wb") as f:
        f.truncate(avail // 10)
    assert_usage_error(*cli("--model", "rnn", "--data", "huge.txt", cwd=tmp_path), "needs about",
                       "as token ids", "use a smaller file")
    assert os.listdir(tmp_path) == ["huge.txt"]


def test_unexpected_error_is_one_line_exit_1(monkeypatch, capsys):
    """The top-level guard: any other exception is one line with its type, exit 1; --debug re-raises."""
    def broken(argv):
        raise RuntimeError("something nobody planned for")
    monkeypatch.setattr(train, "setup", broken)
    assert train.main(["--model", "rnn"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["train.py: unexpected error: RuntimeError: something nobody planned for "
                                        "(run with --debug, or SEQ_DEBUG=1, for the traceback)"]
    with pytest.raises(RuntimeError):
        train.main(["--model", "rnn", "--debug"])
    monkeypatch.setenv("SEQ_DEBUG", "1")
    with pytest.raises(RuntimeError):
        train.main(["--model", "rnn"])


def test_gpu_without_cupy_or_gpu(corpus, tmp_path):
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("a GPU is present")
    except Exception:
        pass
    assert_usage_error(*cli("--model", "rnn", "--data", corpus, "--device", "gpu", cwd=tmp_path), "--device gpu")


def test_shakespeare_offline(tmp_path):
    """No network: one line saying what to do. (A proxy on a closed local port stands in for 'offline'.)"""
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9"}
    rc, out, err = cli("--model", "rnn", "--data", "shakespeare", cwd=tmp_path, env=env)
    assert_usage_error(rc, out, err, "could not download", "by hand", "--data PATH")
    assert not (tmp_path / "cache" / "seqmodels" / "tinyshakespeare.txt").exists()
    (tmp_path / "cache" / "seqmodels").mkdir(parents=True)
    (tmp_path / "cache" / "seqmodels" / "tinyshakespeare.txt").write_text("not shakespeare\n" * 100)
    assert_usage_error(*cli("--model", "rnn", "--data", "shakespeare", cwd=tmp_path, env=env), "sha256")


def test_shakespeare_cached_copy_is_checked_and_used(tmp_path, monkeypatch):
    """A cached copy of the right size and sha256 is used without the network; a wrong one is refused.
    (A stand-in text and its digest replace tiny shakespeare's, so no download is needed.)"""
    text = TEXT.encode()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(train, "SHAKESPEARE_BYTES", len(text))
    monkeypatch.setattr(train, "SHAKESPEARE_SHA256", hashlib.sha256(text).hexdigest())
    monkeypatch.setattr(train.urllib.request, "urlopen", None)   # any download attempt fails loudly
    (tmp_path / "seqmodels").mkdir()
    (tmp_path / "seqmodels" / "tinyshakespeare.txt").write_bytes(text)
    got, name = train.load_corpus("shakespeare")
    assert got == TEXT and name.startswith("tiny shakespeare")
    (tmp_path / "seqmodels" / "tinyshakespeare.txt").write_bytes(text[:-1] + b"?")
    with pytest.raises(train.UsageError, match="wrong size or sha256"):
        train.load_corpus("shakespeare")


# ------------------------------------------------------------ late failures
def test_divergence_on_resume_keeps_the_last_good_checkpoint(ckpt, tmp_path):
    """A huge learning rate: the loss explodes but may stay finite. No checkpoint is written over the
    last good one (its bytes are unchanged), and the one line names it."""
    before = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    rc, out, err = cli("--resume", ckpt, "--max-iters", 40, "--lr", 1e6, "--eval-interval", 1, cwd=tmp_path)
    assert_usage_error(rc, out, err, "diverged", f"the last good checkpoint is {ckpt}")
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == before
    assert os.listdir(ckpt.parent) == ["ckpt.npz"]


def test_nan_loss_stops_and_keeps_the_checkpoint(ckpt, tmp_path):
    before = ckpt.read_bytes()
    rc, out, err = cli("--resume", ckpt, "--max-iters", 6, "--lr", 1e38, cwd=tmp_path)
    assert_usage_error(rc, out, err, "diverged", "last good checkpoint")
    assert ckpt.read_bytes() == before


def test_divergence_before_any_checkpoint_writes_nothing(corpus, tmp_path):
    rc, out, err = cli("--model", "rnn", "--data", corpus, "--d-model", 16, "--lr", 1e6, "--warmup-iters", 0,
                       "--max-iters", 20, "--eval-interval", 10, "--out-dir", "fresh", cwd=tmp_path)
    assert_usage_error(rc, out, err, "diverged", "no checkpoint was written")
    assert not (tmp_path / "fresh").exists()   # the folder this run made is removed again


def run_in_process(argv, capsys):
    code = train.main([str(a) for a in argv])
    return code, capsys.readouterr()


def test_ctrl_c_is_one_line_exit_130_and_keeps_the_checkpoint(ckpt, corpus, monkeypatch, capsys):
    step, calls = train.train_step, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return step(*a, **k)
    monkeypatch.setattr(train, "train_step", interrupted)
    before = ckpt.read_bytes()
    code, cap = run_in_process(["--resume", ckpt, "--data", corpus, "--max-iters", 10, "--eval-interval", 8],
                               capsys)
    assert code == 130
    assert cap.err.strip().splitlines() == [f"train.py: interrupted at iteration 4; the last good checkpoint "
                                            f"is {ckpt}"]
    assert ckpt.read_bytes() == before and os.listdir(ckpt.parent) == ["ckpt.npz"]


def test_disk_full_is_one_line_exit_2_and_keeps_the_checkpoint(ckpt, corpus, monkeypatch, capsys):
    def full(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(train.numpy, "savez", full)
    before = ckpt.read_bytes()
    code, cap = run_in_process(["--resume", ckpt, "--data", corpus, "--max-iters", 4], capsys)
    assert code == 2
    assert cap.err.strip().splitlines() == [f"train.py: error: could not write {ckpt} (No space left on "
                                            f"device); the last good checkpoint is {ckpt}"]
    assert ckpt.read_bytes() == before and os.listdir(ckpt.parent) == ["ckpt.npz"]


def test_interrupted_save_leaves_the_old_checkpoint(ckpt, monkeypatch):
    """Ctrl-C in the middle of writing: the previous checkpoint is intact, no temp file stays."""
    before = ckpt.read_bytes()
    meta, arrays = train.load_checkpoint(str(ckpt))

    def interrupted(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    class M:
        params = {k[6:]: v for k, v in arrays.items() if k.startswith("param/")}

    class O:
        m = v = M.params

    monkeypatch.setattr(train.numpy, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.save_checkpoint(str(ckpt), M, O, meta, lambda a: a)
    assert ckpt.read_bytes() == before
    assert os.listdir(ckpt.parent) == ["ckpt.npz"]


# ------------------------------------------------------------ resume rules
def test_resume_uses_the_checkpoints_corpus(ckpt, corpus, tmp_path):
    """Without --data, the corpus the checkpoint records (not the default); with another --data, a note."""
    (tmp_path / "elsewhere").mkdir()
    rc, out, err = cli("--resume", ckpt, "--max-iters", 4, "--sample-tokens", 0, cwd=tmp_path / "elsewhere")
    assert rc == 0, err
    assert f"data: {corpus}, as recorded in the checkpoint" in out and f"corpus: {corpus}:" in out
    (tmp_path / "copy.txt").write_text(TEXT)
    rc, out, err = cli("--resume", ckpt, "--data", "copy.txt", "--max-iters", 6, "--sample-tokens", 0,
                       cwd=tmp_path)
    assert rc == 0, err
    assert f"note: the checkpoint was trained on {corpus}; continuing on --data copy.txt" in out


def test_resume_to_more_iterations_keeps_the_schedule_and_says_so(ckpt, tmp_path):
    """The checkpoint's cosine ended at its max_iters (2): resuming to 6 runs at min_lr and says how to
    stretch it; with --lr-decay-iters the cosine is stretched and nothing is said."""
    rc, out, err = cli("--resume", ckpt, "--max-iters", 12, "--warmup-iters", 0, "--lr-decay-iters", 12,
                       "--log-interval", 1, "--sample-tokens", 0, "--out-dir", "stretched", cwd=tmp_path)
    assert rc == 0, err
    assert "--lr-decay-iters" not in out and "iter 3/12 | loss" in out
    assert " | lr 1.00e-04 | " not in out.split("iter 3/12")[1].split("\n")[0]
    rc, out, err = cli("--resume", ckpt, "--max-iters", 6, "--warmup-iters", 0, "--log-interval", 1,
                       "--sample-tokens", 0, cwd=tmp_path)
    assert rc == 0, err
    assert "reaches --min-lr 0.0001 at iteration 2; iterations 2..6 run at --min-lr" in out
    assert "Pass --lr-decay-iters 6 to stretch the cosine" in out
    iters = [line for line in out.splitlines() if line.startswith("iter ")]
    assert len(iters) == 4 and all(" | lr 1.00e-04 | " in line for line in iters)


def test_sampling_accepts_every_temperature_and_top_k_the_parser_accepts(ckpt, tmp_path):
    for temperature, top_k in [(1e-300, None), (1e300, None), (1e-6, 1000), (5.0, 1)]:
        args = ["--top-k", top_k] if top_k else []
        rc, out, err = cli("--resume", ckpt, "--max-iters", 0, "--temperature", temperature, "--sample-tokens",
                           20, "--prompt", "a", *args, cwd=tmp_path)
        assert rc == 0 and not err, err
        assert len(out.split(") ---\n")[1].rstrip("\n")) >= 20


def test_config_flags_parse_booleans_and_check_floats():
    """A bool field takes true/false/1/0/yes/no (argparse's type=bool would take 'false' as True)."""
    assert [train.boolean(s) for s in ("true", "False", "1", "0", "YES", "no")] == [True, False, True, False,
                                                                                      True, False]
    with pytest.raises(argparse.ArgumentTypeError):
        train.boolean("maybe")

    @dataclasses.dataclass
    class Config:
        vocab_size: int = 9
        mlp: bool = True
        forget_bias: float = 1.0
        dropout: float = 0.0

    types = {f.name: train.field_type(f) for f in dataclasses.fields(Config)}
    assert types["mlp"]("false") is False and types["forget_bias"]("-0.5") == -0.5
    for name, bad in [("forget_bias", "nan"), ("forget_bias", "-inf"), ("dropout", "1"), ("mlp", "2")]:
        with pytest.raises(argparse.ArgumentTypeError):
            types[name](bad)


@pytest.mark.parametrize("name", MODELS)
def test_memory_estimate_is_close_to_a_measurement(name):
    """The estimate that refuses impossible sizes: exact parameter count, and within 2x of the
    tracemalloc peak of a real float32 training step."""
    assert name in train.MEMORY, f"train.MEMORY has no entry for {name}"
    module = importlib.import_module(name)
    cfg = module.Config(vocab_size=65)
    B, T = 4, 64
    tracemalloc.start()
    try:
        model = module.Model(cfg, seed=0)
        opt = train.AdamW(model.params, 0.1, (0.9, 0.99))
        rng = numpy.random.default_rng(0)
        x, y = train.get_batch(rng.integers(0, 65, 1000), B, T, rng)
        train.train_step(model, opt, x, y, 1e-3, 1.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate, n_params = train.memory_estimate(name, cfg, B, T, 4, 0)
    assert n_params == sum(int(v.size) for v in model.params.values())
    assert 0.5 < estimate / peak < 2, (estimate, peak)


# ------------------------------------------------------------ the pieces
def test_cross_entropy_matches_a_direct_computation():
    rng = numpy.random.default_rng(0)
    z = rng.standard_normal((2, 3, 5)) * 30           # large logits: needs the max shift
    y = rng.integers(0, 5, (2, 3))
    loss, d = train.cross_entropy(z, y)
    p = numpy.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = -numpy.log(numpy.take_along_axis(p, y[..., None], -1)).mean()
    assert abs(loss - want) < 1e-12
    numerical = numpy.zeros_like(z)
    for i in numpy.ndindex(z.shape):
        e = numpy.zeros_like(z)
        e[i] = 1e-6
        numerical[i] = (train.cross_entropy(z + e, y)[0] - train.cross_entropy(z - e, y)[0]) / 2e-6
    assert numpy.abs(numerical - d).max() < 1e-8


def test_weight_decay_groups():
    names = {"embedding.weight": (9, 8), "lm_head.bias": (9,), "layers.0.mixer.A_log": (16, 4),
             "layers.0.mixer.kernel.log_A_real": (8, 4), "layers.0.mixer.kernel.C": (8, 4, 2),
             "layers.0.mixer.D": (16,), "layers.0.norm.weight": (8,)}
    params = {k: numpy.zeros(s) for k, s in names.items()}
    decay, rest = train.AdamW(params, 0.1, (0.9, 0.99)).groups(params)
    assert decay == ["embedding.weight", "layers.0.mixer.kernel.C"]
    assert sorted(decay + rest) == sorted(names)


def test_lr_schedule():
    lrs = [train.get_lr(i, 1e-3, 1e-4, 100, 2000) for i in range(2001)]
    assert lrs[0] > 0 and abs(lrs[99] - 1e-3) < 1e-5 and abs(lrs[100] - 1e-3) < 1e-12
    assert abs(lrs[2000] - 1e-4) < 1e-12 and all(a >= b for a, b in zip(lrs[100:], lrs[101:]))


def test_adamw_matches_its_formula():
    """One AdamW step by hand: decoupled decay, bias correction, eps outside the sqrt."""
    p = {"w": numpy.array([[1.0, -2.0]]), "b": numpy.array([0.5])}
    g = {"w": numpy.array([[0.1, 0.3]]), "b": numpy.array([-0.2])}
    opt = train.AdamW(p, 0.1, (0.9, 0.99))
    w0, b0 = p["w"].copy(), p["b"].copy()
    opt.step(p, g, 1e-2)
    m, v = 0.1 * g["w"], 0.01 * g["w"] ** 2
    want = w0 * (1 - 1e-2 * 0.1) - 1e-2 * (m / 0.1) / (numpy.sqrt(v / 0.01) + 1e-8)
    assert numpy.allclose(p["w"], want, rtol=1e-14)
    assert numpy.allclose(p["b"], b0 - 1e-2 * numpy.sign(g["b"]) * 1 / (1 + 1e-8 / 0.2), rtol=1e-12)


def test_default_corpus_is_deterministic():
    a, name = train.stdlib_corpus()
    b, _ = train.stdlib_corpus()
    assert a == b and len(a) == train.STDLIB_CHARS and "python-stdlib" in name


def test_ssm_lr_scale_applies_only_to_the_ssm_dynamics():
    p = {"layers.0.mixer.A_log": numpy.ones((2, 2)), "layers.0.mixer.in_proj.weight": numpy.ones((2, 2))}
    g = {k: numpy.full((2, 2), 0.5) for k in p}
    opt = train.AdamW(p, 0.0, (0.9, 0.99), ssm_lr_scale=0.1)
    opt.step(p, g, 1e-2)
    moved = {k: 1 - v[0, 0] for k, v in p.items()}
    assert abs(moved["layers.0.mixer.A_log"] - 0.1 * moved["layers.0.mixer.in_proj.weight"]) < 1e-12
