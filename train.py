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

What one run does (the defaults are the project's standard recipe)
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

The path through this file: main() -> setup() (parse and check everything,
build a Run) -> train() (the loop) -> sample().

Checkpoints are .npz files (no pickle): the parameters under their names, the
AdamW moments, and a JSON "meta" entry with the model name, config,
vocabulary, step, training recipe, corpus and the data sampler's RNG state, so
that a resumed run's losses equal an unbroken run's exactly. They are written
to a temporary file and renamed into place, so an interrupted write never
leaves a half-written checkpoint, and a checkpoint is written only when the
parameters and both losses are finite.

Resuming: the model, config and recipe come from the checkpoint, and so does
the corpus unless --data is given. The learning-rate schedule keeps the
checkpoint's decay length; resuming to a larger --max-iters runs the extra
iterations at --min-lr (the run says so) unless --lr-decay-iters sets a new one.

Errors: bad input (a flag, the data, a checkpoint, an output folder, a size
that does not fit in memory) is refused before the first iteration with one
line on stderr and exit status 2. A run that diverges or cannot write its
checkpoint ends the same way, Ctrl-C with exit status 130; each names the last
good checkpoint, which is left untouched. Anything unexpected is one line with
exit status 1; --debug (or SEQ_DEBUG=1) shows its traceback.
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
import tempfile
import time
import urllib.request

import numpy

MODELS = ["rnn", "lstm", "gru", "s4", "mamba", "transformer", "mamba2"]

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_BYTES = 1_115_394
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
    """Bad input, or a run that cannot go on: one line on stderr, exit status 2."""


class Interrupted(UsageError):
    """Ctrl-C: one line on stderr, exit status 130."""


# ---------------------------------------------------------------------- data
def tilde(path):
    """A path as printed: the home folder as ~, as a shell would show it."""
    home = os.path.expanduser("~")
    return "~" + path[len(home):] if home not in ("", "/", "~") and path.startswith(home + os.sep) else path


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "seqmodels")


def regular_file(path, what):
    """UsageError unless path names a regular file (not missing, a folder, or a device)."""
    if os.path.isdir(path):
        raise UsageError(f"{what} {path!r} is a folder, not a file")
    if not os.path.exists(path):
        raise UsageError(f"{what} {path!r} does not exist")
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path!r} is not a regular file (a device or a pipe?)")


def read_text(path):
    """The UTF-8 text of a file, or UsageError saying why it is unusable."""
    regular_file(path, "data file")
    size, avail = os.path.getsize(path), available_memory(numpy)
    if avail and 20 * size > avail:   # the text, a list of ids and an int64 array: about 20 bytes a character
        raise UsageError(f"data file {path!r} ({gib(size)}) needs about {gib(20 * size)} of memory as token "
                         f"ids, more than the {gib(avail)} available; use a smaller file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UsageError(f"data file {path!r} cannot be read ({e.strerror})")
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
        if text.isascii():
            parts.append(text)
            total, used = total + len(text), used + 1
        if total >= STDLIB_CHARS:
            break
    if total < STDLIB_CHARS:
        raise UsageError(f"the Python standard library at {root} has too little source for the default "
                         "corpus; pass --data PATH")
    return "".join(parts)[:STDLIB_CHARS], f"python-stdlib ({used} files of {tilde(root)})"


def shakespeare_corpus():
    """Tiny shakespeare, fetched once from its public address, checked (size and
    sha256) and cached; offline, one line saying how to get it by hand."""
    path = os.path.join(cache_dir(), "tinyshakespeare.txt")
    by_hand = (f"download {SHAKESPEARE_URL} ({SHAKESPEARE_BYTES:,} bytes) by hand and pass "
               "--data PATH_TO_IT")
    if not os.path.isfile(path):
        print(f"downloading tiny shakespeare from {SHAKESPEARE_URL} to {path}", flush=True)
        try:
            with urllib.request.urlopen(SHAKESPEARE_URL, timeout=30) as r:
                raw = r.read(SHAKESPEARE_BYTES + 1)
        except Exception as e:
            raise UsageError(f"could not download tiny shakespeare ({type(e).__name__}: {e}); offline? "
                             f"{by_hand}")
        if len(raw) != SHAKESPEARE_BYTES or hashlib.sha256(raw).hexdigest() != SHAKESPEARE_SHA256:
            raise UsageError(f"the file downloaded from {SHAKESPEARE_URL} is not tiny shakespeare "
                             f"({len(raw):,} bytes, wrong sha256); not using it; {by_hand}")
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "wb") as f:
                f.write(raw)
            os.replace(path + ".tmp", path)
        except OSError as e:
            raise UsageError(f"could not cache tiny shakespeare at {path} ({e.strerror}); {by_hand}")
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) != SHAKESPEARE_BYTES or hashlib.sha256(raw).hexdigest() != SHAKESPEARE_SHA256:
        raise UsageError(f"the cached {path} is not tiny shakespeare (wrong size or sha256); delete it to "
                         f"download it again, or {by_hand}")
    return raw.decode("utf-8"), f"tiny shakespeare ({tilde(path)})"


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
    """Feed the prompt (at least one character) through .step, then draw n_tokens
    one at a time. Any finite temperature > 0 works: the logits are shifted to a
    maximum of 0 before dividing, so exp never overflows."""
    state = model.init_state(1)
    for i in vocab.encode(prompt):
        logits, state = model.step(numpy.array([i]), state)
    out = []
    for _ in range(n_tokens):
        z = to_host(logits[0]).astype(numpy.float64)
        z = (z - z.max()) / temperature
        if top_k is not None and top_k < len(z):
            z[z < numpy.sort(z)[-top_k]] = -numpy.inf
        p = numpy.exp(z)
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


META = dict(model=str, config=dict, vocab=str, step=int, recipe=dict, data_rng=dict)   # meta's required entries
KIND = {str: "a string", dict: "a JSON object", int: "an integer"}


def load_checkpoint(path):
    """(meta, arrays) from a checkpoint, or UsageError naming what is wrong with it.
    Only the file's structure is checked here; setup() checks its values."""
    regular_file(path, "checkpoint")
    bad = f"checkpoint {path!r} is not a train.py checkpoint"
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":     # every .npz is a zip archive
            raise UsageError(f"checkpoint {path!r} is truncated or corrupt (not an .npz archive)")
    try:
        with numpy.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e):   # numpy's own wording would suggest loading pickles: never
            raise UsageError(f"{bad}: it holds Python objects, which train.py never writes")
        raise UsageError(f"checkpoint {path!r} is truncated or corrupt ({e})")
    except Exception as e:       # BadZipFile, EOFError, zlib.error, ... from a damaged archive
        raise UsageError(f"checkpoint {path!r} is truncated or corrupt ({type(e).__name__}: {e})")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except KeyError:
        raise UsageError(f"{bad}: it has no 'meta' entry")
    except ValueError as e:
        raise UsageError(f"checkpoint {path!r} has a corrupt 'meta' entry (not JSON: {e})")
    if not isinstance(meta, dict):
        raise UsageError(f"checkpoint {path!r} has a corrupt 'meta' entry (not a JSON object)")
    for key, kind in META.items():
        if type(meta.get(key)) is not kind:
            raise UsageError(f"checkpoint {path!r} has a corrupt 'meta' entry ({key!r} is "
                             f"{meta.get(key)!r}, not {KIND[kind]})")
    return meta, arrays


def keep_freed_memory():
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    Every training step allocates its cache (about 100 MB for the transformer at
    the standard config) and frees it. By default glibc hands blocks over 128 KB
    back to the kernel, and the next step page-faults them in again: ~27,000
    faults and ~30% of a transformer step on a 2-core test machine. PyTorch's
    allocator keeps its memory; this lets the NumPy models do the same. It is a
    process setting, so it lives here and not in the model files. Linux (glibc)
    only; elsewhere it does nothing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)    # M_TRIM_THRESHOLD: keep up to 1 GiB of free heap
        libc.mallopt(-3, 32 << 20)   # M_MMAP_THRESHOLD: blocks under 32 MiB (its maximum) come from the heap
    except (OSError, AttributeError):
        pass


# ----------------------------------------------------------- memory estimate
# Floats a training step holds, from the config alone (nothing is allocated to
# find out): (parameters, activation floats per token, activation floats per
# window position independent of the batch). Parameters are exact; the
# activation terms were fitted to tracemalloc peaks of float32 train_step calls
# (tests/test_train.py checks the estimate is within 2x of a measured peak).
# H = d_model, L = n_layer, V = vocab_size, N = d_state, E = d_inner. A new model is one
# more entry in MEMORY (without one, its runs are not checked against the memory).
def _mamba(c, T):
    E, R, N, H = c.expand * c.d_model, -(-c.d_model // 16), c.d_state, c.d_model
    layer = H + 2 * E * H + E * c.d_conv + E + E * (R + 2 * N) + R * E + E + E * N + E + E * H
    return c.vocab_size * H + c.n_layer * layer + H, (c.n_layer + 1) * (3 * E * N + 4 * E), 0


def _mamba2(c, T):
    E, N, H, Q = c.expand * c.d_model, c.d_state, c.expand * c.d_model // c.headdim, c.chunk_size
    F, C = E + 2 * N, c.d_model
    layer = C + (2 * E + 2 * N + H) * C + F * c.d_conv + F + 3 * H + E + C * E
    # per token and layer: the in_proj/conv/gate activations (about 4 copies of 2E + 2N + H),
    # the (H, Q) decay mask and the (Q,) scores row of the chunk, kept twice, and the
    # chunk-boundary states (H P N = E N per chunk of Q tokens), twice
    act = 4 * (2 * E + 2 * N + H) + 2 * H * Q + 2 * Q + 2 * E * N // Q
    return c.vocab_size * C + c.n_layer * layer + C, (c.n_layer + 1) * act, 0


def _recurrent(gates, act):
    """rnn (1 gate block), gru (3), lstm (4): per layer W_ih, W_hh (gates*H, H) and two biases."""
    return lambda c, T: (2 * c.vocab_size * c.d_model + c.vocab_size
                         + c.n_layer * 2 * gates * (c.d_model ** 2 + c.d_model), act * (c.n_layer + 1) * c.d_model, 0)


MEMORY = {
    "rnn": _recurrent(1, 3), "lstm": _recurrent(4, 10), "gru": _recurrent(3, 10),
    # s4: an embedding and an untied head; per layer output_linear (2H, H), C and A (N entries per channel)
    # and five H-vectors; the kernel and its FFT hold about L H N T floats whatever the batch
    "s4": lambda c, T: (2 * c.vocab_size * c.d_model + c.vocab_size + 2 * c.d_model
                        + c.n_layer * (2 * c.d_model ** 2 + 2 * c.d_model * c.d_state + 6 * c.d_model),
                        15 * (c.n_layer + 1) * c.d_model, c.n_layer * c.d_model * c.d_state * T),
    "mamba": _mamba,   # the scan keeps h for every position: 3 E N floats per token and layer
    "mamba2": _mamba2,  # only chunk-boundary states: E N / Q floats per token and layer
    # transformer: 12 H^2 + 13 H per block; attention keeps (B, n_head, T, T) twice
    "transformer": lambda c, T: (c.vocab_size * c.d_model + c.block_size * c.d_model + 2 * c.d_model
                                 + c.n_layer * (12 * c.d_model ** 2 + 13 * c.d_model),
                                 (c.n_layer + 1) * (20 * c.d_model + 2 * c.n_head * T), 0),
}


def memory_estimate(name, cfg, B, T, itemsize, eval_iters):
    """(bytes, parameter count) of a training run, or None for a model without an entry."""
    if name not in MEMORY:
        return None
    n_params, per_token, fixed = MEMORY[name](cfg, T)
    windows = 2 * 2 * eval_iters * B * T * 8           # train/val, x/y, int64
    return itemsize * (4 * n_params + per_token * B * T + fixed + cfg.vocab_size * B * T * 2) + windows, n_params


def available_memory(xp):
    """Free bytes on the device: MemAvailable on Linux, the GPU's free memory; None if unknown."""
    if xp is not numpy:
        return xp.cuda.runtime.memGetInfo()[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def gib(n):
    return f"{n / 2 ** 30:,.1f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:,.0f} MiB"


# ------------------------------------------------------------------------ CLI
class Parser(argparse.ArgumentParser):
    def error(self, message):                  # one line, exit 2 (argparse prints usage too)
        raise UsageError(message)


def number(kind, lo=None, hi=None, strict=False, hi_open=False):
    """An argparse type: an int or a finite float in [lo, hi] (or (lo, ...) / [..., hi))."""
    def parse(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not {'an integer' if kind is int else 'a number'}")
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
        if lo is not None and (v <= lo if strict else v < lo):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {lo}, got {s}")
        if hi is not None and (v >= hi if hi_open else v > hi):
            raise argparse.ArgumentTypeError(f"must be {'<' if hi_open else '<='} {hi}, got {s}")
        return v
    return parse


def boolean(s):
    v = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(str(s).lower())
    if v is None:
        raise argparse.ArgumentTypeError(f"{s!r} is not a boolean (true/false, 1/0, yes/no)")
    return v


def non_empty(s):
    if not s:
        raise argparse.ArgumentTypeError("is empty; give at least one character (or leave it out to start "
                                         "from a newline)")
    return s


def choice(*options):
    def parse(s):
        if s not in options:
            raise argparse.ArgumentTypeError(f"{s!r} is not one of {', '.join(options)}")
        return s
    return parse


POSITIVE_INT, NON_NEGATIVE_INT = number(int, 0, strict=True), number(int, 0)
POSITIVE, UNIT = number(float, 0, strict=True), number(float, 0, 1, hi_open=True)
# Flag types of the recipe: checked alike on the command line and in a checkpoint.
RECIPE_TYPES = dict(batch_size=POSITIVE_INT, seq_len=POSITIVE_INT, max_iters=NON_NEGATIVE_INT, lr=POSITIVE,
                    min_lr=number(float, 0), warmup_iters=NON_NEGATIVE_INT, lr_decay_iters=POSITIVE_INT,
                    weight_decay=number(float, 0), beta1=UNIT, beta2=UNIT, grad_clip=POSITIVE, seed=NON_NEGATIVE_INT,
                    eval_interval=POSITIVE_INT, eval_iters=POSITIVE_INT, ssm_lr_scale=POSITIVE,
                    dtype=choice("float32", "float64"))


def config_fields(module):
    """The Config fields that get flags (vocab_size comes from the corpus)."""
    return [f for f in dataclasses.fields(module.Config) if f.name != "vocab_size"]


def field_type(f):
    """The flag type of a Config field, from its default: ints positive, floats finite
    (dropout in [0, 1), the dt_* step sizes positive), bools true/false, strings as given."""
    kind = type(f.default)
    if kind is bool:
        return boolean
    if kind is int:
        return POSITIVE_INT
    if kind is float:
        return UNIT if f.name == "dropout" else POSITIVE if f.name.startswith("dt_") else number(float)
    return str


def build_parser(module=None):
    p = Parser(prog="train.py", description="Train a character-level sequence model (rnn, lstm, gru, s4, "
               "mamba, transformer, mamba2) with a hand-written backward pass.",
               epilog="Every field of the model's Config is a flag too: run with --model NAME --help to "
               "list them. The defaults are the project's standard recipe.")
    a = p.add_argument
    a("--model", choices=MODELS, help="which model file to train (required unless --resume)")
    a("--data", help="'shakespeare', or a path to a UTF-8 text file (default: 1 MB of the Python stdlib; "
      "on --resume: the checkpoint's corpus)")
    a("--resume", metavar="CKPT", help="continue from this checkpoint (its model, config, recipe and corpus)")
    a("--out-dir", help="where ckpt.npz goes (default: out-MODEL, or the resumed checkpoint's folder)")
    a("--device", choices=["cpu", "gpu"], default="cpu", help="NumPy on the CPU, or CuPy on a GPU")
    a("--dtype", choices=["float32", "float64"], help="parameter and activation dtype (default float32)")
    t = RECIPE_TYPES
    a("--seed", type=t["seed"], help="seed (>= 0) of the init and of the training batches (default 1337)")
    a("--max-iters", type=t["max_iters"], help="total training iterations (default 2000; 0 = only sample)")
    a("--batch-size", type=t["batch_size"], help="windows per batch (default 16)")
    a("--seq-len", type=t["seq_len"], help="characters per window (default 128)")
    a("--lr", type=t["lr"], help="peak learning rate (default 1e-3)")
    a("--min-lr", type=t["min_lr"], help="learning rate at the end of the cosine, <= --lr (default 1e-4)")
    a("--warmup-iters", type=t["warmup_iters"], help="linear warm-up iterations (default 100)")
    a("--lr-decay-iters", type=t["lr_decay_iters"], help="iteration at which the cosine reaches --min-lr "
      "(default: --max-iters; on --resume: the checkpoint's)")
    a("--weight-decay", type=t["weight_decay"], help="AdamW weight decay on matrices (default 0.1)")
    a("--beta1", type=t["beta1"], help="AdamW beta1, in [0, 1) (default 0.9)")
    a("--beta2", type=t["beta2"], help="AdamW beta2, in [0, 1) (default 0.99)")
    a("--grad-clip", type=t["grad_clip"], help="global gradient-norm clip (default 1.0)")
    a("--ssm-lr-scale", type=t["ssm_lr_scale"], help="learning-rate factor for the SSM dynamics A_log, "
      "log_dt, log_A_real, A_imag (default 1.0; s4d.py's example uses 0.1 with lr 1e-2)")
    a("--eval-interval", type=t["eval_interval"], help="evaluate and checkpoint every N iterations (default 500)")
    a("--eval-iters", type=t["eval_iters"], help="batches per evaluation (default 100)")
    a("--log-interval", type=POSITIVE_INT, default=10, help="progress line every N iterations (default 10)")
    a("--sample-tokens", type=NON_NEGATIVE_INT, default=300, help="characters to sample at the end (default 300)")
    a("--temperature", type=POSITIVE, default=1.0, help="sampling temperature, > 0 (default 1.0)")
    a("--top-k", type=POSITIVE_INT, help="sample only from the k most likely characters (default: all)")
    a("--prompt", type=non_empty, help="text to start the sample with (default: a newline)")
    a("--debug", action="store_true", help="show the traceback of an unexpected error (or set SEQ_DEBUG=1)")
    if module is not None:
        g = p.add_argument_group(f"{module.__name__}.py Config (defaults: the standard config)")
        for f in config_fields(module):
            g.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=field_type(f),
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


def checked(value, parse, what):
    """A value read from a checkpoint, checked as its flag would be; UsageError if it fails."""
    try:
        v = parse(str(value))
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"{what} {e}")
    if type(v) is not type(value) and not (type(v) is float and type(value) is int):
        raise UsageError(f"{what} is {value!r}, of the wrong type")
    return value


@dataclasses.dataclass
class Run:
    """Everything the loop needs, checked: built by setup(), used by train()."""
    args: argparse.Namespace   # the command line (logging, sampling, --device, --resume)
    recipe: dict               # RECIPE's keys, resolved: flags, else the checkpoint's, else the defaults
    name: str                  # the model file
    cfg: object                # its Config
    model: object
    opt: AdamW
    xp: object                 # numpy or cupy
    to_host: object            # array -> NumPy array
    vocab: Vocab
    corpus: str                # description of the corpus, printed and saved
    data_spec: object          # the corpus: None (default), 'shakespeare' or an absolute path; saved
    train_data: numpy.ndarray  # token ids, 90% / 10%
    val_data: numpy.ndarray
    data_rng: numpy.random.Generator
    step: int                  # the first iteration to run (the checkpoint's step on resume)
    prompt: str
    ckpt: str                  # where checkpoints are written


def setup(argv):
    """Parse the command line and check everything: flags, checkpoint, data,
    config, memory. Returns a Run. Nothing is written to disk here."""
    first = Parser(add_help=False)
    first.add_argument("--model", choices=MODELS)
    first.add_argument("--resume")
    pre, _ = first.parse_known_args(argv)

    meta = arrays = None
    name = pre.model
    if pre.resume is not None:
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
    where = f"checkpoint {pre.resume!r}"

    # The recipe: explicit flags, else the checkpoint's (checked like flags), else the defaults.
    recipe = {}
    for k, default in RECIPE.items():
        given = getattr(args, k)
        if given is None and meta and meta["recipe"].get(k) is not None:
            given = checked(meta["recipe"][k], RECIPE_TYPES[k], f"{where}: recipe value {k}")
        recipe[k] = given if given is not None else default
    if meta:
        for k in ("dtype", "seed", "batch_size", "seq_len"):
            if getattr(args, k) is not None and getattr(args, k) != meta["recipe"].get(k):
                raise UsageError(f"{where} was trained with {k}={meta['recipe'].get(k)}; "
                                 f"--{k.replace('_', '-')} {getattr(args, k)} differs")
    if recipe["min_lr"] > recipe["lr"]:
        raise UsageError(f"--min-lr {recipe['min_lr']} is above --lr {recipe['lr']}")
    if recipe["lr_decay_iters"] is None:
        recipe["lr_decay_iters"] = max(recipe["max_iters"], 1)

    # Data: --data, else the checkpoint's corpus, else the default; then the vocabulary.
    absolute = lambda d: os.path.abspath(d) if d not in (None, "shakespeare") else d  # noqa: E731
    spec = absolute(args.data)
    if meta and args.data is None and "data" in meta:
        spec = meta["data"]
        if spec not in (None, "shakespeare") and not (isinstance(spec, str) and os.path.exists(spec)):
            raise UsageError(f"{where} was trained on {spec!r}, which is not there now; pass --data PATH")
        print(f"data: {spec or 'the default corpus'}, as recorded in the checkpoint")
    elif meta and "data" in meta and spec != meta["data"]:
        print(f"note: the checkpoint was trained on {meta['data'] or 'the default corpus'}; "
              f"continuing on --data {args.data}")
    text, corpus = load_corpus(args.data if args.data is not None else spec)
    if meta:
        if len(set(meta["vocab"])) != len(meta["vocab"]) or not meta["vocab"]:
            raise UsageError(f"{where} has a corrupt vocabulary")
        vocab = Vocab(meta["vocab"])
        missing = sorted(set(text) - set(vocab.chars))
        if missing:
            raise UsageError(f"{where}: its vocabulary does not cover the data {corpus!r} "
                             f"({len(missing)} unknown characters, e.g. {''.join(missing[:10])!r})")
    else:
        vocab = Vocab.from_text(text)
    data = vocab.encode(text)
    n = int(0.9 * len(data))
    B, T = recipe["batch_size"], recipe["seq_len"]
    if len(data) - n < T + 1:
        raise UsageError(f"the data is too short: {len(text):,} characters give a validation split of "
                         f"{len(data) - n:,}, shorter than --seq-len + 1 = {T + 1}; use more text or a "
                         "smaller --seq-len")

    # Model config: the checkpoint's (flags may only repeat it), else defaults + flags.
    fields = {f.name: getattr(args, f.name) for f in config_fields(module)}
    if meta:
        for k, v in fields.items():
            if v is not None and meta["config"].get(k) != v:
                raise UsageError(f"{where} has {k}={meta['config'].get(k)}; "
                                 f"--{k.replace('_', '-')} {v} differs (a run resumes with its own config)")
        known = {f.name: f for f in config_fields(module)}
        for k, v in meta["config"].items():
            if k in known:
                checked(v, field_type(known[k]), f"{where}: config value {k}")
        if meta["config"].get("vocab_size") != len(vocab.chars):
            raise UsageError(f"{where} has vocab_size {meta['config'].get('vocab_size')} but a vocabulary of "
                             f"{len(vocab.chars)} characters")
        try:
            cfg = module.Config(**meta["config"])
        except TypeError as e:
            raise UsageError(f"{where} has a config that {name}.py does not accept ({e})")
    else:
        cfg = module.Config(**{k: v for k, v in fields.items() if v is not None}, vocab_size=len(vocab.chars))
    xp, to_host = get_xp(args.device)
    dtype = numpy.dtype(recipe["dtype"])

    # Refuse sizes that cannot fit before allocating anything.
    estimate, avail = memory_estimate(name, cfg, B, T, dtype.itemsize, recipe["eval_iters"]), available_memory(xp)
    if estimate and avail and estimate[0] > avail:
        raise UsageError(f"this run needs about {gib(estimate[0])} of memory ({estimate[1]:,} parameters, "
                         f"batch {B} x {T}), more than the {gib(avail)} available; use a smaller model, "
                         "--batch-size, --seq-len or --eval-iters")
    try:
        model = module.Model(cfg, xp=xp, dtype=dtype, seed=recipe["seed"])
        model.forward(numpy.zeros((1, T), dtype=numpy.int64))  # fails early on, e.g., seq_len > block_size
    except (ValueError, AssertionError, TypeError, ZeroDivisionError) as e:
        raise UsageError(f"invalid {name} configuration: {e}")
    except MemoryError as e:
        raise UsageError(f"the {name} model does not fit in memory ({e})")

    opt = AdamW(model.params, recipe["weight_decay"], (recipe["beta1"], recipe["beta2"]),
                ssm_lr_scale=recipe["ssm_lr_scale"])
    data_rng = numpy.random.default_rng([recipe["seed"], 1])
    step = 0
    if meta:
        for k, v in model.params.items():
            for prefix, target in (("param", model.params), ("adam_m", opt.m), ("adam_v", opt.v)):
                a = arrays.get(f"{prefix}/{k}")
                if a is None or a.shape != v.shape or a.dtype.kind != "f":
                    raise UsageError(f"{where} does not fit {name} with its config ({prefix}/{k} is "
                                     f"{None if a is None else f'{a.dtype} {a.shape}'}, expected {v.shape})")
                if not numpy.isfinite(a).all():
                    raise UsageError(f"{where} holds non-finite values in {prefix}/{k}")
                target[k][...] = xp.asarray(a.astype(dtype))
        step = opt.t = checked(meta["step"], NON_NEGATIVE_INT, f"{where}: step")
        try:
            data_rng.bit_generator.state = meta["data_rng"]
            if "model_rng" in meta and hasattr(model, "rng"):
                model.rng.bit_generator.state = meta["model_rng"]
        except (ValueError, TypeError, KeyError) as e:
            raise UsageError(f"{where} has a corrupt random-generator state ({type(e).__name__}: {e})")
        floor = max(step, recipe["lr_decay_iters"], recipe["warmup_iters"])   # get_lr gives min_lr from here on
        if args.lr_decay_iters is None and floor < recipe["max_iters"]:
            print(f"note: the learning rate keeps the checkpoint's schedule, which reaches --min-lr "
                  f"{recipe['min_lr']} at iteration {recipe['lr_decay_iters']}; iterations "
                  f"{floor}..{recipe['max_iters']} run at --min-lr. "
                  f"Pass --lr-decay-iters {recipe['max_iters']} to stretch the cosine to the new end.")

    prompt = args.prompt if args.prompt is not None else ("\n" if "\n" in vocab.stoi else vocab.chars[0])
    bad = sorted(set(prompt) - set(vocab.chars))
    if bad:
        raise UsageError(f"--prompt has characters outside the vocabulary: {''.join(bad)!r}")
    out_dir = args.out_dir or (os.path.dirname(pre.resume) or "." if pre.resume else f"out-{name}")
    return Run(args=args, recipe=recipe, name=name, cfg=cfg, model=model, opt=opt, xp=xp, to_host=to_host,
               vocab=vocab, corpus=corpus, data_spec=spec, train_data=data[:n], val_data=data[n:],
               data_rng=data_rng, step=step, prompt=prompt, ckpt=os.path.join(out_dir, "ckpt.npz"))


def make_out_dir(path):
    """Create the checkpoint's folder and prove it writable; returns whether it was created."""
    folder = os.path.dirname(path) or "."
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"--out-dir {folder!r} is a file, not a folder")
    if os.path.isdir(path) or (os.path.exists(path) and not os.path.isfile(path)):
        raise UsageError(f"{path!r} exists and is not a checkpoint file; choose another --out-dir")
    created = not os.path.exists(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UsageError(f"--out-dir {folder!r} cannot be {'created' if created else 'written'} ({e.strerror})")
    return created


def train(r):
    """The loop: evaluate and checkpoint every eval_interval iterations and at the end."""
    args, model, opt, xp, rc = r.args, r.model, r.opt, r.xp, r.recipe
    B, T, start, end = rc["batch_size"], rc["seq_len"], r.step, rc["max_iters"]
    last_good = args.resume
    state = lambda: (f"the last good checkpoint is {last_good}" if last_good  # noqa: E731
                     else "no checkpoint was written")
    limit = 3 * math.log(len(r.vocab.chars)) + 3   # a loss this far above chance: diverged (as char-rnn)

    def diverged(loss, what, it):
        if not math.isfinite(loss) or loss > limit:
            raise UsageError(f"the {what} is {loss:.4g} at iteration {it}: the run diverged and stops; "
                             f"{state()}; try a lower --lr")

    windows = {split: eval_windows(getattr(r, f"{split}_data"), B, T, rc["eval_iters"]) for split in ("train", "val")}

    def evaluate(step):
        t0 = time.perf_counter()
        losses = {split: estimate_loss(model, w, xp) for split, w in windows.items()}
        ppl = {k: math.exp(v) if v < 700 else math.inf for k, v in losses.items()}
        print(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        print(f"  perplexity: train {ppl['train']:.2f}, val {ppl['val']:.2f} "
              f"({losses['val'] / math.log(2):.3f} bits/char); eval {time.perf_counter() - t0:.1f} s")
        if step > 0:
            for split in ("train", "val"):
                diverged(losses[split], f"{split} loss", step)
            if not all(bool(xp.isfinite(a).all()) for d in (model.params, opt.m, opt.v) for a in d.values()):
                raise UsageError(f"the parameters are not finite at iteration {step}: the run diverged and "
                                 f"stops; {state()}; try a lower --lr")
            meta = dict(model=r.name, config=dataclasses.asdict(r.cfg), vocab=r.vocab.chars, step=step,
                        recipe=rc, data_rng=r.data_rng.bit_generator.state, corpus=r.corpus,
                        data=r.data_spec, val_loss=losses["val"])
            if hasattr(model, "rng"):
                meta["model_rng"] = model.rng.bit_generator.state
            try:
                save_checkpoint(r.ckpt, model, opt, meta, r.to_host)
            except OSError as e:
                raise UsageError(f"could not write {r.ckpt} ({e.strerror or e}); {state()}")
        return time.perf_counter() - t0

    print(f"training iterations {start}..{end} (batch {B} x {T} characters)"
          + (f", resumed from {args.resume}" if args.resume else ""))
    t_start, t_eval, t_log, it = time.perf_counter(), 0.0, time.perf_counter(), start
    try:
        for it in range(start, end):
            if it % rc["eval_interval"] == 0 and not (it == start and it > 0):
                t_eval += evaluate(it)
                last_good = r.ckpt if it > 0 else last_good
                t_log = time.perf_counter()
            lr = get_lr(it, rc["lr"], rc["min_lr"], rc["warmup_iters"], rc["lr_decay_iters"])
            x, y = get_batch(r.train_data, B, T, r.data_rng)
            loss, norm = train_step(model, opt, x, y, lr, rc["grad_clip"], xp)
            if (it + 1) % args.log_interval == 0 or xp is numpy:
                diverged(float(loss), "loss", it)
            if (it + 1) % args.log_interval == 0:
                dt = (time.perf_counter() - t_log) / args.log_interval
                print(f"iter {it + 1}/{end} | loss {float(loss):.4f} | lr {lr:.2e} | norm {float(norm):.4f} | "
                      f"{dt * 1000:.1f} ms | {B * T / dt:,.0f} tok/s", flush=True)
                t_log = time.perf_counter()
        t_eval += evaluate(end)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted at iteration {it}; {state()}")
    wall = time.perf_counter() - t_start
    print(f"done: {end - start} iterations in {wall:.1f} s ({wall - t_eval:.1f} s training, "
          f"{t_eval:.1f} s evaluation); checkpoint {r.ckpt}")


def guarded(prog, run, argv):
    """run(argv) as a command: bad input (UsageError) is one line and exit 2, Ctrl-C exit 130,
    anything unexpected one line with its type and exit 1 (--debug or SEQ_DEBUG=1: the traceback).
    torch_ref.train uses it (bench.py has its own: it must not import NumPy before it has
    set the thread count); main() below adds train.py's own cleanup."""
    try:
        run(argv)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if "--debug" in argv or os.environ.get("SEQ_DEBUG", "") not in ("", "0"):
            raise
        print(f"{prog}: unexpected error: {type(e).__name__}: {e} (run with --debug, or SEQ_DEBUG=1, "
              "for the traceback)", file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("SEQ_DEBUG", "") not in ("", "0")
    keep_freed_memory()
    made = None
    try:
        # A diverging run overflows; train() checks the loss itself and says so in one line.
        with numpy.errstate(over="ignore", invalid="ignore", divide="ignore"):
            r = setup(argv)
            rc, args = r.recipe, r.args
            print(f"corpus: {r.corpus}: {len(r.train_data) + len(r.val_data):,} characters, vocabulary "
                  f"{len(r.vocab.chars)}; train {len(r.train_data):,}, val {len(r.val_data):,}")
            n_params = sum(int(v.size) for v in r.model.params.values())
            print(f"model: {r.name} {dataclasses.asdict(r.cfg)}, {n_params:,} parameters, "
                  f"{rc['dtype']} on {args.device}")
            decay, rest = r.opt.groups(r.model.params)
            count = lambda names: sum(int(r.model.params[k].size) for k in names)  # noqa: E731
            print(f"optimizer: AdamW, weight decay {rc['weight_decay']} on {len(decay)} tensors ({count(decay):,} "
                  f"parameters), none on {len(rest)} tensors ({count(rest):,} parameters)"
                  + (f"; learning rate x{rc['ssm_lr_scale']} on the SSM dynamics" if rc["ssm_lr_scale"] != 1 else ""))
            if r.step < rc["max_iters"]:
                made = make_out_dir(r.ckpt) and os.path.dirname(r.ckpt)
                train(r)
            elif args.resume:
                print(f"the checkpoint is at step {r.step}, --max-iters is {rc['max_iters']}: nothing to train")
            if args.sample_tokens:
                rng = numpy.random.default_rng(rc["seed"])
                try:
                    text = sample(r.model, r.vocab, r.prompt, args.sample_tokens, args.temperature, args.top_k,
                                  rng, r.to_host)
                except KeyboardInterrupt:
                    raise Interrupted("interrupted while sampling; the checkpoint is complete")
                print(f"--- sample ({args.sample_tokens} characters, temperature {args.temperature}"
                      + (f", top-k {args.top_k}" if args.top_k else "") + ") ---")
                print(r.prompt + text)
        return 0
    except Interrupted as e:
        print(f"\ntrain.py: {e}", file=sys.stderr)
        code = 130
    except KeyboardInterrupt:
        print("\ntrain.py: interrupted before training started; nothing was written", file=sys.stderr)
        code = 130
    except UsageError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        code = 2
    except Exception as e:
        if debug:
            raise
        print(f"train.py: unexpected error: {type(e).__name__}: {e} (run with --debug, or SEQ_DEBUG=1, "
              "for the traceback)", file=sys.stderr)
        code = 1
    if made and os.path.isdir(made) and not os.listdir(made):
        os.rmdir(made)   # a folder this run created and never wrote into
    return code


if __name__ == "__main__":
    sys.exit(main())
