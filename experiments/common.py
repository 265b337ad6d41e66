"""What every experiment shares: the small models, a training loop built on
train.train_step, the masked loss, evaluation, CSV/table/plot helpers, the
argument parsing and the top-level guard (main).

The conventions (the package docstring says more):
- the models are used only through the project's protocol: Config, Model(cfg,
  xp=, dtype=, seed=), .params, .forward, .backward (and cache["dx0"]), .init_state,
  .step; the loss, AdamW, clipping, schedule and the training step are train.py's;
- every model of an experiment gets the same data, budget, schedule and optimizer;
- bad input ends with one line on stderr and exit status 2, before anything is written.
"""
import argparse
import csv
import dataclasses
import importlib.util
import math
import os
import re
import sys
import time
import traceback

import numpy

import train

PROG = "python -m experiments"

# The small configs: 2 layers each, widths chosen so that the parameters besides the
# embedding and head are about the same (63-66K; printed at the start of each run).
SMALL = {
    "rnn": dict(d_model=128, n_layer=2),
    "lstm": dict(d_model=64, n_layer=2),
    "gru": dict(d_model=72, n_layer=2),
    "s4": dict(d_model=96, n_layer=2, d_state=64),
    "mamba": dict(d_model=64, n_layer=2, d_state=16, expand=2, d_conv=4),
    "mamba2": dict(d_model=64, n_layer=2, d_state=48, expand=2, d_conv=4, headdim=32),
    "transformer": dict(d_model=52, n_layer=2, n_head=2),
}
# The attention-only transformer (no MLP block; Zoology's setup for MQAR): d_model 88,
# so that its body (63.5K parameters) matches the SMALL configs, in 2 heads of 44. With
# 1 head of 88, MQAR left the last pair places unbound for 2 seeds of 5 (recall's docstring).
ATTN_ONLY = dict(d_model=88, n_layer=2, n_head=2, mlp=False)
MODELS = [m for m in train.MODELS if m in SMALL and importlib.util.find_spec(m) is not None]

# Parameters that are the embedding, the head or the positions (not counted as "body").
EMBEDDING_NAMES = ("embedding.weight", "lm_head.weight", "lm_head.bias", "transformer.wte.weight",
                   "transformer.wpe.weight")
WEIGHT_DECAY, BETAS, GRAD_CLIP = 0.1, (0.9, 0.99), 1.0
COLORS = {"rnn": "tab:gray", "lstm": "tab:blue", "gru": "tab:cyan", "s4": "tab:orange",
          "mamba": "tab:red", "mamba2": "tab:pink", "transformer": "tab:green",
          "transformer-nopos": "tab:olive", "transformer-window": "tab:purple"}


class UsageError(train.UsageError):
    """Bad input: one line on stderr, exit status 2."""


# ---------------------------------------------------------------------- device
# The array module of every model built here: NumPy, or CuPy after --device gpu
# (main sets it once). The data are made on the host with NumPy; fit() uploads each
# batch, and what is measured comes back through to_host().
XP = numpy


def use_device(device):
    """Build the models on 'cpu' (NumPy) or 'gpu' (CuPy; UsageError when there is none)."""
    global XP
    XP = train.get_xp(device)[0]


def to_host(a):
    """A device array as a NumPy array (CuPy's have .get()); host arrays pass through."""
    return a.get() if hasattr(a, "get") else a


# ---------------------------------------------------------------------- models
def has_mlp_option():
    """Whether transformer.py's Config can drop the MLP block (Config.mlp)."""
    import transformer
    return "mlp" in {f.name for f in dataclasses.fields(transformer.Config)}


def make_model(name, vocab_size, seed=0, dtype=numpy.float32, **overrides):
    """A model of the SMALL config (plus overrides) through the protocol."""
    module = importlib.import_module(name)
    cfg = module.Config(**{**SMALL[name], **overrides, "vocab_size": vocab_size})
    return module.Model(cfg, xp=XP, dtype=dtype, seed=seed)


def transformer_overrides(kind):
    """Config overrides for --transformer: 'mlp' (the SMALL block) or 'attn' (attention only)."""
    if kind == "mlp":
        return {}
    if not has_mlp_option():
        raise UsageError("--transformer attn needs transformer.py's Config.mlp, which this checkout lacks; "
                         "use --transformer mlp")
    return dict(ATTN_ONLY)


def resolve_transformer(a):
    """--transformer auto -> attn when transformer.py has Config.mlp, else mlp; checks the value."""
    if a.transformer not in ("attn", "mlp", "auto"):
        raise UsageError(f"--transformer must be 'attn', 'mlp' or 'auto', got {a.transformer!r}")
    if a.transformer == "auto":
        a.transformer = "attn" if has_mlp_option() else "mlp"
    if "transformer" in a.models:
        transformer_overrides(a.transformer)


def count_params(model):
    """(all parameters, the body: all but the embedding, head and positions)."""
    total = sum(int(v.size) for v in model.params.values())
    emb = sum(int(v.size) for k, v in model.params.items() if k in EMBEDDING_NAMES)
    return total, total - emb


def float64_copy(name, model, vocab_size, seed=0):
    """The same model in float64 (the same arrays, cast): for measurements that underflow in float32."""
    m64 = make_model(name, vocab_size, seed, numpy.float64,
                     **{k: v for k, v in dataclasses.asdict(model.cfg).items() if k != "vocab_size"})
    for k, v in model.params.items():
        m64.params[k][...] = v
    return m64


def state_nbytes(state):
    """Bytes of the memory a model carries from one token to the next: every array in
    the state, except s4's "consts" (the discretized constants, the same for every
    sequence) and the transformer's "tokens" (kept only to re-encode a full cache)."""
    if isinstance(state, dict):
        return sum(state_nbytes(v) for k, v in state.items() if k not in ("consts", "tokens"))
    if isinstance(state, (list, tuple)):
        return sum(state_nbytes(v) for v in state)
    return int(getattr(state, "nbytes", 0))


def state_bytes_after(model, n_tokens, vocab_size, seed=0):
    """State bytes per sequence after stepping n_tokens random tokens at batch 1."""
    tokens = XP.asarray(numpy.random.default_rng(seed).integers(0, vocab_size, n_tokens))
    state = model.init_state(1)
    for t in range(n_tokens):
        _, state = model.step(tokens[t:t + 1], state)
    return state_nbytes(state)


def print_params(models, vocab_size):
    rows = []
    for name, model in models.items():
        total, body = count_params(model)
        cfg = {k: v for k, v in dataclasses.asdict(model.cfg).items()
               if k in ("d_model", "n_layer", "n_head", "d_state", "expand", "block_size", "pos_emb", "mlp")}
        rows.append([name, f"{total:,}", f"{body:,}", " ".join(f"{k}={v}" for k, v in cfg.items())])
    print(f"models (vocabulary {vocab_size}):")
    markdown_table(["model", "params", "params w/o embedding+head", "config"], rows)


# ------------------------------------------------------------ the masked loss
class Masked:
    """A model seen through a mask: forward returns only the logits at the masked
    positions, as one (1, M, V) row, so that train.cross_entropy (a mean over all
    positions it is given) becomes the mean over the M masked positions; backward
    scatters dlogits back, zero elsewhere. This lets train.train_step train on the
    synthetic tasks, whose loss counts only the answer positions."""

    def __init__(self, model, mask):
        self.model, self.mask, self.params = model, mask, model.params

    def forward(self, x, train=False):
        logits, cache = self.model.forward(x, train=train)
        return logits[self.mask][None], (cache, logits.shape, logits.dtype)

    def backward(self, dlogits, cache):
        cache, shape, dtype = cache
        full = self.model.xp.zeros(shape, dtype)
        full[self.mask] = dlogits[0]
        return self.model.backward(full, cache)


def masked_cross_entropy(logits, y, mask):
    """train.py's mean cross-entropy over the positions where mask is True; zero gradient elsewhere."""
    loss, d = train.cross_entropy(logits[mask][None], y[mask][None])
    dlogits = numpy.zeros_like(logits)
    dlogits[mask] = d[0]
    return loss, dlogits


# -------------------------------------------------------------- train, evaluate
def fit(model, stages, lr, label, probe=None, probe_every=0, weight_decay=WEIGHT_DECAY):
    """Train with train.train_step on a list of stages [(iters, sample)], sample() ->
    (x, y, mask or None). One schedule over all stages: linear warm-up over the first
    10%, cosine to lr/10; AdamW with weight_decay on the matrices. probe(model) -> a
    number, printed and recorded every probe_every iterations. Returns dict(loss (mean
    of the last 10%), seconds, diverged, curve [(iteration, probe value)])."""
    iters = sum(n for n, _ in stages)
    opt = train.AdamW(model.params, weight_decay, BETAS)
    warmup, every = max(1, iters // 10), max(1, iters // 5)
    losses, curve, t0, it = [], [], time.perf_counter(), 0
    for n, sample in stages:
        for _ in range(n):
            x, y, mask = (None if a is None else XP.asarray(a) for a in sample())   # to the device
            lr_it = train.get_lr(it, lr, lr / 10, warmup, iters)
            if mask is None:
                loss, _ = train.train_step(model, opt, x, y, lr_it, GRAD_CLIP, XP)
            else:
                loss, _ = train.train_step(Masked(model, mask), opt, x, y[mask][None], lr_it, GRAD_CLIP, XP)
            loss = float(loss)
            if not math.isfinite(loss):
                print(f"  {label}: the loss is {loss} at iteration {it}: diverged, training stops here")
                return dict(loss=loss, seconds=time.perf_counter() - t0, diverged=True, curve=curve)
            losses.append(loss)
            it += 1
            note = ""
            if probe is not None and probe_every and (it % probe_every == 0 or it == iters):
                curve.append((it, probe(model)))
                note = f" | probe {curve[-1][1]:.3f}"
            if it % every == 0 or it == iters or note:
                dt = time.perf_counter() - t0
                print(f"  {label}: iter {it}/{iters} | loss {loss:.4f}{note} | {dt:.1f} s "
                      f"({dt / it * 1000:.0f} ms/iter)", flush=True)
    tail = losses[-max(1, iters // 10):]
    return dict(loss=sum(tail) / len(tail), seconds=time.perf_counter() - t0, diverged=False, curve=curve)


def masked_accuracy(model, x, y, mask, chunk=64):
    """Fraction of the masked positions where the argmax of the logits is the target;
    also per row (the fraction of a row's masked positions that are right)."""
    right, per_row = 0, []
    for s in range(0, len(x), chunk):
        logits, _ = model.forward(x[s:s + chunk])
        ok = (to_host(logits.argmax(-1)) == y[s:s + chunk]) & mask[s:s + chunk]
        right += int(ok.sum())
        per_row.extend(ok.sum(1) / mask[s:s + chunk].sum(1))
    return right / int(mask.sum()), numpy.array(per_row)


def token_losses(logits, y):
    """Cross-entropy at every position (B, T), in float64 (no mean), on the host."""
    z = to_host(logits).astype(numpy.float64)
    m = z.max(-1, keepdims=True)
    lse = m[..., 0] + numpy.log(numpy.exp(z - m).sum(-1))
    return lse - numpy.take_along_axis(z, y[..., None], -1)[..., 0]


def mean_spread(values):
    """'mean ± half-range' of a list (the spread over seeds), or the value for one seed."""
    v = numpy.asarray(values, float)
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{v.mean():.3f} ± {(v.max() - v.min()) / 2:.3f}"


# ---------------------------------------------------------------- output helpers
def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    print(f"wrote {path} ({len(rows)} rows)")


def markdown_table(header, rows):
    """The rows as a markdown table (what the README pastes), printed and returned."""
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    text = "\n".join(lines)
    print(text)
    return text


def pyplot():
    """matplotlib.pyplot with the Agg backend, or None (and a note) when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print("(matplotlib is not installed: no PNG; the CSV has every number)")
        return None


def save_png(fig, plt, path):
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KB)")


def log_ticks(ax, values, axis="x"):
    """Log axis with plain tick labels at `values` (no 3x10^0 minor labels)."""
    import matplotlib.ticker as mt
    getattr(ax, f"set_{axis}scale")("log")
    a = getattr(ax, f"{axis}axis")
    a.set_major_locator(mt.FixedLocator(values))
    a.set_major_formatter(mt.FixedFormatter([str(v) for v in values]))
    a.set_minor_formatter(mt.NullFormatter())


def verdict(agrees):
    return "agrees" if agrees else "DISAGREES"


# ========================================================================= CLI
class Parser(argparse.ArgumentParser):
    """argparse, with errors as UsageError (one line, exit 2), and "-1e-3" read as a
    (negative, then refused) number rather than as an unknown flag."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$")

    def error(self, message):
        raise UsageError(message)


def _number(kind, s):
    try:
        v = kind(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a valid {kind.__name__}")
    if kind is float and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
    return v


def positive(kind):
    def parse(s):
        v = _number(kind, s)
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {s}")
        return v
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def non_negative_int(s):
    v = _number(int, s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def non_negative_float(s):
    v = _number(float, s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def int_list(s):
    try:
        v = [int(p) for p in s.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of integers")
    if not v or any(p <= 0 for p in v):
        raise argparse.ArgumentTypeError(f"{s!r}: give positive integers, e.g. 2,4,8")
    return sorted(set(v))


def seed_list(s):
    try:
        v = [int(p) for p in s.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of integers")
    if not v or any(p < 0 for p in v):
        raise argparse.ArgumentTypeError(f"{s!r}: give seeds >= 0, e.g. 0,1,2")
    return list(dict.fromkeys(v))


def lr_list(s):
    v = [_number(float, p) for p in s.split(",") if p.strip()]
    if not v or any(not p > 0 for p in v):
        raise argparse.ArgumentTypeError(f"{s!r}: give positive learning rates, e.g. 1e-3,3e-3,1e-2")
    return sorted(set(v))


def model_list(s):
    v = [p.strip() for p in s.split(",") if p.strip()]
    bad = [p for p in v if p not in MODELS]
    if bad or not v:
        raise argparse.ArgumentTypeError(f"unknown model(s) {', '.join(bad) or repr(s)}; choose from "
                                         + ",".join(MODELS))
    return list(dict.fromkeys(v))


def model_list_or_none(s):
    return [] if s.strip().lower() in ("", "none") else model_list(s)


def adder(sp, defaults):
    """add(flag, type, help): a flag whose default comes from defaults[key] = (full, --quick)."""
    def add(flag, typ, help_, key=None):
        key = key or flag[2:].replace("-", "_")
        full, quick = defaults[key]
        show = ",".join(map(str, full)) if isinstance(full, list) else full
        qshow = ",".join(map(str, quick)) if isinstance(quick, list) else quick
        sp.add_argument(flag, type=typ, default=None, help=f"{help_} (default {show}; --quick {qshow})")
    return add


def build_parser(modules):
    p = Parser(prog=PROG, description="What the models remember, measured: one subcommand per claim. Each "
               "prints progress and a table, and writes CSV (and a PNG when matplotlib is installed) under "
               "--out-dir.",
               epilog=f"Run '{PROG} SUBCOMMAND --help' for its flags. --quick takes seconds (a smoke test: "
               "its numbers mean nothing). Unexpected errors print one line; --debug (or SEQ_DEBUG=1) shows "
               "the traceback.")
    p.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = p.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=Parser)
    for mod in modules:
        sp = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.DESCRIPTION)
        sp.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds (smoke test)")
        sp.add_argument("--out-dir", default="results", help="where the CSV and PNG go (default results/)")
        sp.add_argument("--models", type=model_list, default=list(MODELS),
                        help="comma-separated subset of " + ",".join(MODELS) + " (default all)")
        sp.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
        if getattr(mod, "DEVICE", False):
            sp.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                            help="NumPy on the CPU, or CuPy on a GPU (the same runs; a GPU affords larger "
                            "--iters)")
        if not getattr(mod, "SEEDS", False):
            sp.add_argument("--seed", type=non_negative_int, default=0,
                            help="seed of the data and the inits (default 0)")
        if "lr" in mod.DEFAULTS:     # the experiments that train
            sp.add_argument("--weight-decay", type=non_negative_float, default=WEIGHT_DECAY,
                            help=f"AdamW's decoupled weight decay on the weight matrices, every model "
                            f"(default {WEIGHT_DECAY}, train.py's)")
        mod.add_arguments(sp, adder(sp, mod.DEFAULTS))
    return p


def parse(argv, modules):
    a = build_parser(modules).parse_args(argv)
    if a.command is None:
        raise UsageError("give a subcommand: " + ", ".join(m.NAME for m in modules) + " (see --help)")
    mod = {m.NAME: m for m in modules}[a.command]
    for key, (full, quick) in mod.DEFAULTS.items():
        if getattr(a, key, None) is None:
            setattr(a, key, quick if a.quick else full)
    if hasattr(mod, "check"):
        mod.check(a)
    return a, mod


def check_memory(what, nbytes):
    """Refuse sizes whose arrays cannot fit: nbytes (an estimate) against the machine's memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if nbytes > total / 2:
        raise UsageError(f"{what} needs about {nbytes / 2 ** 30:,.0f} GiB of activations, more than half of "
                         f"this machine's {total / 2 ** 30:.1f} GiB; use a smaller batch or length")


def activation_bytes(batch, T, attention=True):
    """A coarse upper estimate of one training step's arrays for the SMALL models: about
    64 KB per token (Mamba's (d_inner, d_state) scan states per layer dominate), plus
    the transformer's (B, heads, T, T) attention matrices (a few per layer, float32)."""
    return batch * T * 65536 + (batch * 2 * T * T * 4 * 4 * 2 if attention else 0)


def prepare_out_dir(path):
    """Create the output folder and prove it writable; UsageError (nothing left behind) if not."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--out-dir {path!r} exists and is not a folder")
    created = not os.path.exists(path)
    probe = os.path.join(path, ".write-test")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        if created and os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)
        raise UsageError(f"--out-dir {path!r} cannot be written ({e.strerror or e})")


def main(modules, argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("SEQ_DEBUG", "") not in ("", "0")
    try:
        a, mod = parse(argv, modules)
        use_device(getattr(a, "device", "cpu"))
        prepare_out_dir(a.out_dir)
        t0 = time.perf_counter()
        if a.quick:
            print("--quick: tiny sizes, a smoke test; the numbers mean nothing")
        with numpy.errstate(over="ignore", invalid="ignore", divide="ignore"):
            mod.run(a)
        print(f"done: {a.command} in {time.perf_counter() - t0:.0f} s")
    except train.UsageError as e:
        print(f"experiments: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:          # a file that cannot be written late (disk full, removed folder)
        print(f"experiments: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("experiments: interrupted", file=sys.stderr)
        return 130
    except Exception as e:        # a bug: one line unless --debug / SEQ_DEBUG=1
        if debug:
            traceback.print_exc()
        else:
            msg = " ".join(str(e).split())
            print(f"experiments: internal error: {type(e).__name__}: {msg} (rerun with --debug or SEQ_DEBUG=1 "
                  "for the traceback)", file=sys.stderr)
        return 1
    return 0


def char_data(spec, need_train, need_val, what):
    """The char-LM corpus for --data, split 90/10 as train.py: (text, description, vocab,
    train ids, validation ids), or UsageError when it is unusable or too short."""
    if spec is not None and spec != "shakespeare" and os.path.exists(spec) and not os.path.isfile(spec):
        kind = "a folder" if os.path.isdir(spec) else "not a regular file"
        raise UsageError(f"--data {spec!r} is {kind}; give a UTF-8 text file")
    text, corpus = train.load_corpus(spec)
    vocab = train.Vocab.from_text(text)
    data = vocab.encode(text)
    n = int(0.9 * len(data))
    if n < need_train or len(data) - n < need_val:
        raise UsageError(f"the data is too short: {len(data):,} characters split 90/10 cannot hold windows of "
                         f"{need_train} (training) and {need_val} (validation) characters ({what}); use more text")
    return text, corpus, vocab, data[:n], data[n:]
