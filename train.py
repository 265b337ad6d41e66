"""
train.py: train any of the six models by next-token prediction on characters,
evaluate it, sample from it and save it.

Examples
    python train.py --model rnn                          # offline default corpus (Python stdlib source)
    python train.py --model lstm --data shakespeare      # tiny shakespeare, downloaded once and cached
    python train.py --model gru --data notes.txt --max-iters 5000 --d-model 512
    python train.py --resume out-rnn/ckpt.npz --max-iters 4000      # continue a run
    python train.py --resume out-rnn/ckpt.npz --max-iters 0 --prompt "ROMEO:"   # only sample
    python train.py --model transformer --help           # also lists the model's config flags

What one run does (the standard recipe is the default; see DESIGN.md)
- builds a character vocabulary, sorted(set(text)), from the corpus; 90% train / 10% validation;
- samples random windows (batch 16 x 128 characters), each starting from the
  empty state: no state is carried from one batch to the next;
- AdamW (betas 0.9/0.99, weight decay 0.1 on matrices only, chosen by name),
  learning rate 1e-3 with 100 warm-up iterations and cosine decay to 1e-4,
  gradient clipping at global norm 1.0, 2000 iterations, seed 1337;
- every --eval-interval iterations and at the end prints exactly one line
      step 2000: train loss 1.4012, val loss 1.6123
  (mean cross-entropy in nats over --eval-iters batches of windows drawn once
  with a fixed seed, so every evaluation and every model sees the same
  windows) followed by the perplexity exp(loss), and writes a checkpoint;
- ends with a sample generated token by token through the model's .step.

Checkpoints are .npz files (no pickle): the parameters under their names, the
AdamW moments, and a JSON "meta" entry with the model name, config,
vocabulary, step, training recipe and the data sampler's RNG state, so that a
resumed run's losses equal an unbroken run's exactly. They are written to a
temporary file and renamed into place, so an interrupted write never leaves a
half-written checkpoint.

Bad input (unknown model or flag, a bad value, unusable data, a checkpoint that
does not fit) ends the run with one line on stderr and exit status 2.
"""
import argparse
import ctypes
import dataclasses
import hashlib
import importlib
import json
import math
import os
import sys
import sysconfig
import time
import urllib.request
import zipfile

import numpy

MODELS = ["rnn", "lstm", "gru", "s4", "mamba", "transformer", "mamba2"]

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
STDLIB_CHARS = 1_000_000   # size of the offline default corpus
EVAL_SEED = 20240601       # the evaluation windows: fixed, whatever --seed says

# Names (last dotted component) of matrices that take no weight decay: the SSM
# dynamics, as the S4 and Mamba references exempt them. Vectors never decay.
NO_DECAY = ("A_log", "log_dt", "log_A_real", "A_imag")

# The training recipe: flag defaults, saved in checkpoints and restored on resume.
RECIPE = dict(batch_size=16, seq_len=128, max_iters=2000, lr=1e-3, min_lr=1e-4, warmup_iters=100,
              lr_decay_iters=None, weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0, seed=1337,
              dtype="float32", eval_interval=500, eval_iters=100, ssm_lr_scale=1.0)


class UsageError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


# ---------------------------------------------------------------------- data
def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "seqmodels")


def read_text(path):
    """The UTF-8 text of a file, or UsageError saying why it is unusable."""
    if not os.path.isfile(path):
        raise UsageError(f"data file {path!r} does not exist")
    with open(path, "rb") as f:
        raw = f.read()
    if not raw:
        raise UsageError(f"data file {path!r} is empty")
    if b"\x00" in raw:
        raise UsageError(f"data file {path!r} looks binary (it contains NUL bytes); give a text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"data file {path!r} is not UTF-8 text ({e.reason} at byte {e.start})")


def stdlib_corpus():
    """The offline default: the first 1,000,000 characters of the Python standard
    library's top-level *.py files that are pure ASCII, concatenated in sorted
    file-name order. Deterministic for a given Python version."""
    root = sysconfig.get_paths()["stdlib"]
    parts, total, used = [], 0, 0
    for name in sorted(os.listdir(root)):
        if not name.endswith(".py"):
            continue
        try:
            with open(os.path.join(root, name), encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        if not text.isascii():
            continue
        parts.append(text)
        total, used = total + len(text), used + 1
        if total >= STDLIB_CHARS:
            break
    if total < STDLIB_CHARS:
        raise UsageError(f"the Python standard library at {root} has too little source for the default "
                         "corpus; pass --data PATH")
    return "".join(parts)[:STDLIB_CHARS], f"python-stdlib ({used} files of {root})"


def shakespeare_corpus():
    """Tiny shakespeare, fetched once from its public address, sha256-checked, cached."""
    path = os.path.join(cache_dir(), "tinyshakespeare.txt")
    if not os.path.isfile(path):
        try:
            with urllib.request.urlopen(SHAKESPEARE_URL, timeout=30) as r:
                raw = r.read()
        except Exception as e:
            raise UsageError(f"could not download tiny shakespeare from {SHAKESPEARE_URL} ({e}); "
                             f"download it yourself and pass --data PATH, or save it as {path}")
        if hashlib.sha256(raw).hexdigest() != SHAKESPEARE_SHA256:
            raise UsageError(f"the file downloaded from {SHAKESPEARE_URL} has the wrong sha256; not using it")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            f.write(raw)
        os.replace(path + ".tmp", path)
    with open(path, "rb") as f:
        raw = f.read()
    if hashlib.sha256(raw).hexdigest() != SHAKESPEARE_SHA256:
        raise UsageError(f"the cached {path} has the wrong sha256; delete it to download it again")
    return raw.decode("utf-8"), f"tiny shakespeare ({path})"


def load_corpus(spec):
    """(text, description) for --data: None (the default), 'shakespeare' or a path."""
    if spec is None:
        return stdlib_corpus()
    if spec == "shakespeare":
        return shakespeare_corpus()
    return read_text(spec), spec


class Vocab:
    """Characters <-> ids; sorted, so the same text always gives the same ids."""

    def __init__(self, chars):
        self.chars = "".join(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    def encode(self, text):
        return numpy.array([self.stoi[c] for c in text], dtype=numpy.int64)

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


def get_batch(data, batch_size, seq_len, rng):
    """Random windows: x = data[i : i+T], y = data[i+1 : i+T+1] for B random i."""
    starts = rng.integers(0, len(data) - seq_len, batch_size)
    rows = starts[:, None] + numpy.arange(seq_len)          # (B, T)
    return data[rows], data[rows + 1]


def eval_windows(data, batch_size, seq_len, n_batches):
    """The fixed evaluation batches of a split (seeded by EVAL_SEED, not --seed)."""
    rng = numpy.random.default_rng(EVAL_SEED)
    return [get_batch(data, batch_size, seq_len, rng) for _ in range(n_batches)]


# ---------------------------------------------------------------- loss, optim
def cross_entropy(logits, targets, xp=numpy):
    """Mean cross-entropy over all (B, T) positions, by a stable log-sum-exp.
    Returns (loss as a 0-d xp array, dlogits) with dlogits = (softmax - onehot) / M."""
    V = logits.shape[-1]
    z = logits.reshape(-1, V)                              # (M, V)
    t = xp.asarray(targets).reshape(-1)
    rows = xp.arange(z.shape[0])
    m = z.max(-1, keepdims=True)
    e = xp.exp(z - m)
    s = e.sum(-1, keepdims=True)
    loss = (m[:, 0] + xp.log(s[:, 0]) - z[rows, t]).mean()
    d = e / s                                              # softmax
    d[rows, t] -= 1
    d /= z.shape[0]
    return loss, d.reshape(logits.shape)


def decays(name, shape):
    """Weight decay for matrices (ndim >= 2), except the SSM dynamics in NO_DECAY."""
    return len(shape) >= 2 and name.rsplit(".", 1)[-1] not in NO_DECAY


class AdamW:
    """AdamW as torch.optim.AdamW (decoupled weight decay, bias correction, eps
    outside the square root), with weight decay for the names decays() picks.
    ssm_lr_scale multiplies the learning rate of the SSM dynamics (NO_DECAY names),
    which s4d.py's example trains at a lower rate than the rest."""

    def __init__(self, params, weight_decay, betas, eps=1e-8, ssm_lr_scale=1.0):
        self.decay = {k for k, v in params.items() if decays(k, v.shape)}
        self.lr_scale = {k: ssm_lr_scale if k.rsplit(".", 1)[-1] in NO_DECAY else 1.0 for k in params}
        self.weight_decay, self.betas, self.eps = weight_decay, betas, eps
        self.m = {k: v * 0 for k, v in params.items()}
        self.v = {k: v * 0 for k, v in params.items()}
        self.t = 0

    def groups(self, params):
        """(decayed names, other names): every parameter lands in exactly one."""
        decay = [k for k in params if k in self.decay]
        rest = [k for k in params if k not in self.decay]
        assert sorted(decay + rest) == sorted(params) and not set(decay) & set(rest)
        return decay, rest

    def step(self, params, grads, lr):
        b1, b2 = self.betas
        self.t += 1
        sqrt_bc2 = math.sqrt(1 - b2 ** self.t)
        for k, p in params.items():
            g, m, v = grads[k], self.m[k], self.v[k]
            lr_k = lr * self.lr_scale[k]
            step_size = lr_k / (1 - b1 ** self.t)
            if k in self.decay:
                p *= 1 - lr_k * self.weight_decay
            m *= b1
            m += (1 - b1) * g                              # m = b1 m + (1 - b1) g
            v *= b2
            v += (1 - b2) * (g * g)                        # v = b2 v + (1 - b2) g^2
            p -= step_size * m / (v ** 0.5 / sqrt_bc2 + self.eps)


def clip_grad_norm(grads, max_norm, xp=numpy):
    """Scale all gradients by min(1, max_norm / (norm + 1e-6)), as torch does; returns the norm."""
    norm = xp.sqrt(sum((g * g).sum() for g in grads.values()))
    coef = xp.minimum(1.0, max_norm / (norm + 1e-6))
    for g in grads.values():
        g *= coef.astype(g.dtype)
    return norm


def get_lr(it, lr, min_lr, warmup_iters, decay_iters):
    """Linear warm-up from lr/(warmup+1) (never 0, nanoGPT PR #578), then cosine to min_lr."""
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    if it >= decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / (decay_iters - warmup_iters)
    return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - min_lr)


def train_step(model, opt, x, y, lr, grad_clip, xp=numpy):
    """One full step: forward, loss, backward, clip, AdamW. Returns (loss, norm) as
    xp scalars, read by the caller only when it logs. The update is skipped when the
    loss is not finite (the caller checks and stops)."""
    logits, cache = model.forward(x, train=True)
    loss, dlogits = cross_entropy(logits, y, xp)
    if xp is numpy and not math.isfinite(float(loss)):
        return loss, xp.asarray(float("nan"))
    grads = model.backward(dlogits, cache)
    norm = clip_grad_norm(grads, grad_clip, xp)
    opt.step(model.params, grads, lr)
    return loss, norm


def estimate_loss(model, windows, xp=numpy):
    """Mean cross-entropy over the fixed evaluation windows."""
    total = 0.0
    for x, y in windows:
        logits, _ = model.forward(x)
        total += float(cross_entropy(logits, y, xp)[0])
    return total / len(windows)


# -------------------------------------------------------------------- sampling
def sample(model, vocab, prompt, n_tokens, temperature, top_k, rng, to_host):
    """Feed the prompt through .step, then draw n_tokens one at a time."""
    state = model.init_state(1)
    for i in vocab.encode(prompt):
        logits, state = model.step(numpy.array([i]), state)
    out = []
    for _ in range(n_tokens):
        z = to_host(logits[0]).astype(numpy.float64) / temperature
        if top_k is not None and top_k < len(z):
            z[z < numpy.sort(z)[-top_k]] = -numpy.inf
        p = numpy.exp(z - z.max())
        i = int(rng.choice(len(z), p=p / p.sum()))
        out.append(i)
        logits, state = model.step(numpy.array([i]), state)
    return vocab.decode(out)


# ----------------------------------------------------------------- checkpoints
def save_checkpoint(path, model, opt, meta, to_host):
    """Write params, AdamW moments and meta to path, atomically (temp file + os.replace)."""
    arrays = {"meta": numpy.array(json.dumps(meta))}
    for k in model.params:
        arrays[f"param/{k}"] = to_host(model.params[k])
        arrays[f"adam_m/{k}"] = to_host(opt.m[k])
        arrays[f"adam_v/{k}"] = to_host(opt.v[k])
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            numpy.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path):
    """(meta, arrays) from a checkpoint, or UsageError if it is missing or unreadable."""
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {path!r} does not exist")
    try:
        with numpy.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in z.files if k != "meta"}
        for key in ("model", "config", "vocab", "step", "recipe", "data_rng"):
            meta[key]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, TypeError) as e:
        raise UsageError(f"checkpoint {path!r} is truncated or corrupt ({type(e).__name__}: {e})")
    return meta, arrays


def keep_freed_memory():
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    Every training step allocates its cache (about 100 MB for the transformer at
    the standard config) and frees it. By default glibc hands blocks over 128 KB
    back to the kernel, and the next step page-faults them in again: ~27,000
    faults and ~30% of a transformer step on this project's machine. PyTorch's
    allocator keeps its memory; this lets the NumPy models do the same. It is a
    process setting, so it lives here and not in the model files. Linux (glibc)
    only; elsewhere it does nothing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)    # M_TRIM_THRESHOLD: keep up to 1 GiB of free heap
        libc.mallopt(-3, 32 << 20)   # M_MMAP_THRESHOLD: blocks under 32 MiB (its maximum) come from the heap
    except (OSError, AttributeError):
        pass


# ------------------------------------------------------------------------ CLI
class Parser(argparse.ArgumentParser):
    def error(self, message):                  # one line, exit 2 (argparse prints usage too)
        raise UsageError(message)


def positive(kind):
    def parse(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a valid {kind.__name__}")
        if not v > 0 or (kind is float and not math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"must be positive, got {s}")
        return v
    return parse


def non_negative_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a valid int")
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def unit_interval(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a valid float")
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {s}")
    return v


def config_fields(module):
    """The Config fields that get flags (vocab_size comes from the corpus)."""
    return [f for f in dataclasses.fields(module.Config) if f.name != "vocab_size"]


def build_parser(module=None):
    p = Parser(prog="train.py", description="Train a character-level sequence model (rnn, lstm, gru, s4, "
               "mamba, transformer, mamba2) with a hand-written backward pass.",
               epilog="Every field of the model's Config is a flag too: run with --model NAME --help to "
               "list them. Defaults are DESIGN.md's standard recipe.")
    a = p.add_argument
    a("--model", choices=MODELS, help="which model file to train (required unless --resume)")
    a("--data", help="'shakespeare', or a path to a UTF-8 text file (default: 1 MB of the Python stdlib)")
    a("--resume", metavar="CKPT", help="continue from this checkpoint (its model, config and recipe)")
    a("--out-dir", help="where ckpt.npz goes (default: out-MODEL, or the resumed checkpoint's folder)")
    a("--device", choices=["cpu", "gpu"], default="cpu", help="NumPy on the CPU, or CuPy on a GPU")
    a("--dtype", choices=["float32", "float64"], help="parameter and activation dtype (default float32)")
    a("--seed", type=int, help="seed of the init and of the training batches (default 1337)")
    a("--max-iters", type=non_negative_int, help="total training iterations (default 2000; 0 = only sample)")
    a("--batch-size", type=positive(int), help="windows per batch (default 16)")
    a("--seq-len", type=positive(int), help="characters per window (default 128)")
    a("--lr", type=positive(float), help="peak learning rate (default 1e-3)")
    a("--min-lr", type=positive(float), help="learning rate at the end of the cosine (default 1e-4)")
    a("--warmup-iters", type=non_negative_int, help="linear warm-up iterations (default 100)")
    a("--lr-decay-iters", type=positive(int), help="iterations of the cosine decay (default: --max-iters)")
    a("--weight-decay", type=float, help="AdamW weight decay on matrices (default 0.1)")
    a("--beta1", type=unit_interval, help="AdamW beta1 (default 0.9)")
    a("--beta2", type=unit_interval, help="AdamW beta2 (default 0.99)")
    a("--grad-clip", type=positive(float), help="global gradient-norm clip (default 1.0)")
    a("--ssm-lr-scale", type=positive(float), help="learning-rate factor for the SSM dynamics A_log, log_dt, "
      "log_A_real, A_imag (default 1.0; s4d.py's example uses 0.1 with lr 1e-2)")
    a("--eval-interval", type=positive(int), help="evaluate and checkpoint every N iterations (default 500)")
    a("--eval-iters", type=positive(int), help="batches per evaluation (default 100)")
    a("--log-interval", type=positive(int), default=10, help="progress line every N iterations (default 10)")
    a("--sample-tokens", type=non_negative_int, default=300, help="characters to sample at the end (default 300)")
    a("--temperature", type=positive(float), default=1.0, help="sampling temperature (default 1.0)")
    a("--top-k", type=positive(int), help="sample only from the k most likely characters (default: all)")
    a("--prompt", help="text to start the sample with (default: a newline)")
    if module is not None:
        g = p.add_argument_group(f"{module.__name__}.py Config (defaults: the standard config)")
        for f in config_fields(module):
            kind = type(f.default)
            if kind is int:
                typ = positive(int)
            elif kind is float:
                typ = unit_interval if f.name == "dropout" else float
            else:
                typ = kind
            g.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=typ,
                           help=f"(default {f.default})")
    return p


def get_xp(device):
    if device == "cpu":
        return numpy, lambda a: a
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device")
    except Exception as e:
        raise UsageError(f"--device gpu needs CuPy and a CUDA GPU ({type(e).__name__}: {e}); "
                         "install cupy-cuda12x or cupy-cuda13x, or use --device cpu")
    return cupy, cupy.asnumpy


def setup(argv):
    """Parse the command line, check everything, and return a ready-to-run dict.
    Nothing is written to disk here."""
    first = Parser(add_help=False)
    first.add_argument("--model", choices=MODELS)
    first.add_argument("--resume")
    pre, _ = first.parse_known_args(argv)

    meta = arrays = None
    name = pre.model
    if pre.resume:
        meta, arrays = load_checkpoint(pre.resume)
        if meta["model"] not in MODELS:
            raise UsageError(f"checkpoint {pre.resume!r} holds an unknown model {meta['model']!r}")
        if name and name != meta["model"]:
            raise UsageError(f"checkpoint {pre.resume!r} holds a {meta['model']} model, not {name}")
        name = meta["model"]
    module = importlib.import_module(name) if name else None
    args = build_parser(module).parse_args(argv)
    if name is None:
        raise UsageError("--model is required (one of: " + ", ".join(MODELS) + "), unless --resume is given")

    # The recipe: explicit flags, else the checkpoint's, else the defaults.
    recipe = {}
    for k, default in RECIPE.items():
        given = getattr(args, k)
        recipe[k] = given if given is not None else (meta["recipe"].get(k, default) if meta else default)
    if meta:
        for k in ("dtype", "seed", "batch_size", "seq_len"):
            if getattr(args, k) is not None and getattr(args, k) != meta["recipe"][k]:
                raise UsageError(f"checkpoint {pre.resume!r} was trained with {k}={meta['recipe'][k]}; "
                                 f"--{k.replace('_', '-')} {getattr(args, k)} differs")
        if args.max_iters is None:
            recipe["max_iters"] = meta["recipe"]["max_iters"]
    if recipe["lr_decay_iters"] is None:
        recipe["lr_decay_iters"] = max(recipe["max_iters"], 1)

    # Data and vocabulary.
    text, corpus = load_corpus(args.data)
    if meta:
        vocab = Vocab(meta["vocab"])
        missing = sorted(set(text) - set(vocab.chars))
        if missing:
            raise UsageError(f"checkpoint {pre.resume!r}'s vocabulary does not cover the data "
                             f"({len(missing)} unknown characters, e.g. {''.join(missing[:10])!r})")
    else:
        vocab = Vocab.from_text(text)
    data = vocab.encode(text)
    n = int(0.9 * len(data))
    train_data, val_data = data[:n], data[n:]
    T = recipe["seq_len"]
    if len(val_data) < T + 1:
        raise UsageError(f"the data is too short: {len(text):,} characters give a validation split of "
                         f"{len(val_data):,}, shorter than --seq-len + 1 = {T + 1}; use more text or a "
                         "smaller --seq-len")

    # Model config: the checkpoint's (flags may only repeat it), else defaults + flags.
    fields = {f.name: getattr(args, f.name) for f in config_fields(module)}
    if meta:
        for k, v in fields.items():
            if v is not None and meta["config"].get(k) != v:
                raise UsageError(f"checkpoint {pre.resume!r} has {k}={meta['config'].get(k)}; "
                                 f"--{k.replace('_', '-')} {v} differs (a run resumes with its own config)")
        try:
            cfg = module.Config(**meta["config"])
        except TypeError as e:
            raise UsageError(f"checkpoint {pre.resume!r} has a config that {name}.py does not accept ({e})")
    else:
        cfg = module.Config(**{k: v for k, v in fields.items() if v is not None}, vocab_size=len(vocab.chars))
    xp, to_host = get_xp(args.device)
    dtype = numpy.dtype(recipe["dtype"])
    try:
        model = module.Model(cfg, xp=xp, dtype=dtype, seed=recipe["seed"])
        model.forward(numpy.zeros((1, T), dtype=numpy.int64))  # fails early on, e.g., seq_len > block_size
    except (ValueError, AssertionError) as e:
        raise UsageError(f"invalid {name} configuration: {e}")

    opt = AdamW(model.params, recipe["weight_decay"], (recipe["beta1"], recipe["beta2"]),
                ssm_lr_scale=recipe["ssm_lr_scale"])
    data_rng = numpy.random.default_rng([recipe["seed"], 1])
    step = 0
    if meta:
        for k, v in model.params.items():
            for prefix, target in (("param", model.params), ("adam_m", opt.m), ("adam_v", opt.v)):
                a = arrays.get(f"{prefix}/{k}")
                if a is None or a.shape != v.shape:
                    raise UsageError(f"checkpoint {pre.resume!r} does not fit {name} with its config "
                                     f"({prefix}/{k} is {None if a is None else a.shape}, expected {v.shape})")
                target[k][...] = xp.asarray(a.astype(dtype))
        step = opt.t = int(meta["step"])
        data_rng.bit_generator.state = meta["data_rng"]
        if "model_rng" in meta and hasattr(model, "rng"):
            model.rng.bit_generator.state = meta["model_rng"]

    prompt = args.prompt if args.prompt is not None else ("\n" if "\n" in vocab.stoi else vocab.chars[0])
    bad = sorted(set(prompt) - set(vocab.chars))
    if bad:
        raise UsageError(f"--prompt has characters outside the vocabulary: {''.join(bad)!r}")
    out_dir = args.out_dir or (os.path.dirname(pre.resume) or "." if pre.resume else f"out-{name}")
    return dict(args=args, name=name, module=module, cfg=cfg, model=model, opt=opt, xp=xp, to_host=to_host,
                recipe=recipe, vocab=vocab, corpus=corpus, text=text, train_data=train_data,
                val_data=val_data, data_rng=data_rng, step=step, prompt=prompt,
                ckpt=os.path.join(out_dir, "ckpt.npz"))


def run(s):
    args, model, opt, xp, to_host, r = s["args"], s["model"], s["opt"], s["xp"], s["to_host"], s["recipe"]
    B, T, vocab = r["batch_size"], r["seq_len"], s["vocab"]
    n_params = sum(int(v.size) for v in model.params.values())
    print(f"corpus: {s['corpus']}: {len(s['text']):,} characters, vocabulary {len(vocab.chars)}; "
          f"train {len(s['train_data']):,}, val {len(s['val_data']):,}")
    print(f"model: {s['name']} {dataclasses.asdict(s['cfg'])}, {n_params:,} parameters, "
          f"{r['dtype']} on {args.device}")
    decay, rest = opt.groups(model.params)
    count = lambda names: sum(int(model.params[k].size) for k in names)  # noqa: E731
    print(f"optimizer: AdamW, weight decay {r['weight_decay']} on {len(decay)} tensors ({count(decay):,} "
          f"parameters), none on {len(rest)} tensors ({count(rest):,} parameters)"
          + (f"; learning rate x{r['ssm_lr_scale']} on the SSM dynamics" if r["ssm_lr_scale"] != 1 else ""))
    windows = {split: eval_windows(s[f"{split}_data"], B, T, r["eval_iters"]) for split in ("train", "val")}

    def save(step, val):
        meta = dict(model=s["name"], config=dataclasses.asdict(s["cfg"]), vocab=vocab.chars, step=step,
                    recipe=r, data_rng=s["data_rng"].bit_generator.state, corpus=s["corpus"], val_loss=val)
        if hasattr(model, "rng"):
            meta["model_rng"] = model.rng.bit_generator.state
        save_checkpoint(s["ckpt"], model, opt, meta, to_host)

    def evaluate(step):
        t0 = time.perf_counter()
        losses = {split: estimate_loss(model, w, xp) for split, w in windows.items()}
        print(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        print(f"  perplexity: train {math.exp(losses['train']):.2f}, val {math.exp(losses['val']):.2f} "
              f"({losses['val'] / math.log(2):.3f} bits/char); eval {time.perf_counter() - t0:.1f} s")
        if step > 0:
            save(step, losses["val"])
        return time.perf_counter() - t0

    start, end = s["step"], r["max_iters"]
    if start < end:
        print(f"training iterations {start}..{end} (batch {B} x {T} characters)"
              + (f", resumed from {args.resume}" if args.resume else ""))
    t_start, t_eval, last_good = time.perf_counter(), 0.0, (args.resume if args.resume else None)
    t_log = time.perf_counter()
    for it in range(start, end):
        if it % r["eval_interval"] == 0 and not (it == start and it > 0):
            t_eval += evaluate(it)
            last_good = s["ckpt"] if it > 0 else last_good
            t_log = time.perf_counter()
        lr = get_lr(it, r["lr"], r["min_lr"], r["warmup_iters"], r["lr_decay_iters"])
        x, y = get_batch(s["train_data"], B, T, s["data_rng"])
        loss, norm = train_step(model, opt, x, y, lr, r["grad_clip"], xp)
        if (it + 1) % args.log_interval == 0 or xp is numpy:
            loss_v = float(loss)
            if not math.isfinite(loss_v):
                raise UsageError(f"the loss is {loss_v} at iteration {it}: the run diverged and stops; "
                                 + (f"the last good checkpoint is {last_good}" if last_good else
                                    "no checkpoint was written") + "; try a lower --lr")
        if (it + 1) % args.log_interval == 0:
            dt = (time.perf_counter() - t_log) / args.log_interval
            print(f"iter {it + 1}/{end} | loss {loss_v:.4f} | lr {lr:.2e} | norm {float(norm):.4f} | "
                  f"{dt * 1000:.1f} ms | {B * T / dt:,.0f} tok/s", flush=True)
            t_log = time.perf_counter()
    if start < end:
        t_eval += evaluate(end)
        wall = time.perf_counter() - t_start
        print(f"done: {end - start} iterations in {wall:.1f} s ({wall - t_eval:.1f} s training, "
              f"{t_eval:.1f} s evaluation); checkpoint {s['ckpt']}")
    if args.sample_tokens:
        rng = numpy.random.default_rng(r["seed"])
        text = sample(model, vocab, s["prompt"], args.sample_tokens, args.temperature, args.top_k, rng, to_host)
        print(f"--- sample ({args.sample_tokens} characters, temperature {args.temperature}"
              + (f", top-k {args.top_k}" if args.top_k else "") + ") ---")
        print(s["prompt"] + text)


def main(argv=None):
    keep_freed_memory()
    try:
        # A diverging run overflows; train.py checks the loss itself and says so in one line.
        with numpy.errstate(over="ignore", invalid="ignore", divide="ignore"):
            run(setup(sys.argv[1:] if argv is None else argv))
    except UsageError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ntrain.py: interrupted; the last checkpoint written is intact", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
