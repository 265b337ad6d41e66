"""capacity: Zoology's central figure. MQAR accuracy at the largest number of pairs
against the bytes of state a model carries per sequence.

Each fixed-state model is trained at two or three widths (WIDTHS: the field that
sets its state, the rest of its SMALL config unchanged) on recall's recipe (the
same curriculum, batches, budget and learning rate), one seed; the transformer,
whose KV cache holds the whole sequence, is the reference point. A fixed state
should recall more pairs the larger it is; attention should recall them all, at
the price of a cache that grows with the sequence.
"""
import importlib
import os
import time

import numpy

import train

from . import common as C
from . import recall

NAME = "capacity"
HELP = "MQAR accuracy at the largest K against state bytes, 2-3 widths per fixed-state model"
DESCRIPTION = ("The capacity sweep: each fixed-state model at two or three state sizes, trained on the "
               "recall recipe (one seed), accuracy at the largest number of pairs against state bytes per "
               "sequence; the transformer's KV cache as the reference. Writes capacity.csv and capacity.png.")
# the Config field that sets each model's state, and its values (the middle one is SMALL's;
# for mamba2 the largest: its SMALL state already holds 16 pairs, so the sweep goes down)
WIDTHS = {
    "rnn": ("d_model", [64, 128, 256]),
    "lstm": ("d_model", [32, 64, 128]),
    "gru": ("d_model", [36, 72, 144]),
    "s4": ("d_state", [16, 64, 256]),
    "mamba": ("d_state", [4, 16, 64]),
    "mamba2": ("d_state", [4, 16, 48]),
}
DEVICE = True      # --device gpu
DEFAULTS = {**{k: v for k, v in recall.DEFAULTS.items() if k != "seeds"}, "widths": (None, None)}
QUICK_WIDTHS = 2     # --quick trains the first two widths only


def add_arguments(sp, add):
    for flag, help_ in (("--iters", "training iterations in all, every run"),
                        ("--stage1-iters", "iterations of the first, short stage"),
                        ("--stage1-len", "tokens per sequence in the first stage"),
                        ("--stage1-pairs", "numbers of pairs in the first stage"),
                        ("--batch", "sequences per batch"), ("--lr", "peak learning rate, every run"),
                        ("--seq-len", "tokens per sequence"),
                        ("--pairs", "numbers of pairs evaluated (the largest is plotted)"),
                        ("--n-keys", "distinct keys (and as many values)"),
                        ("--eval", "evaluation sequences per number of pairs"),
                        ("--transformer", "'attn' (attention only) or 'mlp'"),
                        ("--place", "where the pairs sit: 'start' or 'anywhere'"),
                        ("--mixture", "how the second stage draws K: 'weighted' or 'uniform'")):
        key = flag[2:].replace("-", "_")
        typ = {"stage1_iters": C.non_negative_int, "lr": C.positive(float), "transformer": str, "place": str, "mixture": str,
               "stage1_pairs": C.int_list, "pairs": C.int_list}.get(key, C.positive(int))
        add(flag, typ, help_)
    sp.add_argument("--widths", type=C.int_list, default=None, metavar="V,V,...",
                    help="values of the width field (WIDTHS: d_model or d_state) for every fixed-state model "
                    "named, instead of WIDTHS' three")


def check(a):
    a.seeds = [a.seed]
    recall.check(a)
    if a.widths and not any(n in WIDTHS for n in a.models):
        raise C.UsageError("--widths needs a fixed-state model in --models (" + ",".join(WIDTHS) + ")")
    for name in (n for n in a.models if a.widths and n in WIDTHS):
        check_width(name, a)


def check_width(name, a):
    """Each --widths value must give a config the model accepts and whose training fits in
    memory: refused here, before anything is trained or written."""
    module = importlib.import_module(name)
    field = WIDTHS[name][0]
    for v in a.widths:
        cfg = module.Config(**{**C.SMALL[name], field: v, "vocab_size": recall.vocab_size(a)})
        need = train.memory_estimate(name, cfg, a.batch, a.seq_len, 4, 0)
        avail = train.available_memory(numpy)
        if need and avail and need[0] > avail:
            raise C.UsageError(f"--widths {v}: {name} with {field}={v} needs about {train.gib(need[0])} "
                               f"({need[1]:,} parameters), more than the {train.gib(avail)} available")
        try:
            module.Model(cfg, seed=0).forward(numpy.zeros((1, 4), numpy.int64))
        except (ValueError, AssertionError, TypeError, ZeroDivisionError) as e:
            raise C.UsageError(f"--widths {v}: {name} refuses {field}={v} ({e})")


def run(a):
    recall.describe(a)
    print("widths: " + "; ".join(f"{n} {f} in {a.widths or v}" for n, (f, v) in WIDTHS.items() if n in a.models)
          + f"; lr {a.lr}, weight decay {a.weight_decay} for every run; seed {a.seed}")
    evals = recall.eval_sets(a, a.seed)
    hi = max(a.pairs)
    rows, t0 = [], time.perf_counter()
    for name in a.models:
        if name == "transformer":
            settings = [("kv cache", {})]
        else:
            field, values = WIDTHS[name][0], a.widths or WIDTHS[name][1]
            settings = [(f"{field}={v}", {field: v}) for v in values[:QUICK_WIDTHS if a.quick else None]]
        for label, over in settings:
            model = recall.build(name, a, a.seed, **over)
            f = recall.train_one(model, a, a.seed, a.lr, f"capacity {name} {label}")
            sbytes = C.state_bytes_after(model, a.seq_len, recall.vocab_size(a))
            accs = {K: C.masked_accuracy(model, *evals[K])[0] for K in a.pairs}
            rows.append([name, label, C.count_params(model)[0], sbytes, accs[hi], f["loss"], f["seconds"],
                         f["diverged"]])
            print(f"  {name} {label}: {sbytes:,} state bytes, accuracy at {hi} pairs {accs[hi]:.3f} ("
                  + ", ".join(f"{K}: {v:.3f}" for K, v in accs.items()) + f"; {f['seconds']:.0f} s)", flush=True)
    print(f"all runs in {time.perf_counter() - t0:.0f} s")
    C.write_csv(os.path.join(a.out_dir, "capacity.csv"),
                ["model", "setting", "params", "state_bytes", f"accuracy_{hi}_pairs", "final_train_loss",
                 "train_seconds", "diverged"], rows)
    print(f"\naccuracy at {hi} pairs against state bytes per sequence (T={a.seq_len}; the transformer's is its "
          "KV cache):")
    C.markdown_table(["model", "setting", "params", "state bytes", f"{hi} pairs"],
                     [[r[0], r[1], f"{r[2]:,}", f"{r[3]:,}", r[4]] for r in rows])
    print("\nagainst Zoology (accuracy rises with state size for each fixed-state model):")
    for name in a.models:
        pts = sorted((r[3], r[4]) for r in rows if r[0] == name)
        if len(pts) > 1:
            rises = pts[-1][1] > pts[0][1] + 0.02
            print(f"- {name}: {pts[0][1]:.3f} at {pts[0][0]:,} B -> {pts[-1][1]:.3f} at {pts[-1][0]:,} B "
                  f"-> {C.verdict(rises)}")
    plot(rows, hi, a.seq_len, a.out_dir)


def plot(rows, hi, seq_len, out_dir):
    """capacity.png from the rows of capacity.csv (model, setting, params, state bytes,
    accuracy at the largest K, ...), so that the CSVs of several runs can be joined. A
    label with a comma, a variant run of one model ("s4, 16000 iterations"), is drawn
    dashed in that model's colour."""
    plt = C.pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for name in dict.fromkeys(r[0] for r in rows):
        pts = sorted((int(r[3]), float(r[4])) for r in rows if r[0] == name)
        attn = name.startswith("transformer")
        style = "*" if attn else ("o--" if "," in name else "o-")
        ax.plot(*zip(*pts), style, color=C.COLORS.get(name.split()[0].rstrip(","), "k"), label=name,
                ms=9 if attn else 4)
    ax.axhline(1 / hi, color="k", lw=0.8, ls=":", label=f"1/{hi}")
    ax.set(xscale="log", xlabel=f"state bytes per sequence (T={seq_len})", ylabel=f"accuracy, {hi} pairs",
           ylim=(-0.03, 1.03), title="MQAR accuracy vs memory")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))   # beside the axes, not on the lines
    C.save_png(fig, plt, os.path.join(out_dir, "capacity.png"))
