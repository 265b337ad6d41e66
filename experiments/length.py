"""length: the char LM trained on windows of --seq-len, then the mean loss at each
position of validation windows --factor times longer. Does a model break past its
training length? (The extrapolation claim proper is the induction experiment.)
The transformer runs twice: learned positions (cannot pass block_size; also shown on
a sliding window) and pos_emb="none".
"""
import math
import os

import numpy

import train

from . import common as C

NAME = "length"
HELP = "char LM: train at one length, the loss per position up to --factor times longer"
DESCRIPTION = ("Train the char LM on windows of --seq-len, then the mean loss per position bucket on windows "
               "--factor times longer. The transformer runs twice: learned positions (cannot pass block_size; "
               "also shown on a sliding window) and pos_emb='none'. Writes length.csv, length_positions.csv "
               "and length.png.")
DEVICE = True      # --device gpu
DEFAULTS = {"iters": (300, 15), "batch": (16, 4), "lr": (3e-3, 3e-3), "seq_len": (128, 32), "factor": (8, 4),
            "eval": (64, 8)}


def add_arguments(sp, add):
    sp.add_argument("--data", help="'shakespeare', or a path to a UTF-8 text file (default: 1 MB of the "
                    "Python standard library's source, as train.py)")
    add("--iters", C.positive(int), "training iterations, every model")
    add("--batch", C.positive(int), "windows per batch")
    add("--lr", C.positive(float), "peak learning rate")
    add("--seq-len", C.positive(int), "training window")
    add("--factor", C.positive(int), "evaluation windows are this many times --seq-len")
    add("--eval", C.positive(int), "evaluation windows")


def sliding_window_losses(model, x, y, window, stride):
    """Per-position losses of a model that cannot see past `window` tokens: the first
    window in one pass, then windows moved by `stride`, each scoring its last `stride`
    positions (every scored token sees at least window - stride tokens of context)."""
    B, T = x.shape
    out = numpy.full((B, T), numpy.nan)
    logits, _ = model.forward(x[:, :window])
    out[:, :window] = C.token_losses(logits, y[:, :window])
    end = window
    while end < T:
        new_end = min(end + stride, T)
        start = new_end - window
        logits, _ = model.forward(x[:, start:new_end])
        out[:, end:new_end] = C.token_losses(logits, y[:, start:new_end])[:, end - start:]
        end = new_end
    return out


def check(a):
    if a.seq_len < 2:
        raise C.UsageError("--seq-len must be at least 2")
    if a.factor < 2:
        raise C.UsageError("--factor must be at least 2 (the point is to evaluate past the training length)")
    C.check_memory(f"evaluating --eval {a.eval} windows of {a.seq_len * a.factor}",
                   C.activation_bytes(8, a.seq_len * a.factor, "transformer" in a.models))
    a.corpus = C.char_data(a.data, a.seq_len + 1, a.seq_len * a.factor + 1,
                           f"--seq-len {a.seq_len} x --factor {a.factor}")


def run(a):
    text, corpus, vocab, train_data, val_data = a.corpus
    T, L = a.seq_len, a.seq_len * a.factor
    print(f"corpus: {corpus}: {len(text):,} characters, vocabulary {len(vocab.chars)}")
    print(f"length generalization: train the char LM on windows of {T} ({a.iters} iterations x batch {a.batch}, "
          f"lr {a.lr}, weight decay {a.weight_decay}, every model), then the loss at each position of {a.eval} validation windows of {L} "
          f"({a.factor}x longer)")
    V = len(vocab.chars)
    specs = []
    for name in a.models:
        if name == "transformer":
            specs.append(("transformer", "transformer", dict(block_size=T, pos_emb="learned")))
            specs.append(("transformer-nopos", "transformer", dict(block_size=T, pos_emb="none")))
        else:
            specs.append((name, name, {}))
    models = {label: C.make_model(name, V, a.seed, **over) for label, name, over in specs}
    C.print_params(models, V)
    # the evaluation windows: fixed (train.py's eval seed), the same for every model
    x_eval, y_eval = train.get_batch(val_data, a.eval, L, numpy.random.default_rng(train.EVAL_SEED))
    edges = sorted({0, min(16, T), T} | {T * 2 ** i for i in range(1, 10) if T * 2 ** i <= L} | {L})
    buckets = list(zip(edges[:-1], edges[1:]))
    per_pos, notes = {}, {}
    for label, model in models.items():
        rng = numpy.random.default_rng([a.seed, 1])
        C.fit(model, [(a.iters, lambda: (*train.get_batch(train_data, a.batch, T, rng), None))], a.lr, f"length {label}",
              weight_decay=a.weight_decay)
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
                losses[s:s + 8, :T] = C.token_losses(logits, y_eval[s:s + 8, :T])
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
                losses[s:s + 8] = C.token_losses(logits, y_eval[s:s + 8])
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
    C.write_csv(os.path.join(a.out_dir, "length.csv"), ["model", "pos_start", "pos_end", "mean_loss", "note"], rows)
    C.write_csv(os.path.join(a.out_dir, "length_positions.csv"), ["model", "position", "mean_loss"],
              [[label, t, "" if numpy.isnan(v) else float(v)] for label in labels
               for t, v in enumerate(per_pos[label])])
    print(f"\nmean loss (nats/char) per position bucket, trained on windows of {T}; '-' = cannot be computed:")
    table = {(r[0], r[1]): r[3] for r in rows}
    C.markdown_table(["model"] + [f"{lo}-{hi - 1}" for lo, hi in buckets],
                   [[label] + [("-" if table[label, lo] == "" else table[label, lo]) for lo, hi in buckets]
                    for label in labels])
    print("\nwhat each can and cannot do:")
    for label in labels:
        print(f"- {label}: {notes[label]}")
    length_summary(per_pos, labels, T, L)

    plt = C.pyplot()
    if plt is None:
        return
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
        ax.plot(mids, means, color=C.COLORS.get(label, "k"), label=label, lw=1.2)
    ax.axvline(T, color="k", ls=":", lw=0.8)
    ax.text(T, ax.get_ylim()[1], f" trained length {T}", fontsize=7, va="top")
    ax.set(xscale="log", xlabel="position in the window (+1)", ylabel="loss (nats/char)",
           title=f"trained at length {T}, evaluated at {L}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    C.save_png(fig, plt, os.path.join(a.out_dir, "length.png"))


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
