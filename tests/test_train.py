"""train.py end to end, as a user runs it: training makes the loss fall, resume is
exact, and every kind of bad input ends with one line on stderr and exit 2,
with nothing written."""
import os
import subprocess
import sys

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
@pytest.fixture
def ckpt(corpus, tmp_path):
    rc, out, err = cli("--model", "rnn", "--data", corpus, "--max-iters", 2, "--eval-interval", 2,
                       "--eval-iters", 1, "--d-model", 16, "--sample-tokens", 0, "--out-dir", tmp_path / "c",
                       cwd=tmp_path)
    assert rc == 0, err
    return tmp_path / "c" / "ckpt.npz"


def bad_files(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 100)
    (tmp_path / "short.txt").write_text("too short\n" * 10)


BAD = [
    (["--model", "lstmm"], ["invalid choice"]),
    (["--model", "rnn", "--no-such-flag", "1"], ["unrecognized arguments"]),
    (["--max-iters", "5"], ["--model is required"]),
    (["--model", "rnn", "--batch-size", "0"], ["--batch-size", "must be > 0"]),
    (["--model", "rnn", "--seq-len", "-4"], ["--seq-len", "must be > 0"]),
    (["--model", "rnn", "--d-model", "0"], ["--d-model", "must be > 0"]),
    (["--model", "rnn", "--lr", "abc"], ["--lr"]),
    (["--model", "rnn", "--lr", "nan"], ["--lr"]),
    (["--model", "rnn", "--dtype", "float16"], ["--dtype"]),
    (["--model", "rnn", "--device", "tpu"], ["--device"]),
    (["--model", "rnn", "--data", "missing.txt"], ["does not exist"]),
    (["--model", "rnn", "--data", "empty.txt"], ["is empty"]),
    (["--model", "rnn", "--data", "binary.bin"], ["binary"]),
    (["--model", "rnn", "--data", "latin1.txt"], ["not UTF-8"]),
    (["--model", "rnn", "--data", "short.txt"], ["too short"]),
    (["--model", "rnn", "--data", "CORPUS", "--seq-len", "50000"], ["too short"]),
    (["--model", "rnn", "--data", "CORPUS", "--prompt", "\u00e9t\u00e9"], ["--prompt"]),
    (["--resume", "nothing.npz"], ["does not exist"]),
]


@pytest.mark.parametrize("args,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input(args, words, corpus, tmp_path):
    bad_files(tmp_path)
    args = [str(corpus) if a == "CORPUS" else a for a in args]
    before = set(os.listdir(tmp_path))
    assert_usage_error(*cli(*args, "--max-iters", "3", cwd=tmp_path), *words)
    assert set(os.listdir(tmp_path)) == before  # nothing written


def test_bad_checkpoints(ckpt, corpus, tmp_path):
    raw = ckpt.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "garbage.npz").write_bytes(os.urandom(5000))
    (tmp_path / "other.txt").write_text(TEXT + "\u00e9\u00e8\u00ea{}\n" * 300)
    for args, words in [
        (["--resume", "truncated.npz"], ["truncated or corrupt"]),
        (["--resume", "garbage.npz"], ["truncated or corrupt"]),
        (["--resume", ckpt, "--model", "lstm"], ["holds a rnn model, not lstm"]),
        (["--resume", ckpt, "--d-model", "32"], ["d_model=16", "differs"]),
        (["--resume", ckpt, "--data", "other.txt"], ["vocabulary does not cover"]),
    ]:
        extra = [] if "--data" in args else ["--data", corpus]
        assert_usage_error(*cli(*args, *extra, cwd=tmp_path), *words)


def test_model_from_another_file_does_not_fit(ckpt, corpus, tmp_path):
    """A checkpoint whose arrays do not fit the model (e.g. edited by hand) is refused."""
    z = dict(numpy.load(ckpt))
    z["param/rnn.weight_hh_l0"] = z["param/rnn.weight_hh_l0"][:, :3]
    numpy.savez(tmp_path / "edited.npz", **z)
    assert_usage_error(*cli("--resume", tmp_path / "edited.npz", "--data", corpus, cwd=tmp_path),
                       "does not fit")


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
    assert_usage_error(*cli("--model", "rnn", "--data", "shakespeare", cwd=tmp_path, env=env),
                       "could not download", "--data PATH")
    (tmp_path / "cache" / "seqmodels").mkdir(parents=True)
    (tmp_path / "cache" / "seqmodels" / "tinyshakespeare.txt").write_text("not shakespeare\n" * 100)
    assert_usage_error(*cli("--model", "rnn", "--data", "shakespeare", cwd=tmp_path, env=env), "sha256")


def test_nan_loss_stops_and_keeps_the_checkpoint(ckpt, corpus, tmp_path):
    before = ckpt.read_bytes()
    rc, out, err = cli("--resume", ckpt, "--data", corpus, "--max-iters", 6, "--lr", 1e38, cwd=tmp_path)
    assert_usage_error(rc, out, err, "the loss is", "last good checkpoint")
    assert ckpt.read_bytes() == before


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
