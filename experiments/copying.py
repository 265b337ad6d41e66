"""copy: selective copying (Gu & Dao 2023, "Mamba", sections 3.1 and 4.1.1).

Content tokens scattered among noise, then a marker; the model must reproduce them
in order. A time-invariant model (S4: one fixed convolution for every input) cannot
skip the noise, which sits at different places in every row; a selective one
(Mamba: Delta, B, C depend on the token) can ignore it. Plain copying (the tokens at
the start, a fixed delay) is the control that a time-invariant model does solve.
The GRU stays in: its update gate is an input-dependent keep-or-overwrite decision,
a selection mechanism of its own.

The default region is 256 positions (with a region of 64, S4 still copied 0.82 of
the tokens; with 256 and this recipe, 0.60), with a curriculum: the first 1000 of 2500 iterations
on a region of 64, where the selection is found quickly, then 256. Without that
first stage Mamba had not learned region 256 in 2500 iterations (0.24).
"""
import os

import numpy

from . import common as C

NAME = "copy"
HELP = "selective copying: S4 (time-invariant) vs Mamba (selective), plain copying as the control"
DESCRIPTION = ("Selective copying (Gu & Dao 2023): content tokens scattered among noise, reproduced in "
               "order after a marker. Token accuracy per model, plus plain copying as a control for "
               "--control models. Writes copy.csv and copy.png.")
DEVICE = True      # --device gpu
DEFAULTS = {"iters": (2500, 30), "stage1_iters": (1000, 10), "stage1_region": (64, 8), "batch": (32, 8),
            "lr": (3e-3, 3e-3), "region": (256, 16), "tokens": (8, 4),
            "content": (8, 4), "eval": (256, 16), "control": (["s4"], ["s4"])}
COPY_BLANK, COPY_MARKER = 0, 1


def selective_copy(rng, batch, n_region, n_tokens, n_content, selective=True):
    """Each row: a region of n_region positions holding n_tokens content tokens at random
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


def add_arguments(sp, add):
    add("--iters", C.positive(int), "training iterations in all, every model")
    add("--stage1-iters", C.non_negative_int, "iterations of a first stage on the shorter --stage1-region "
        "(0: none)")
    add("--stage1-region", C.positive(int), "positions before the marker in the first stage")
    add("--batch", C.positive(int), "sequences per batch")
    add("--lr", C.positive(float), "peak learning rate, every model")
    add("--region", C.positive(int), "positions before the marker")
    add("--tokens", C.positive(int), "content tokens to copy")
    add("--content", C.positive(int), "distinct content symbols")
    add("--eval", C.positive(int), "evaluation sequences")
    add("--control", C.model_list_or_none, "models also trained on plain copying ('none' for none)")


def check(a):
    if a.tokens > a.region:
        raise C.UsageError(f"--tokens {a.tokens} must not exceed --region {a.region}")
    if a.stage1_iters and not a.tokens <= a.stage1_region <= a.region:
        raise C.UsageError(f"--stage1-region {a.stage1_region} must lie between --tokens {a.tokens} and "
                           f"--region {a.region} (or --stage1-iters 0: no first stage)")
    if a.stage1_iters >= a.iters:
        raise C.UsageError(f"--stage1-iters {a.stage1_iters} must be below --iters {a.iters}")
    C.check_memory(f"--batch {a.batch} x {a.region + a.tokens} tokens",
                   C.activation_bytes(max(a.batch, 64), a.region + a.tokens, "transformer" in a.models))


def run(a):
    vocab, T = a.content + 2, a.region + a.tokens
    print(f"selective copying: {a.tokens} content tokens ({a.content} symbols) among {a.region - a.tokens} "
          f"noise tokens, then a marker; the model outputs the {a.tokens} tokens in order (sequence length "
          f"{T}, vocabulary {vocab}); {a.iters} iterations x batch {a.batch}, lr {a.lr}, weight decay {a.weight_decay}, for every model")
    if a.stage1_iters:
        print(f"curriculum: the first {a.stage1_iters} iterations with a region of {a.stage1_region} positions, "
              f"then {a.iters - a.stage1_iters} with {a.region}")
    runs = [(n, True) for n in a.models] + [(n, False) for n in a.control if n in a.models]
    models = {(n, sel): C.make_model(n, vocab, a.seed, **({"block_size": T} if n == "transformer" else {}))
              for n, sel in runs}
    C.print_params({n: m for (n, sel), m in models.items() if sel}, vocab)
    if a.control:
        print(f"control: {', '.join(a.control)} also trained on plain copying (the tokens at the start, "
              "a fixed delay), which a time-invariant model can do")
    evals = {sel: selective_copy(numpy.random.default_rng([a.seed, 7]), a.eval, a.region, a.tokens, a.content,
                                 selective=sel) for sel in (True, False)}
    rows = []
    for (name, sel), model in models.items():
        task = "selective" if sel else "plain"
        rng = numpy.random.default_rng([a.seed, 1])
        stages = [(n, lambda r=r, sel=sel: selective_copy(rng, a.batch, r, a.tokens, a.content, selective=sel))
                  for n, r in ((a.stage1_iters, a.stage1_region), (a.iters - a.stage1_iters, a.region)) if n]
        fitted = C.fit(model, stages, a.lr, f"copy {name} ({task})", weight_decay=a.weight_decay)
        acc, per_row = C.masked_accuracy(model, *evals[sel])
        exact = float((per_row == 1).mean())
        rows.append([name, task, C.count_params(model)[0], acc, exact, fitted["loss"], fitted["seconds"],
                     fitted["diverged"]])
        print(f"  {name} ({task}): token accuracy {acc:.3f}, whole sequences right {exact:.3f} "
              f"({fitted['seconds']:.0f} s)", flush=True)
    C.write_csv(os.path.join(a.out_dir, "copy.csv"),
                ["model", "task", "params", "token_accuracy", "sequence_accuracy", "final_train_loss",
                 "train_seconds", "diverged"], rows)
    print(f"\naccuracy on the {a.tokens} output positions ({a.eval} sequences; chance = 1/{a.content} = "
          f"{1 / a.content:.3f}):")
    C.markdown_table(["model", "task", "params", "token accuracy", "sequences all right", "train s"],
                     [[r[0], r[1], f"{r[2]:,}", r[3], r[4], f"{r[6]:.0f}"] for r in rows])
    acc = {(r[0], r[1]): r[3] for r in rows}
    print("\nagainst the paper (Gu & Dao 2023, Table 1: S4 18.3%, Mamba's S6 97-99.8% on selective copying):")
    if ("s4", "selective") in acc and ("mamba", "selective") in acc:
        s, m = acc["s4", "selective"], acc["mamba", "selective"]
        print(f"- selection (input-dependent Delta, B, C) solves what a time-invariant SSM cannot: mamba {m:.3f} vs "
              f"s4 {s:.3f} -> {C.verdict(m >= 0.9 and m > s + 0.1)} (mamba >= 0.9 and above s4 by > 0.1)")
    if ("s4", "plain") in acc and ("s4", "selective") in acc:
        print(f"- s4 copies at a fixed delay (plain copying): {acc['s4', 'plain']:.3f} vs "
              f"{acc['s4', 'selective']:.3f} when the tokens are scattered -> "
              f"{C.verdict(acc['s4', 'plain'] > acc['s4', 'selective'] + 0.1)}")
    if ("gru", "selective") in acc:
        print(f"- the GRU's update gate selects too: gru {acc['gru', 'selective']:.3f}")
    print(f"  ({a.iters} iterations at one learning rate for every model on sequences of {T} tokens; the "
          "paper trains 400K steps on 4096. The S4 here is S4D with a GLU after the convolution: the GLU "
          "gates channels, but the convolution itself cannot depend on the input.)")
    plot(rows, a.tokens, T, a.content, a.out_dir)


def plot(rows, n_tokens, T, n_content, out_dir):
    """copy.png from the rows of copy.csv (model, task, params, token accuracy, ...), so
    that the CSVs of several runs can be joined."""
    plt = C.pyplot()
    if plt is None:
        return
    acc = {(r[0], r[1]): float(r[3]) for r in rows}
    fig, ax = plt.subplots(figsize=(6, 3))
    names = list(dict.fromkeys(r[0] for r in rows))
    xs = numpy.arange(len(names))
    ax.bar(xs - 0.2, [acc.get((n, "selective"), 0) for n in names], 0.4, label="selective copying",
           color=[C.COLORS.get(n, "k") for n in names])
    ax.bar(xs + 0.2, [acc.get((n, "plain"), numpy.nan) for n in names], 0.4, label="plain copying (control)",
           color="white", edgecolor=[C.COLORS.get(n, "k") for n in names], hatch="//")
    ax.axhline(1 / n_content, color="k", lw=0.8, ls=":", label="chance")
    ax.set_xticks(xs)
    ax.set_xticklabels(names, fontsize=8)
    ax.set(ylabel="token accuracy", ylim=(0, 1.05), title=f"copying {n_tokens} tokens over {T} positions")
    ax.legend(fontsize=7)
    C.save_png(fig, plt, os.path.join(out_dir, "copy.png"))
