"""gradients: vanishing gradients. |dL/dx0| at distance k back from the last position
(L = the last position's loss; x0 = the input embeddings, cache["dx0"]), against k,
per model, at initialization and after a short char-LM training; measured in
float64 copies of the trained float32 models, so that 1e-40 is still a number.
"""
import math
import os

import numpy

import train

from . import common as C

NAME = "gradients"
HELP = "vanishing gradients: |dL/dx0| against distance, at init and after training"
DESCRIPTION = ("The norm of the gradient of the last position's loss with respect to the input embedding k "
               "positions back, against k, per model, at initialization and after a short char-LM training "
               "(measured in float64). Writes gradients.csv and gradients.png.")
DEFAULTS = {"iters": (200, 10), "batch": (16, 4), "lr": (3e-3, 3e-3), "seq_len": (128, 32), "eval": (16, 4)}


def add_arguments(sp, add):
    sp.add_argument("--data", help="'shakespeare', or a path to a UTF-8 text file (default: 1 MB of the "
                    "Python standard library's source, as train.py)")
    add("--iters", C.positive(int), "training iterations, every model")
    add("--batch", C.positive(int), "windows per batch")
    add("--lr", C.positive(float), "peak learning rate")
    add("--seq-len", C.positive(int), "training window and the measured window")
    add("--eval", C.positive(int), "evaluation windows")


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


def check(a):
    if a.seq_len < 2:
        raise C.UsageError("--seq-len must be at least 2")
    a.corpus = C.char_data(a.data, a.seq_len + 1, a.seq_len + 1, f"--seq-len {a.seq_len}")


def run(a):
    text, corpus, vocab, train_data, val_data = a.corpus
    T = a.seq_len
    V = len(vocab.chars)
    print(f"corpus: {corpus}: {len(text):,} characters, vocabulary {V}")
    print(f"gradient against distance: |dL/dx0| at distance k back from the last position of {a.eval} windows "
          f"of {T}, L = the loss at the last position only; measured in float64 at initialization and after "
          f"{a.iters} iterations of char-LM training (batch {a.batch}, lr {a.lr}, weight decay {a.weight_decay}, every model)")
    models = {name: C.make_model(name, V, a.seed, **({"block_size": T} if name == "transformer" else {}))
              for name in a.models}
    C.print_params(models, V)
    x_eval, y_eval = train.get_batch(val_data, a.eval, T, numpy.random.default_rng(train.EVAL_SEED))
    curves = {}
    for name, model in models.items():
        curves[name, "init"] = input_gradient_norms(C.float64_copy(name, model, V, a.seed), x_eval, y_eval)
        rng = numpy.random.default_rng([a.seed, 1])
        C.fit(model, [(a.iters, lambda: (*train.get_batch(train_data, a.batch, T, rng), None))], a.lr, f"gradients {name}",
              weight_decay=a.weight_decay)
        curves[name, "trained"] = input_gradient_norms(C.float64_copy(name, model, V, a.seed), x_eval, y_eval)
    rows = [[name, phase, k, float(g), float(g / c[0]) if c[0] > 0 else ""]
            for (name, phase), c in curves.items() for k, g in enumerate(c)]
    C.write_csv(os.path.join(a.out_dir, "gradients.csv"), ["model", "phase", "k", "grad_norm", "relative_to_k0"], rows)

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
    C.markdown_table(["model", "phase"] + [f"k={k}" for k in ks] + ["x per 10 steps"], summary)
    per10 = {(r[0], r[1]): float(r[-1]) for r in summary}
    print("\nagainst the papers (Bengio et al. 1994; Hochreiter & Schmidhuber 1997; Pascanu et al. 2013; the S4 "
          "and Mamba papers on long-range dependencies):")
    for phase in ("init", "trained"):
        if ("rnn", phase) in per10:
            others = {n: per10[n, phase] for n in models if n != "rnn"}
            worse = [n for n, v in others.items() if v <= per10["rnn", phase]]
            print(f"- {phase}: the plain RNN's gradient decays fastest ({per10['rnn', phase]:.2g} per 10 steps) -> "
                  f"{C.verdict(not worse)}" + (f" (as fast or faster: {', '.join(worse)})" if worse else ""))
    if ("transformer", "init") in per10:
        print(f"- attention reaches every position directly, no decay with distance: transformer "
              f"{per10['transformer', 'init']:.2g} (init), {per10.get(('transformer', 'trained'), float('nan')):.2g} "
              f"(trained) per 10 steps -> {C.verdict(per10['transformer', 'init'] > 0.5)}")

    plt = C.pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    for ax, phase in zip(axes, ("init", "trained")):
        for name in models:
            c = curves[name, phase]
            rel = numpy.where(c > 0, c / c[0], numpy.nan)
            ax.plot(numpy.arange(T), rel, color=C.COLORS.get(name, "k"), label=name, lw=1.2)
        ax.set(yscale="log", xlabel="distance k (positions back)",
               title="at initialization" if phase == "init" else f"after {a.iters} iterations")
    axes[0].set_ylabel("|dL/dx0_{T-1-k}| / |dL/dx0_{T-1}|")
    axes[0].legend(fontsize=7)
    C.save_png(fig, plt, os.path.join(a.out_dir, "gradients.png"))
