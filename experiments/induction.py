"""induction: length extrapolation on the induction-heads task (Gu & Dao 2023,
"Mamba", section 4.1.2; Olsson et al. 2022).

Each row is random symbols; somewhere in it a special token is followed by a target
symbol; the row ends with the special token again, and the model must answer the
target (only that last position counts). Train at --seq-len, then evaluate at
--factors times that length. A recurrence runs at any length with the same state;
the question is whether what it learned still works. Training may start with a
first stage of shorter rows (--stage1-iters at --stage1-len), as recall's curriculum. A transformer with learned
positions cannot run past block_size at all (its table cell says so); with
pos_emb="none" it runs at any length, and the table shows what it does there.
Past the training length each model is also evaluated with the pair placed on purpose,
near the query (in the last --seq-len tokens) and far from it (in the first): whether a
model fails because the long prefix disturbs it or because what it stored fades with
distance (induction_distance.csv).
"""
import os

import numpy

from . import common as C

NAME = "induction"
HELP = "induction heads: train at one length, evaluate at 2x..16x (length extrapolation)"
DESCRIPTION = ("The induction-heads task of the Mamba paper: a special token, a target, ..., the special "
               "token again -> the target. Trained at --seq-len, evaluated at each of --factors times it. "
               "The transformer runs twice: learned positions (stops at block_size) and pos_emb='none'. "
               "Past it, the pair is also placed near the query and far from it. "
               "Writes induction.csv, induction_distance.csv and induction.png.")
DEVICE = True      # --device gpu
DEFAULTS = {"iters": (2000, 30), "stage1_iters": (600, 10), "stage1_len": (16, 8), "batch": (32, 8), "lr": (3e-3, 3e-3), "seq_len": (64, 16),
            "symbols": (16, 8), "factors": ([1, 2, 4, 8, 16], [1, 2, 4]), "eval": (128, 16),
            "transformer": ("auto", "auto")}
SPECIAL = 0


def induction(rng, batch, seq_len, n_symbols, first=0, last=None):
    """x, y (B, T) int64 and mask (B, T) bool. Symbols 1..n_symbols, the special token 0.
    One special token at a random position p in [first, last] (default [0, T - 3]), the
    target at p + 1, the special token again at T - 1, whose target (mask True only there)
    is the symbol after the first."""
    last = seq_len - 3 if last is None else last
    if seq_len < 3 or n_symbols < 1 or not 0 <= first <= last <= seq_len - 3:
        raise ValueError(f"the induction task needs seq_len >= 3 ({seq_len}), symbols >= 1 ({n_symbols}) "
                         f"and 0 <= first <= last <= seq_len - 3 ({first}, {last})")
    x = 1 + rng.integers(0, n_symbols, (batch, seq_len))
    p = rng.integers(first, last + 1, batch)
    rows = numpy.arange(batch)
    x[rows, p] = SPECIAL
    x[:, -1] = SPECIAL
    y = numpy.zeros((batch, seq_len), numpy.int64)
    mask = numpy.zeros((batch, seq_len), bool)
    y[:, -1], mask[:, -1] = x[rows, p + 1], True
    return x.astype(numpy.int64), y, mask


def add_arguments(sp, add):
    add("--iters", C.positive(int), "training iterations, every model")
    add("--stage1-iters", C.non_negative_int, "iterations of a first stage at --stage1-len (0: no curriculum)")
    add("--stage1-len", C.positive(int), "sequence length of the first stage")
    add("--batch", C.positive(int), "sequences per batch")
    add("--lr", C.positive(float), "peak learning rate, every model")
    add("--seq-len", C.positive(int), "training length (and the transformer's block_size)")
    add("--symbols", C.positive(int), "distinct symbols (the vocabulary is one more)")
    add("--factors", C.int_list, "evaluation lengths, as multiples of --seq-len")
    add("--eval", C.positive(int), "evaluation sequences per length")
    add("--transformer", str, "'attn' (attention only), 'mlp' (the SMALL block) or 'auto' (attn if available)")


def check(a):
    if a.seq_len < 3:
        raise C.UsageError("--seq-len must be at least 3 (special token, target, special token)")
    if a.stage1_iters and not 3 <= a.stage1_len <= a.seq_len:
        raise C.UsageError(f"--stage1-len {a.stage1_len} must lie in [3, --seq-len {a.seq_len}]")
    if a.stage1_iters >= a.iters:
        raise C.UsageError(f"--stage1-iters {a.stage1_iters} must be below --iters {a.iters}")
    C.resolve_transformer(a)
    C.check_memory(f"--batch {a.batch} x --seq-len {a.seq_len}",
                   C.activation_bytes(max(a.batch, 64), a.seq_len, "transformer" in a.models))
    C.check_memory(f"evaluating at {max(a.factors) * a.seq_len} tokens",
                   C.activation_bytes(1, max(a.factors) * a.seq_len, "transformer" in a.models))


def accuracy(model, x, y, mask):
    """Accuracy at the last position, in chunks small enough for long sequences."""
    chunk = max(1, 16384 // x.shape[1])
    return C.masked_accuracy(model, x, y, mask, chunk)[0]


def run(a):
    V, T = a.symbols + 1, a.seq_len
    lengths = [T * f for f in a.factors]
    print(f"induction heads: {a.symbols} symbols, trained at length {T} ({a.iters} iterations x batch {a.batch}, "
          f"the first {a.stage1_iters} at length {a.stage1_len}; lr {a.lr}, weight decay {a.weight_decay}, every model), evaluated at {lengths} on {a.eval} sequences each; chance = 1/{a.symbols}")
    specs = []
    for name in a.models:
        if name == "transformer":
            over = dict(C.transformer_overrides(a.transformer), block_size=T)
            specs += [("transformer", name, over), ("transformer-nopos", name, dict(over, pos_emb="none"))]
        else:
            specs.append((name, name, {}))
    models = {label: C.make_model(name, V, a.seed, **over) for label, name, over in specs}
    C.print_params(models, V)
    evals = {L: induction(numpy.random.default_rng([a.seed, 7, L]), a.eval, L, a.symbols) for L in lengths}
    # The same lengths with the pair placed on purpose (past the training length only): "near",
    # in the last T tokens (the query at most T - 1 after it, as in training), and "far", in the
    # first T (the whole row away). Near tells whether a long prefix of noise disturbs the model,
    # far whether what it stored survives the distance.
    placed = {(L, where): induction(numpy.random.default_rng([a.seed, 8 if where == "near" else 9, L]), a.eval,
                                    L, a.symbols, *((L - T, L - 3) if where == "near" else (0, T - 3)))
              for L in lengths if L > T for where in ("near", "far")}
    rows, table, placed_rows = [], {}, []
    for label, model in models.items():
        rng = numpy.random.default_rng([a.seed, 1])
        stages = [(a.stage1_iters, lambda: induction(rng, a.batch, a.stage1_len, a.symbols)),
                  (a.iters - a.stage1_iters, lambda: induction(rng, a.batch, T, a.symbols))]
        f = C.fit(model, [s for s in stages if s[0]], a.lr, f"induction {label}", weight_decay=a.weight_decay)
        for L in lengths:
            try:
                acc, note = accuracy(model, *evals[L]), ""
            except ValueError as e:          # learned positions: forward refuses T > block_size
                acc, note = "", f"cannot run: {e}"
            table[label, L] = acc
            rows.append([label, L, L // T, acc, note, f["loss"], f["seconds"], f["diverged"]])
            for where in ("near", "far") if L > T and acc != "" else ():
                table[label, L, where] = accuracy(model, *placed[L, where])
                placed_rows.append([label, L, L // T, where, table[label, L, where]])
        print(f"  {label}: " + ", ".join(f"{L}: {'-' if table[label, L] == '' else f'{table[label, L]:.3f}'}"
                                        for L in lengths) + f" ({f['seconds']:.0f} s)", flush=True)
    C.write_csv(os.path.join(a.out_dir, "induction.csv"), ["model", "length", "factor", "accuracy", "note",
                                                           "final_train_loss", "train_seconds", "diverged"], rows)
    print(f"\naccuracy at the last position, trained at {T} ('-': cannot run, the sequence is longer than the "
          f"learned positions' block_size {T}):")
    C.markdown_table(["model"] + [f"{L} ({L // T}x)" for L in lengths],
                     [[label] + ["-" if table[label, L] == "" else table[label, L] for L in lengths]
                      for label in models])
    if placed_rows:
        C.write_csv(os.path.join(a.out_dir, "induction_distance.csv"),
                    ["model", "length", "factor", "pair", "accuracy"], placed_rows)
        print(f"\nthe pair placed on purpose, 'near / far': near = in the last {T} tokens (as close to the "
              f"query as in training), far = in the first {T} (the whole row away):")
        C.markdown_table(["model"] + [f"{L} ({L // T}x)" for L in lengths if L > T],
                         [[label] + [f"{table[label, L, 'near']:.3f} / {table[label, L, 'far']:.3f}"
                                     if (label, L, "near") in table else "-" for L in lengths if L > T]
                          for label in models])
    print("\nagainst the paper (Mamba section 4.1.2, Table 2: Mamba extrapolates to 4000x the training length; "
          "attention with learned or rotary positions fails past about 2x):")
    longest = max(lengths)
    for label in models:
        first, last = table[label, T], table[label, longest]
        if last == "":
            print(f"- {label}: {first:.3f} at {T}; cannot run at {longest} (learned positions end at block_size)")
        else:
            print(f"- {label}: {first:.3f} at {T} -> {last:.3f} at {longest} "
                  f"({'holds' if first > 0.5 and last >= first - 0.05 else 'does not hold' if first > 0.5 else 'not learned at the training length'})")
    plot(rows, T, a.symbols, a.out_dir, placed_rows)


def plot(rows, T, symbols, out_dir, placed=()):
    """induction.png from the rows of induction.csv (model, length, factor, accuracy, ...;
    accuracy '' where the model cannot run), so that the CSVs of several runs can be joined.
    With the rows of induction_distance.csv (placed: model, length, factor, pair, accuracy),
    a second panel: the pair far from the query (solid) and near it (dashed)."""
    plt = C.pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2 if placed else 1, figsize=(9.5 if placed else 5, 3.2), squeeze=False)
    lengths = sorted({int(r[1]) for r in rows})
    ax = axes[0, 0]
    for label in dict.fromkeys(r[0] for r in rows):
        pts = [(int(r[1]), float(r[3])) for r in rows if r[0] == label and r[3] != ""]
        ax.plot(*zip(*pts), "o-", color=C.COLORS.get(label, "k"), label=label, ms=4)
    ax.set(ylabel="accuracy", title=f"induction, trained at {T}: the pair anywhere")
    ax.legend(fontsize=7)
    if placed:
        ax = axes[0, 1]
        for label in dict.fromkeys(r[0] for r in placed):
            for where, style in (("far", "o-"), ("near", "--")):
                pts = [(int(r[1]), float(r[4])) for r in placed if r[0] == label and r[3] == where]
                ax.plot(*zip(*pts), style, color=C.COLORS.get(label, "k"), ms=4, lw=1.5 if where == "far" else 1)
        ax.set(title=f"the pair in the first {T} tokens (solid), the last {T} (dashed)")
    for ax in axes[0]:
        ax.axhline(1 / symbols, color="k", lw=0.8, ls=":")
        ax.axvline(T, color="k", lw=0.6, ls="--")
        ax.set(xlabel="evaluation length", ylim=(-0.03, 1.03))
        ax.title.set_fontsize(9)
        C.log_ticks(ax, lengths)
    C.save_png(fig, plt, os.path.join(out_dir, "induction.png"))
