"""
experiments.py: what the six models remember, measured. One subcommand per claim.

    python experiments.py recall      # multi-query associative recall (MQAR, Arora et al. 2023, "Zoology")
    python experiments.py copy        # selective copying (Gu & Dao 2023, "Mamba", section 4.1.1)
    python experiments.py cost        # time and memory against sequence length: O(N) vs O(N^2), state vs KV cache
    python experiments.py length      # train at length 128, measure the loss at each position up to 8x longer
    python experiments.py gradients   # |dL_T / dx_{T-k}| against the distance k: vanishing gradients
    python experiments.py recall --quick          # a smoke test of a few seconds (its numbers mean nothing)
    python experiments.py recall --help           # every flag of one experiment

The question is the project's: how does a network remember? Five models keep a
fixed-size running state (rnn, lstm, gru, s4, mamba); the transformer keeps the
whole history (its KV cache). Each subcommand prints its progress and a table,
writes its numbers as CSV under --out-dir (default results/) and, when matplotlib
is installed (optional; it is not in requirements.txt), a small PNG next to it.

What every experiment shares
- The models are used only through the project's protocol (DESIGN.md): Config,
  Model(cfg, dtype, seed), .params, .forward, .backward (and cache["dx0"]),
  .init_state, .step; the loss, AdamW, clipping and schedule are train.py's.
- Small configs of comparable size (SMALL below: about 63-66K parameters besides
  the embedding and head, 2 layers each), so that six models x a few settings
  train in minutes on two CPU cores. They are not the standard configs of DESIGN.md.
- The same training budget for every model: the same iterations, batch, learning
  rate (linear warm-up over the first 10%, cosine to lr/10), AdamW (betas 0.9/0.99,
  weight decay 0.1 on matrices, by train.py's rule), gradient clipping at 1.0, and
  the same batches (each model's data stream starts from the same seed).
  Nothing is tuned per model: a model that would need a different learning rate
  or more steps is shown as it is, and the summary says so.
- float32 everywhere, except the gradient measurement (float64 copies of the
  trained float32 models, so that a gradient of 1e-40 is still a number).
- State bytes: the sum of .nbytes over the arrays of the state that .step returns
  after N tokens at batch 1: h (and c) for rnn/lstm/gru, the complex SSM state for
  s4, the SSM and conv states for mamba, K and V for the transformer. Not counted:
  s4's discretized constants (zeta, Bbar, C~: the same for every sequence, they are
  parameters in another form) and the transformer's token history (kept only to
  re-encode the cache past block_size with learned positions).

Bad input (an unknown model, a bad value, unusable data) ends with one line on
stderr and exit status 2.
"""
import argparse
import csv
import dataclasses
import importlib
import math
import os
import sys
import time
import tracemalloc

import numpy

import train

MODELS = list(train.MODELS)          # rnn, lstm, gru, s4, mamba, transformer, mamba2

# The small configs: 2 layers each, widths chosen so that the parameters besides the
# embedding and head are about the same (63-66K; printed at the start of each run).
SMALL = {
    "rnn": dict(d_model=128, n_layer=2),
    "lstm": dict(d_model=64, n_layer=2),
    "gru": dict(d_model=72, n_layer=2),
    "s4": dict(d_model=96, n_layer=2, d_state=64),
    "mamba": dict(d_model=64, n_layer=2, d_state=16, expand=2, d_conv=4),
    "transformer": dict(d_model=52, n_layer=2, n_head=2),
    "mamba2": dict(d_model=64, n_layer=2, d_state=48, expand=2, d_conv=4, headdim=32),
}
# Parameters that are the embedding, the head or the positions (not counted as "body").
EMBEDDING_NAMES = ("embedding.weight", "lm_head.weight", "lm_head.bias", "transformer.wte.weight",
                   "transformer.wpe.weight")
WEIGHT_DECAY, BETAS, GRAD_CLIP = 0.1, (0.9, 0.99), 1.0
COLORS = {"rnn": "tab:gray", "lstm": "tab:blue", "gru": "tab:cyan", "s4": "tab:orange",
          "mamba": "tab:red", "transformer": "tab:green", "transformer-nopos": "tab:olive",
          "transformer-window": "tab:purple", "mamba2": "tab:brown"}


class UsageError(train.UsageError):
    """Bad input: one line on stderr, exit status 2."""


# ---------------------------------------------------------------------- models
def make_model(name, vocab_size, seed=0, dtype=numpy.float32, **overrides):
    """A model of the SMALL config (plus overrides) through the protocol."""
    module = importlib.import_module(name)
    cfg = module.Config(**{**SMALL[name], **overrides, "vocab_size": vocab_size})
    return module.Model(cfg, dtype=dtype, seed=seed)


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
    """Bytes of the memory a model carries from one token to the next (see the module
    docstring): every array in the state, except s4's "consts" and the transformer's "tokens"."""
    if isinstance(state, dict):
        return sum(state_nbytes(v) for k, v in state.items() if k not in ("consts", "tokens"))
    if isinstance(state, (list, tuple)):
        return sum(state_nbytes(v) for v in state)
    return int(getattr(state, "nbytes", 0))


def state_bytes_after(model, n_tokens, vocab_size, seed=0):
    """State bytes per sequence after stepping n_tokens random tokens at batch 1."""
    tokens = numpy.random.default_rng(seed).integers(0, vocab_size, n_tokens)
    state = model.init_state(1)
    for t in tokens:
        _, state = model.step(numpy.array([t]), state)
    return state_nbytes(state)


# ---------------------------------------------------------------------- tasks
def mqar(rng, batch, seq_len, n_pairs, n_keys=32, n_values=32):
    """Multi-query associative recall (Arora et al. 2023, "Zoology", section 3.1).

    Each row: K key-value pairs  k1 v1 k2 v2 ... kK vK  (keys distinct, values distinct),
    then a query region where every key appears once more, in random order, at random
    positions; the other positions hold the filler token 0. At a query position the
    target is that key's value from the pairs; only those K positions count
    (mask True), everything else is ignored by the loss and the accuracy.
    Vocabulary: 0 filler, keys 1..n_keys, values n_keys+1..n_keys+n_values.
    n_pairs: an int, or a list from which each row draws its K.
    Returns x, y (B, T) int64 and mask (B, T) bool.

    Zoology's generator differs in two details: its query gaps follow a power law
    (queries crowd the start of the region) and its fillers are random tokens; here
    positions are uniform and the filler is one token."""
    choices = [n_pairs] if isinstance(n_pairs, int) else list(n_pairs)
    for K in choices:
        if not (1 <= K <= min(n_keys, n_values) and 3 * K <= seq_len):
            raise ValueError(f"MQAR with {K} pairs needs 1 <= K <= {min(n_keys, n_values)} keys/values "
                             f"and 3K <= seq_len ({seq_len})")
    x = numpy.zeros((batch, seq_len), numpy.int64)
    y = numpy.zeros((batch, seq_len), numpy.int64)
    mask = numpy.zeros((batch, seq_len), bool)
    for b in range(batch):
        K = int(choices[rng.integers(len(choices))]) if len(choices) > 1 else choices[0]
        keys = 1 + rng.choice(n_keys, K, replace=False)
        values = 1 + n_keys + rng.choice(n_values, K, replace=False)
        x[b, 0:2 * K:2], x[b, 1:2 * K:2] = keys, values              # the pairs
        where = 2 * K + rng.choice(seq_len - 2 * K, K, replace=False)  # query positions
        order = rng.permutation(K)
        x[b, where], y[b, where], mask[b, where] = keys[order], values[order], True
    return x, y, mask


COPY_BLANK, COPY_MARKER = 0, 1


def selective_copy(rng, batch, n_region, n_tokens, n_content, selective=True):
    """Selective copying (Gu & Dao 2023, section 3.1 and 4.1.1; the H3/Hyena task).

    Each row: a region of n_region positions holding n_tokens content tokens at random
    positions (kept in order) and the noise token elsewhere; then a marker; the model
    must output the content tokens in order: the target at the marker is the first,
    and at the n_tokens - 1 noise tokens that follow, the next ones (mask True there).
    Vocabulary: 0 noise (blank), 1 marker, content 2..n_content+1 (drawn with replacement).
    selective=False is the plain copying task: the content fills the first n_tokens
    positions, a fixed delay a time-invariant convolution can learn.
    Returns x, y (B, n_region + n_tokens) int64 and mask (same shape) bool."""
    if not (1 <= n_tokens <= n_region and n_content >= 1):
        raise ValueError(f"selective copying needs 1 <= tokens ({n_tokens}) <= region ({n_region}) "
                         f"and content >= 1 ({n_content})")
    T = n_region + n_tokens
    x = numpy.full((batch, T), COPY_BLANK, numpy.int64)
    y = numpy.zeros((batch, T), numpy.int64)
    mask = numpy.zeros((batch, T), bool)
    for b in range(batch):
        where = (numpy.sort(rng.choice(n_region, n_tokens, replace=False)) if selective
                 else numpy.arange(n_tokens))
        content = 2 + rng.integers(0, n_content, n_tokens)
        x[b, where] = content
        x[b, n_region] = COPY_MARKER
        y[b, n_region:], mask[b, n_region:] = content, True
    return x, y, mask


# -------------------------------------------------------------- train, evaluate
def masked_cross_entropy(logits, y, mask):
    """train.py's mean cross-entropy over the positions where mask is True (all if None);
    dlogits is zero elsewhere."""
    if mask is None:
        return train.cross_entropy(logits, y)
    loss, d = train.cross_entropy(logits[mask], y[mask])
    dlogits = numpy.zeros_like(logits)
    dlogits[mask] = d
    return loss, dlogits


def fit(model, sample, iters, lr, label):
    """Train with train.py's pieces: forward, masked loss, backward, clip, AdamW, schedule.
    sample() -> (x, y, mask). Returns dict(loss (mean of the last 10%), seconds, diverged)."""
    opt = train.AdamW(model.params, WEIGHT_DECAY, BETAS)
    warmup = max(1, iters // 10)
    every = max(1, iters // 5)
    losses, t0 = [], time.perf_counter()
    for it in range(iters):
        x, y, mask = sample()
        logits, cache = model.forward(x, train=True)
        loss, dlogits = masked_cross_entropy(logits, y, mask)
        loss = float(loss)
        if not math.isfinite(loss):
            print(f"  {label}: the loss is {loss} at iteration {it}: diverged, training stops here")
            return dict(loss=loss, seconds=time.perf_counter() - t0, diverged=True)
        grads = model.backward(dlogits, cache)
        train.clip_grad_norm(grads, GRAD_CLIP)
        opt.step(model.params, grads, train.get_lr(it, lr, lr / 10, warmup, iters))
        losses.append(loss)
        if (it + 1) % every == 0 or it + 1 == iters:
            dt = time.perf_counter() - t0
            print(f"  {label}: iter {it + 1}/{iters} | loss {loss:.4f} | {dt:.1f} s "
                  f"({dt / (it + 1) * 1000:.0f} ms/iter)", flush=True)
    tail = losses[-max(1, iters // 10):]
    return dict(loss=sum(tail) / len(tail), seconds=time.perf_counter() - t0, diverged=False)


def masked_accuracy(model, x, y, mask, chunk=64):
    """Fraction of the masked positions where the argmax of the logits is the target;
    also per row (the fraction of a row's masked positions that are right)."""
    right, per_row = 0, []
    for s in range(0, len(x), chunk):
        logits, _ = model.forward(x[s:s + chunk])
        ok = (logits.argmax(-1) == y[s:s + chunk]) & mask[s:s + chunk]
        right += int(ok.sum())
        per_row.extend(ok.sum(1) / mask[s:s + chunk].sum(1))
    return right / int(mask.sum()), numpy.array(per_row)


def token_losses(logits, y):
    """Cross-entropy at every position (B, T), in float64 (no mean)."""
    z = logits.astype(numpy.float64)
    m = z.max(-1, keepdims=True)
    lse = m[..., 0] + numpy.log(numpy.exp(z - m).sum(-1))
    return lse - numpy.take_along_axis(z, y[..., None], -1)[..., 0]


# ---------------------------------------------------------------- output helpers
def write_csv(path, header, rows):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
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
    """matplotlib.pyplot with the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
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


def no_plot_note():
    print("(matplotlib is not installed: no PNG; the CSV has every number)")


def verdict(agrees):
    return "agrees" if agrees else "DISAGREES"


def print_params(models, vocab_size, extra=None):
    """The parameter counts, as the brief asks (the body is comparable across models)."""
    rows = []
    for name, model in models.items():
        total, body = count_params(model)
        cfg = {k: v for k, v in dataclasses.asdict(model.cfg).items()
               if k in ("d_model", "n_layer", "n_head", "d_state", "expand", "block_size", "pos_emb")}
        rows.append([name, f"{total:,}", f"{body:,}", " ".join(f"{k}={v}" for k, v in cfg.items())])
    print(f"models (vocabulary {vocab_size}):")
    markdown_table(["model", "params", "params w/o embedding+head", "config"], rows)


# ====================================================================== recall
def cmd_recall(a):
    vocab = 1 + 2 * a.n_keys
    pairs = a.pairs
    for K in pairs:
        if 3 * K > a.seq_len or K > a.n_keys:
            raise UsageError(f"--pairs {K} does not fit: it needs 3 x pairs <= --seq-len ({a.seq_len}) "
                             f"and pairs <= --n-keys ({a.n_keys})")
    print(f"MQAR: sequences of {a.seq_len} tokens, {a.n_keys} keys and {a.n_keys} values (vocabulary {vocab}); "
          f"training on a mixture of {pairs} pairs; {a.iters} iterations x batch {a.batch}, lr {a.lr}, "
          f"for every model")
    models = {n: make_model(n, vocab, a.seed, **({"block_size": a.seq_len} if n == "transformer" else {}))
              for n in a.models}
    print_params(models, vocab)
    # the evaluation sets: one per K, drawn once with a fixed seed, the same for every model
    evals = {K: mqar(numpy.random.default_rng([a.seed, 7, K]), a.eval, a.seq_len, K, a.n_keys, a.n_keys)
             for K in pairs}
    rows, t_all = [], time.perf_counter()
    for name, model in models.items():
        rng = numpy.random.default_rng([a.seed, 1])              # the same batches for every model
        fitted = fit(model, lambda: mqar(rng, a.batch, a.seq_len, pairs, a.n_keys, a.n_keys),
                     a.iters, a.lr, f"recall {name}")
        sbytes = state_bytes_after(model, a.seq_len, vocab)
        total, body = count_params(model)
        for K in pairs:
            acc, _ = masked_accuracy(model, *evals[K])
            rows.append([name, total, body, sbytes, K, acc, fitted["loss"], fitted["seconds"], fitted["diverged"]])
        print(f"  {name}: accuracy " + ", ".join(f"{r[4]} pairs {r[5]:.3f}" for r in rows if r[0] == name)
              + f"; state {sbytes:,} bytes per sequence at length {a.seq_len}", flush=True)
    print(f"all models trained and evaluated in {time.perf_counter() - t_all:.0f} s")
    write_csv(os.path.join(a.out_dir, "recall.csv"),
              ["model", "params", "params_body", "state_bytes", "n_pairs", "accuracy", "final_train_loss",
               "train_seconds", "diverged"], rows)

    # summary table: one row per model, a column per K
    print(f"\naccuracy on the query positions ({a.eval} sequences per column; chance = 1/{a.n_keys} = "
          f"{1 / a.n_keys:.3f}):")
    acc = {(r[0], r[4]): r[5] for r in rows}
    sb = {r[0]: r[3] for r in rows}
    markdown_table(["model", "params", f"state bytes at T={a.seq_len}"] + [f"{K} pairs" for K in pairs],
                   [[n, f"{count_params(models[n])[0]:,}", f"{sb[n]:,}"] + [acc[n, K] for K in pairs]
                    for n in models])
    recall_summary(models, acc, pairs, a)

    plt = pyplot()
    if plt is None:
        return no_plot_note()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
    for n in models:
        ax1.plot(pairs, [acc[n, K] for K in pairs], "o-", color=COLORS[n], label=n, ms=4)
        ax2.scatter([sb[n]], [acc[n, pairs[-1]]], color=COLORS[n], label=n, s=25)
        ax2.annotate(n, (sb[n], acc[n, pairs[-1]]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax1.plot(pairs, [1 / K for K in pairs], "k:", lw=0.8, label="1/K (a seen value)")
    ax1.set(xlabel="key-value pairs", ylabel="accuracy", ylim=(-0.03, 1.03), title="MQAR accuracy")
    log_ticks(ax1, pairs)
    ax1.legend(fontsize=7)
    ax2.set(xscale="log", xlabel=f"state bytes per sequence (T={a.seq_len})", ylim=(-0.03, 1.03),
            ylabel=f"accuracy, {pairs[-1]} pairs", title="accuracy vs memory")
    save_png(fig, plt, os.path.join(a.out_dir, "recall.png"))


def recall_summary(models, acc, pairs, a):
    """What Zoology reports, against what this run measured."""
    lo, hi = pairs[0], pairs[-1]
    print(f"\nagainst the papers (Zoology, Arora et al. 2023; Mamba, Gu & Dao 2023), at {hi} pairs:")
    if "transformer" in models:
        t = acc["transformer", hi]
        print(f"- attention solves MQAR at every number of pairs (its KV cache holds every pair): "
              f"transformer {t:.3f} -> {verdict(t >= 0.9)}")
    for n in models:
        if n != "transformer":
            print(f"- a fixed-size state has to squeeze more pairs in: {n} {acc[n, lo]:.3f} at {lo} pairs -> "
                  f"{acc[n, hi]:.3f} at {hi} -> {verdict(acc[n, hi] < acc[n, lo])} (falls as pairs grow)")
    if "s4" in models and "mamba" in models:
        print(f"- input-dependent (selective) beats time-invariant: mamba {acc['mamba', hi]:.3f} vs s4 "
              f"{acc['s4', hi]:.3f} -> {verdict(acc['mamba', hi] > acc['s4', hi])}")
    if "transformer" in models:
        best = max((n for n in models if n != "transformer"), key=lambda n: acc[n, hi], default=None)
        if best:
            print(f"- attention beats every fixed-state model: transformer {acc['transformer', hi]:.3f} vs best "
                  f"other ({best}) {acc[best, hi]:.3f} -> {verdict(acc['transformer', hi] >= acc[best, hi])}")
    # the plateau: answering with one of the K values of the sequence, at random, scores 1/K
    plateau = [n for n in models if all(acc[n, K] < 1.5 / K for K in pairs)]
    if plateau:
        print(f"- at or near 1/K at every K (answering with one of the K values seen, but not the right one; "
              f"the key-value binding not learned): {', '.join(plateau)}")
    print(f"  (caveat: {a.iters} iterations x {a.batch} sequences at one learning rate for every model; "
          "Zoology trains far longer and sweeps the learning rate per model, so a model that is merely "
          "slow to learn the task shows up here as unable to do it.)")


# ======================================================================== copy
def cmd_copy(a):
    vocab = a.content + 2
    T = a.region + a.tokens
    print(f"selective copying: {a.tokens} content tokens ({a.content} symbols) among {a.region - a.tokens} "
          f"noise tokens, then a marker; the model outputs the {a.tokens} tokens in order (sequence length "
          f"{T}, vocabulary {vocab}); {a.iters} iterations x batch {a.batch}, lr {a.lr}, for every model")
    runs = [(n, True) for n in a.models] + [(n, False) for n in a.control if n in a.models]
    models = {(n, sel): make_model(n, vocab, a.seed, **({"block_size": T} if n == "transformer" else {}))
              for n, sel in runs}
    print_params({n: m for (n, sel), m in models.items() if sel}, vocab)
    if a.control:
        print(f"control: {', '.join(a.control)} also trained on plain copying (the tokens at the start, "
              "a fixed delay), which a time-invariant model can do")
    evals = {sel: selective_copy(numpy.random.default_rng([a.seed, 7]), a.eval, a.region, a.tokens, a.content,
                                 selective=sel) for sel in (True, False)}
    rows = []
    for (name, sel), model in models.items():
        task = "selective" if sel else "plain"
        rng = numpy.random.default_rng([a.seed, 1])
        fitted = fit(model, lambda: selective_copy(rng, a.batch, a.region, a.tokens, a.content, selective=sel),
                     a.iters, a.lr, f"copy {name} ({task})")
        acc, per_row = masked_accuracy(model, *evals[sel])
        exact = float((per_row == 1).mean())
        rows.append([name, task, count_params(model)[0], acc, exact, fitted["loss"], fitted["seconds"],
                     fitted["diverged"]])
        print(f"  {name} ({task}): token accuracy {acc:.3f}, whole sequences right {exact:.3f}", flush=True)
    write_csv(os.path.join(a.out_dir, "copy.csv"),
              ["model", "task", "params", "token_accuracy", "sequence_accuracy", "final_train_loss",
               "train_seconds", "diverged"], rows)
    print(f"\naccuracy on the {a.tokens} output positions ({a.eval} sequences; chance = 1/{a.content} = "
          f"{1 / a.content:.3f}):")
    markdown_table(["model", "task", "params", "token accuracy", "sequences all right"],
                   [[r[0], r[1], f"{r[2]:,}", r[3], r[4]] for r in rows])
    acc = {(r[0], r[1]): r[3] for r in rows}
    print("\nagainst the paper (Gu & Dao 2023, Table 1: S4 18.3%, Mamba's S6 97-99.8% on selective copying):")
    if ("s4", "selective") in acc and ("mamba", "selective") in acc:
        s, m = acc["s4", "selective"], acc["mamba", "selective"]
        print(f"- selection (input-dependent Delta, B, C) solves what a time-invariant SSM cannot: mamba {m:.3f} vs "
              f"s4 {s:.3f} -> {verdict(m > s + 0.1)}")
        if ("s4", "plain") in acc:
            print(f"- s4 can copy at a fixed delay (plain copying): {acc['s4', 'plain']:.3f} vs {s:.3f} when the "
                  f"tokens are scattered -> {verdict(acc['s4', 'plain'] > s + 0.1)}")
    if ("transformer", "selective") in acc:
        print(f"- attention looks the tokens up wherever they are: transformer {acc['transformer', 'selective']:.3f}")
    print(f"  (caveat: {a.iters} iterations at one learning rate for every model, sequences of {T} tokens; the "
          "paper trains 400K steps on sequences of 4096. The S4 here is S4D inside blocks with a GLU, "
          "as s4d.py: the GLU gates channels after the convolution, but the convolution itself cannot "
          "depend on the input.)")

    plt = pyplot()
    if plt is None:
        return no_plot_note()
    fig, ax = plt.subplots(figsize=(6, 3))
    names = list(dict.fromkeys(r[0] for r in rows))
    xs = numpy.arange(len(names))
    ax.bar(xs - 0.2, [acc.get((n, "selective"), 0) for n in names], 0.4, label="selective copying",
           color=[COLORS[n] for n in names])
    plain = [acc.get((n, "plain"), numpy.nan) for n in names]
    ax.bar(xs + 0.2, plain, 0.4, label="plain copying (control)", color="white",
           edgecolor=[COLORS[n] for n in names], hatch="//")
    ax.axhline(1 / a.content, color="k", lw=0.8, ls=":", label="chance")
    ax.set_xticks(xs)
    ax.set_xticklabels(names, fontsize=8)
    ax.set(ylabel="token accuracy", ylim=(0, 1.05), title=f"copying {a.tokens} tokens over {T} positions")
    ax.legend(fontsize=7)
    save_png(fig, plt, os.path.join(a.out_dir, "copy.png"))


# ======================================================================== cost
def loglog_slope(xs, ys):
    """Least-squares slope of log y against log x (nan with fewer than 2 usable points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if y and y > 0 and math.isfinite(y)]
    if len(pts) < 2:
        return float("nan")
    lx, ly = numpy.array(pts).T
    return float(numpy.polyfit(lx, ly, 1)[0])


def cmd_cost(a):
    V = 65
    lengths = a.lengths
    print(f"cost against sequence length N in {lengths}: training step (forward, loss, backward, clip, AdamW) "
          f"at batch {a.batch}, generation through .step at batch 1, state bytes after N tokens, and the peak "
          f"memory a training step allocates (tracemalloc); median of {a.repeats} after one warm-up; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print("the transformer runs with pos_emb='none' here, so that N may pass any block_size "
          "(position embeddings cost nothing measurable; attention is what grows)")
    models = {n: make_model(n, V, a.seed, **({"pos_emb": "none", "block_size": max(lengths)}
                                            if n == "transformer" else {})) for n in a.models}
    print_params(models, V)
    rng = numpy.random.default_rng(a.seed)
    rows = []
    for name, model in models.items():
        opt = train.AdamW(model.params, WEIGHT_DECAY, BETAS)
        train_ms, peak_mb, stopped = {}, {}, None
        for N in lengths:
            if stopped:
                break
            x = rng.integers(0, V, (a.batch, N))
            y = rng.integers(0, V, (a.batch, N))
            times = []
            for r in range(a.repeats + 1):
                t0 = time.perf_counter()
                train.train_step(model, opt, x, y, 1e-4, GRAD_CLIP)
                times.append(time.perf_counter() - t0)
            train_ms[N] = 1000 * float(numpy.median(times[1:]))
            # the memory one training step allocates beyond the parameters (activations, cache, gradients)
            tracemalloc.start()
            logits, cache = model.forward(x, train=True)
            _, dlogits = train.cross_entropy(logits, y)
            model.backward(dlogits, cache)
            del logits, cache, dlogits
            peak_mb[N] = tracemalloc.get_traced_memory()[1] / 2 ** 20
            tracemalloc.stop()
            print(f"  {name}: N={N}: train step {train_ms[N]:.1f} ms, peak {peak_mb[N]:.1f} MB", flush=True)
            if times[-1] > a.max_seconds:
                stopped = (f"{name}: a training step took {times[-1]:.0f} s at N={N} (> --max-seconds "
                           f"{a.max_seconds}); longer N skipped")
                print("  " + stopped)
        # generation: one pass of .step over max(lengths) tokens; the time per token near each N
        # (median of the steps just before it) and the state bytes after N tokens
        gen_ms, sbytes = {}, {}
        tokens = rng.integers(0, V, max(lengths))
        state, step_times = model.init_state(1), []
        t_gen = time.perf_counter()
        for t, tok in enumerate(tokens):
            t0 = time.perf_counter()
            _, state = model.step(numpy.array([tok]), state)
            step_times.append(time.perf_counter() - t0)
            if t + 1 in lengths:
                N = t + 1
                w = max(1, min(a.window, N // 4))
                gen_ms[N] = 1000 * float(numpy.median(step_times[N - w:N]))
                sbytes[N] = state_nbytes(state)
            if time.perf_counter() - t_gen > a.max_seconds * 4:
                print(f"  {name}: generation stopped after {t + 1} tokens (> 4 x --max-seconds)")
                break
        print(f"  {name}: generation " + ", ".join(f"N={N} {gen_ms[N]:.3f} ms/token" for N in gen_ms), flush=True)
        for N in lengths:
            rows.append([name, N, train_ms.get(N, ""), gen_ms.get(N, ""), sbytes.get(N, ""), peak_mb.get(N, "")])
    write_csv(os.path.join(a.out_dir, "cost.csv"),
              ["model", "N", "train_step_ms", "generate_ms_per_token", "state_bytes", "train_peak_mb"], rows)

    # slopes on log-log axes: over all N, and over the largest three (the asymptotic regime)
    slope_rows = []
    for name in models:
        r = [row for row in rows if row[0] == name]
        cols = []
        for c in (2, 3, 4, 5):
            pts = [(row[1], row[c]) for row in r if row[c] != ""]
            cols.append((loglog_slope(*zip(*pts)) if len(pts) > 1 else float("nan"),
                         loglog_slope(*zip(*pts[-3:])) if len(pts) > 1 else float("nan")))
        slope_rows.append([name] + [s for pair in cols for s in pair])
    header = ["model", "train time (all N)", "train time (top 3)", "generate/token (all N)",
              "generate/token (top 3)", "state bytes (all N)", "state bytes (top 3)",
              "train peak memory (all N)", "train peak memory (top 3)"]
    write_csv(os.path.join(a.out_dir, "cost_slopes.csv"), header, slope_rows)
    print("\nmeasurements (ms; bytes; MB):")
    markdown_table(["model", "N", "train step ms", "generate ms/token", "state bytes", "train peak MB"],
                   [[r[0], r[1]] + [("" if v == "" else (f"{v:,}" if isinstance(v, int) else f"{v:.3g}"))
                                    for v in r[2:]] for r in rows])
    print("\nlog-log slopes (1 = linear in N, 2 = quadratic, 0 = flat):")
    markdown_table(header, [[r[0]] + [f"{v:.2f}" for v in r[1:]] for r in slope_rows])
    sl = {r[0]: r[1:] for r in slope_rows}
    print("\nagainst the claims (the slopes over the largest three N):")
    for n in models:
        tr, gen, st = sl[n][1], sl[n][3], sl[n][5]
        if n == "transformer":
            print(f"- transformer: training O(N^2) (the T x T attention matrix) -> slope {tr:.2f}: "
                  f"{verdict(tr > 1.3)}; generation O(N) per token (attention over N cached keys) -> {gen:.2f}: "
                  f"{verdict(gen > 0.5)}; KV cache grows linearly -> {st:.2f}: {verdict(abs(st - 1) < 0.05)}")
        else:
            print(f"- {n}: training O(N) -> slope {tr:.2f}: {verdict(tr < 1.3)}; generation O(1) per token -> "
                  f"{gen:.2f}: {verdict(abs(gen) < 0.3)}; state flat -> {st:.2f}: {verdict(abs(st) < 0.05)}")
    print("  (times are wall-clock on a shared machine; per-token generation at batch 1 is dominated by "
          "Python overhead until the attention over the cache outgrows it, which is why the transformer's "
          "slope over all N is below 1.)")

    plt = pyplot()
    if plt is None:
        return no_plot_note()
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3))
    for ax, c, title in zip(axes, (2, 3, 4), ("training step (ms)", "generation (ms/token)",
                                              "state bytes per sequence")):
        for n in models:
            pts = [(row[1], row[c]) for row in rows if row[0] == n and row[c] != ""]
            if pts:
                ax.plot(*zip(*pts), "o-", color=COLORS[n], label=n, ms=3)
        ax.set(yscale="log", xlabel="sequence length N", title=title)
        log_ticks(ax, lengths)
        ax.tick_params(axis="x", labelsize=7)
    axes[0].legend(fontsize=7)
    save_png(fig, plt, os.path.join(a.out_dir, "cost.png"))


# ====================================================================== length
def sliding_window_losses(model, x, y, window, stride):
    """Per-position losses of a model that cannot see past `window` tokens: the first
    window in one pass, then windows moved by `stride`, each scoring its last `stride`
    positions (every scored token sees at least window - stride tokens of context)."""
    B, T = x.shape
    out = numpy.full((B, T), numpy.nan)
    logits, _ = model.forward(x[:, :window])
    out[:, :window] = token_losses(logits, y[:, :window])
    end = window
    while end < T:
        new_end = min(end + stride, T)
        start = new_end - window
        logits, _ = model.forward(x[:, start:new_end])
        out[:, end:new_end] = token_losses(logits, y[:, start:new_end])[:, end - start:]
        end = new_end
    return out


def cmd_length(a):
    text, corpus = train.load_corpus(a.data)
    vocab = train.Vocab.from_text(text)
    data = vocab.encode(text)
    n = int(0.9 * len(data))
    train_data, val_data = data[:n], data[n:]
    T, L = a.seq_len, a.seq_len * a.factor
    if len(val_data) < L + 1 or len(train_data) < T + 1:
        raise UsageError(f"the data is too short: a validation split of {len(val_data):,} characters cannot "
                         f"hold a window of {L + 1} (--seq-len {T} x --factor {a.factor}); use more text")
    print(f"corpus: {corpus}: {len(text):,} characters, vocabulary {len(vocab.chars)}")
    print(f"length generalization: train the char LM on windows of {T} ({a.iters} iterations x batch {a.batch}, "
          f"lr {a.lr}, every model), then the loss at each position of {a.eval} validation windows of {L} "
          f"({a.factor}x longer)")
    V = len(vocab.chars)
    specs = []
    for name in a.models:
        if name == "transformer":
            specs.append(("transformer", "transformer", dict(block_size=T, pos_emb="learned")))
            specs.append(("transformer-nopos", "transformer", dict(block_size=T, pos_emb="none")))
        else:
            specs.append((name, name, {}))
    models = {label: make_model(name, V, a.seed, **over) for label, name, over in specs}
    print_params(models, V)
    # the evaluation windows: fixed (train.py's eval seed), the same for every model
    x_eval, y_eval = train.get_batch(val_data, a.eval, L, numpy.random.default_rng(train.EVAL_SEED))
    edges = sorted({0, min(16, T), T} | {T * 2 ** i for i in range(1, 10) if T * 2 ** i <= L} | {L})
    buckets = list(zip(edges[:-1], edges[1:]))
    per_pos, notes = {}, {}
    for label, model in models.items():
        rng = numpy.random.default_rng([a.seed, 1])
        fit(model, lambda: (*train.get_batch(train_data, a.batch, T, rng), None), a.iters, a.lr, f"length {label}")
        losses = numpy.full((a.eval, L), numpy.nan)
        if label == "transformer":
            # learned positions: forward refuses T > block_size; the one-pass loss exists only up to T
            try:
                model.forward(x_eval[:1, :L])
                notes[label] = "one pass over the whole window"
            except ValueError as e:
                notes[label] = f"one pass: only positions < {T} (forward says: {e})"
            for s in range(0, a.eval, 8):
                logits, _ = model.forward(x_eval[s:s + 8, :T])
                losses[s:s + 8, :T] = token_losses(logits, y_eval[s:s + 8, :T])
            per_pos[label] = losses.mean(0)
            # what it can do instead: a sliding window (nanoGPT's generate() crops to block_size)
            win = numpy.concatenate([sliding_window_losses(model, x_eval[s:s + 8], y_eval[s:s + 8], T, T // 2)
                                     for s in range(0, a.eval, 8)])
            per_pos["transformer-window"] = win.mean(0)
            notes["transformer-window"] = (f"the learned-position model on a sliding window of {T} "
                                           f"(stride {T // 2}): it never sees more than {T} tokens back")
        else:
            for s in range(0, a.eval, 8):
                logits, _ = model.forward(x_eval[s:s + 8])
                losses[s:s + 8] = token_losses(logits, y_eval[s:s + 8])
            per_pos[label] = losses.mean(0)
            notes[label] = "one pass over the whole window"
        print(f"  {label}: mean loss " + ", ".join(
            f"[{lo},{hi}) {numpy.nanmean(per_pos[label][lo:hi]):.3f}" for lo, hi in buckets
            if not numpy.isnan(per_pos[label][lo:hi]).all()), flush=True)
    labels = list(per_pos)
    rows = []
    for label in labels:
        for lo, hi in buckets:
            seg = per_pos[label][lo:hi]
            rows.append([label, lo, hi, "" if numpy.isnan(seg).all() else float(numpy.nanmean(seg)), notes[label]])
    write_csv(os.path.join(a.out_dir, "length.csv"), ["model", "pos_start", "pos_end", "mean_loss", "note"], rows)
    write_csv(os.path.join(a.out_dir, "length_positions.csv"), ["model", "position", "mean_loss"],
              [[label, t, "" if numpy.isnan(v) else float(v)] for label in labels
               for t, v in enumerate(per_pos[label])])
    print(f"\nmean loss (nats/char) per position bucket, trained on windows of {T}; '-' = cannot be computed:")
    table = {(r[0], r[1]): r[3] for r in rows}
    markdown_table(["model"] + [f"{lo}-{hi - 1}" for lo, hi in buckets],
                   [[label] + [("-" if table[label, lo] == "" else table[label, lo]) for lo, hi in buckets]
                    for label in labels])
    print("\nwhat each can and cannot do:")
    for label in labels:
        print(f"- {label}: {notes[label]}")
    length_summary(per_pos, labels, T, L)

    plt = pyplot()
    if plt is None:
        return no_plot_note()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    # mean loss in geometrically growing position bins (1, 2, 4, ... wide), plotted at their centres
    edges = numpy.unique(numpy.round(numpy.geomspace(1, L, 48)).astype(int))
    edges = numpy.concatenate([[0], edges])
    for label in labels:
        v = per_pos[label]
        mids, means = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            if not numpy.isnan(v[lo:hi]).all():
                mids.append((lo + hi - 1) / 2 + 1)
                means.append(numpy.nanmean(v[lo:hi]))
        ax.plot(mids, means, color=COLORS.get(label, "k"), label=label, lw=1.2)
    ax.axvline(T, color="k", ls=":", lw=0.8)
    ax.text(T, ax.get_ylim()[1], f" trained length {T}", fontsize=7, va="top")
    ax.set(xscale="log", xlabel="position in the window (+1)", ylabel="loss (nats/char)",
           title=f"trained at length {T}, evaluated at {L}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_png(fig, plt, os.path.join(a.out_dir, "length.png"))


def length_summary(per_pos, labels, T, L):
    """Past the training length: does the loss stay, rise, or fall?"""
    print(f"\npast the training length (mean loss at positions {T}..{L - 1} minus positions {T // 2}..{T - 1}):")
    for label in labels:
        v = per_pos[label]
        inside, outside = numpy.nanmean(v[T // 2:T]), (numpy.nanmean(v[T:]) if not numpy.isnan(v[T:]).all()
                                                        else float("nan"))
        if math.isnan(outside):
            print(f"- {label}: cannot run past {T} in one pass")
        else:
            print(f"- {label}: {outside - inside:+.3f} nats ({'holds' if outside - inside < 0.05 else 'degrades'})")
    print("  expected (papers): recurrent models and SSMs run at any length (Mamba's paper reports "
          "extrapolation on its synthetic tasks); a transformer with learned absolute positions cannot "
          "pass block_size at all, and without positions it runs but meets attention patterns over "
          "more keys than it was trained on.")


# =================================================================== gradients
def input_gradient_norms(model, x, y):
    """|dL_{T-1} / dx0_{T-1-k}| for k = 0..T-1, the mean over the batch of per-sequence norms,
    where L_{T-1} is the cross-entropy at the last position only (dlogits zero elsewhere)."""
    logits, cache = model.forward(x)
    B, T, V = logits.shape
    z = logits[:, -1].astype(numpy.float64)
    p = numpy.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p[numpy.arange(B), y[:, -1]] -= 1                  # d(cross-entropy)/dlogits, per sequence
    dlogits = numpy.zeros(logits.shape, logits.dtype)
    dlogits[:, -1] = p
    model.backward(dlogits, cache)
    dx0 = numpy.asarray(cache["dx0"], numpy.float64)   # (B, T, C)
    norms = numpy.sqrt((dx0 ** 2).sum(-1))             # (B, T)
    return norms.mean(0)[::-1]                         # index k = distance back from the last position


def cmd_gradients(a):
    text, corpus = train.load_corpus(a.data)
    vocab = train.Vocab.from_text(text)
    data = vocab.encode(text)
    n = int(0.9 * len(data))
    train_data, val_data = data[:n], data[n:]
    T = a.seq_len
    if len(val_data) < T + 1 or len(train_data) < T + 1:
        raise UsageError(f"the data is too short for windows of {T + 1} characters")
    V = len(vocab.chars)
    print(f"corpus: {corpus}: {len(text):,} characters, vocabulary {V}")
    print(f"gradient against distance: |dL/dx0| at distance k back from the last position of {a.eval} windows "
          f"of {T}, L = the loss at the last position only; measured in float64 at initialization and after "
          f"{a.iters} iterations of char-LM training (batch {a.batch}, lr {a.lr}, every model)")
    models = {name: make_model(name, V, a.seed, **({"block_size": T} if name == "transformer" else {}))
              for name in a.models}
    print_params(models, V)
    x_eval, y_eval = train.get_batch(val_data, a.eval, T, numpy.random.default_rng(train.EVAL_SEED))
    curves = {}
    for name, model in models.items():
        curves[name, "init"] = input_gradient_norms(float64_copy(name, model, V, a.seed), x_eval, y_eval)
        rng = numpy.random.default_rng([a.seed, 1])
        fit(model, lambda: (*train.get_batch(train_data, a.batch, T, rng), None), a.iters, a.lr,
            f"gradients {name}")
        curves[name, "trained"] = input_gradient_norms(float64_copy(name, model, V, a.seed), x_eval, y_eval)
    rows = [[name, phase, k, float(g), float(g / c[0]) if c[0] > 0 else ""]
            for (name, phase), c in curves.items() for k, g in enumerate(c)]
    write_csv(os.path.join(a.out_dir, "gradients.csv"), ["model", "phase", "k", "grad_norm", "relative_to_k0"], rows)

    ks = [k for k in (0, 1, 4, 16, 64, T // 2, T - 1) if k < T]
    ks = list(dict.fromkeys(ks))
    summary = []
    for (name, phase), c in curves.items():
        good = [(k, math.log10(g)) for k, g in enumerate(c) if k >= 1 and g > 0]
        slope = float(numpy.polyfit(*zip(*good), 1)[0]) if len(good) > 1 else float("nan")
        summary.append([name, phase] + [f"{c[k] / c[0]:.1e}" if c[0] > 0 else "-" for k in ks]
                       + [f"{10 ** (10 * slope):.2g}"])
    print(f"\n|dL/dx0| at distance k relative to k = 0 (mean over {a.eval} windows), and the fitted change "
          f"per 10 positions (log-linear fit over k >= 1; < 1 vanishes, > 1 grows):")
    markdown_table(["model", "phase"] + [f"k={k}" for k in ks] + ["x per 10 steps"], summary)
    per10 = {(r[0], r[1]): float(r[-1]) for r in summary}
    print("\nagainst the papers (Bengio et al. 1994; Hochreiter & Schmidhuber 1997; Pascanu et al. 2013; the S4 "
          "and Mamba papers on long-range dependencies):")
    for phase in ("init", "trained"):
        if ("rnn", phase) in per10:
            others = {n: per10[n, phase] for n in models if n != "rnn"}
            worse = [n for n, v in others.items() if v <= per10["rnn", phase]]
            print(f"- {phase}: the plain RNN's gradient decays fastest ({per10['rnn', phase]:.2g} per 10 steps) -> "
                  f"{verdict(not worse)}" + (f" (as fast or faster: {', '.join(worse)})" if worse else ""))
    if ("transformer", "init") in per10:
        print(f"- attention reaches every position directly, no decay with distance: transformer "
              f"{per10['transformer', 'init']:.2g} (init), {per10.get(('transformer', 'trained'), float('nan')):.2g} "
              f"(trained) per 10 steps -> {verdict(per10['transformer', 'init'] > 0.5)}")

    plt = pyplot()
    if plt is None:
        return no_plot_note()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    for ax, phase in zip(axes, ("init", "trained")):
        for name in models:
            c = curves[name, phase]
            rel = numpy.where(c > 0, c / c[0], numpy.nan)
            ax.plot(numpy.arange(T), rel, color=COLORS[name], label=name, lw=1.2)
        ax.set(yscale="log", xlabel="distance k (positions back)",
               title=f"at initialization" if phase == "init" else f"after {a.iters} iterations")
    axes[0].set_ylabel("|dL/dx0_{T-1-k}| / |dL/dx0_{T-1}|")
    axes[0].legend(fontsize=7)
    save_png(fig, plt, os.path.join(a.out_dir, "gradients.png"))


# ========================================================================= CLI
class Parser(argparse.ArgumentParser):
    def error(self, message):                      # one line, exit 2
        raise UsageError(message)


def positive(kind):
    def parse(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a valid {kind.__name__}")
        if not v > 0 or not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be positive, got {s}")
        return v
    return parse


def int_list(s):
    try:
        v = [int(p) for p in s.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of integers")
    if not v or any(p <= 0 for p in v):
        raise argparse.ArgumentTypeError(f"{s!r}: give positive integers, e.g. 2,4,8")
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


# defaults: (full run, --quick). Full runs fit in 10 minutes on 2 cores; --quick in seconds.
DEFAULTS = {
    "recall": dict(iters=(1000, 30), batch=(32, 8), lr=(3e-3, 3e-3), seq_len=(64, 24), pairs=([2, 4, 8, 16], [2, 4]),
                   n_keys=(32, 8), eval=(256, 16)),
    "copy": dict(iters=(1000, 30), batch=(32, 8), lr=(3e-3, 3e-3), region=(64, 16), tokens=(8, 4),
                 content=(8, 4), eval=(256, 16), control=(["s4"], ["s4"])),
    "cost": dict(lengths=([128, 256, 512, 1024, 2048, 4096], [32, 64, 128]), batch=(1, 1), repeats=(3, 1),
                 window=(32, 8), max_seconds=(60.0, 20.0)),
    "length": dict(iters=(300, 15), batch=(16, 4), lr=(3e-3, 3e-3), seq_len=(128, 32), factor=(8, 4),
                   eval=(64, 8)),
    "gradients": dict(iters=(200, 10), batch=(16, 4), lr=(3e-3, 3e-3), seq_len=(128, 32), eval=(16, 4)),
}


def build_parser():
    p = Parser(prog="experiments.py", description="What the six models remember, measured: one subcommand per "
               "claim. Each prints progress and a table, and writes CSV (and a PNG when matplotlib is "
               "installed) under --out-dir.",
               epilog="Run 'python experiments.py SUBCOMMAND --help' for its flags. Default sizes take up to "
               "about 10 minutes each on 2 CPU cores; --quick takes seconds (a smoke test: its numbers mean "
               "nothing).")
    sub = p.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=Parser)

    def common(sp, name, task_models=True):
        sp.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds (smoke test)")
        sp.add_argument("--out-dir", default="results", help="where the CSV and PNG go (default results/)")
        sp.add_argument("--seed", type=int, default=0, help="seed of the data and the inits (default 0)")
        sp.add_argument("--models", type=model_list, default=list(MODELS),
                        help="comma-separated subset of " + ",".join(MODELS) + " (default all)")
        d = DEFAULTS[name]

        def add(flag, typ, help_):
            key = flag[2:].replace("-", "_")
            full, quick = d[key]
            show = ",".join(map(str, full)) if isinstance(full, list) else full
            qshow = ",".join(map(str, quick)) if isinstance(quick, list) else quick
            sp.add_argument(flag, type=typ, default=None, help=f"{help_} (default {show}; --quick {qshow})")
        return add

    s = sub.add_parser("recall", help="multi-query associative recall against pairs and state size",
                       description="MQAR (Zoology): K key-value pairs, then each key again; the model must "
                       "answer with its value. Accuracy on the answer positions against K, and against the "
                       "model's state bytes per sequence. Writes recall.csv and recall.png.")
    add = common(s, "recall")
    add("--iters", positive(int), "training iterations, every model")
    add("--batch", positive(int), "sequences per batch")
    add("--lr", positive(float), "peak learning rate")
    add("--seq-len", positive(int), "tokens per sequence")
    add("--pairs", int_list, "numbers of key-value pairs, comma-separated (trained as a mixture)")
    add("--n-keys", positive(int), "distinct keys (and as many values)")
    add("--eval", positive(int), "evaluation sequences per number of pairs")

    s = sub.add_parser("copy", help="selective copying: S4 (time-invariant) vs Mamba (selective)",
                       description="Selective copying (Gu & Dao 2023): content tokens scattered among noise, "
                       "reproduced in order after a marker. Token accuracy per model, plus plain copying as a "
                       "control for --control models. Writes copy.csv and copy.png.")
    add = common(s, "copy")
    add("--iters", positive(int), "training iterations, every model")
    add("--batch", positive(int), "sequences per batch")
    add("--lr", positive(float), "peak learning rate")
    add("--region", positive(int), "positions before the marker")
    add("--tokens", positive(int), "content tokens to copy")
    add("--content", positive(int), "distinct content symbols")
    add("--eval", positive(int), "evaluation sequences")
    add("--control", model_list_or_none, "models also trained on plain copying ('none' for none)")

    s = sub.add_parser("cost", help="training and generation time, state and memory against sequence length",
                       description="Per model: a training step's time and peak allocation, generation time "
                       "per token through .step, and the state bytes after N tokens, for N in --lengths, with "
                       "log-log slopes. Writes cost.csv, cost_slopes.csv and cost.png.")
    add = common(s, "cost")
    add("--lengths", int_list, "sequence lengths N, comma-separated")
    add("--batch", positive(int), "training batch")
    add("--repeats", positive(int), "timed training steps per N (after one warm-up)")
    add("--window", positive(int), "generation steps before N whose median is the time per token")
    add("--max-seconds", positive(float), "skip longer N for a model once one training step takes longer")

    for name, title, desc in (
            ("length", "train at one length, evaluate up to --factor times longer",
             "Train the char LM on windows of --seq-len, then the mean loss per position bucket on windows "
             "--factor times longer. The transformer runs twice: learned positions (cannot pass block_size; "
             "also shown on a sliding window) and pos_emb='none'. Writes length.csv, length_positions.csv "
             "and length.png."),
            ("gradients", "vanishing gradients: |dL/dx0| against distance, at init and after training",
             "The norm of the gradient of the last position's loss with respect to the input embedding k "
             "positions back, against k, per model, at initialization and after a short char-LM training "
             "(measured in float64). Writes gradients.csv and gradients.png.")):
        s = sub.add_parser(name, help=title, description=desc)
        add = common(s, name)
        s.add_argument("--data", help="'shakespeare', or a path to a UTF-8 text file (default: 1 MB of the "
                       "Python standard library's source, as train.py)")
        add("--iters", positive(int), "training iterations, every model")
        add("--batch", positive(int), "windows per batch")
        add("--lr", positive(float), "peak learning rate")
        add("--seq-len", positive(int), "training window (and, for gradients, the measured window)")
        if name == "length":
            add("--factor", positive(int), "evaluation windows are this many times --seq-len")
        add("--eval", positive(int), "evaluation windows")
    return p


def parse(argv):
    p = build_parser()
    a = p.parse_args(argv)
    if a.command is None:
        raise UsageError("give a subcommand: recall, copy, cost, length or gradients (see --help)")
    for key, (full, quick) in DEFAULTS[a.command].items():
        if getattr(a, key) is None:
            setattr(a, key, quick if a.quick else full)
    if a.command == "copy" and a.tokens > a.region:
        raise UsageError(f"--tokens {a.tokens} must not exceed --region {a.region}")
    if a.command in ("length", "gradients") and a.seq_len < 2:
        raise UsageError("--seq-len must be at least 2")
    if a.command == "length" and a.factor < 2:
        raise UsageError("--factor must be at least 2 (the point is to evaluate past the training length)")
    if a.command == "cost" and "transformer" in a.models and a.batch * 2 * max(a.lengths) ** 2 * 4 > 2 ** 32:
        raise UsageError(f"--batch {a.batch} x N={max(a.lengths)}: the transformer's attention matrices would "
                         "need more than 4 GB per array; use smaller --lengths or --batch")
    return a


def main(argv=None):
    try:
        a = parse(sys.argv[1:] if argv is None else argv)
        os.makedirs(a.out_dir, exist_ok=True)
        t0 = time.perf_counter()
        if a.quick:
            print("--quick: tiny sizes, a smoke test; the numbers mean nothing")
        {"recall": cmd_recall, "copy": cmd_copy, "cost": cmd_cost, "length": cmd_length,
         "gradients": cmd_gradients}[a.command](a)
        print(f"done: {a.command} in {time.perf_counter() - t0:.0f} s")
    except (train.UsageError, OSError) as e:
        print(f"experiments.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nexperiments.py: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
