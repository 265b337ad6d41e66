"""recall: multi-query associative recall (MQAR; Arora et al. 2023, "Zoology").

K key-value pairs, then every key again among fillers; at each query the model must
answer that key's value. Attention looks the pair up in its KV cache; a fixed-size
state has to have squeezed every pair in, so its accuracy should fall as K grows.

The recipe (the same data, curriculum, budget and optimizer for every model):
- a curriculum of two stages: --stage1-iters at --stage1-len tokens with
  --stage1-pairs pairs (the key-value binding is learned on short, easy rows), then
  the full mixture: --seq-len tokens, every K from min(--pairs) to max(--pairs),
  drawn in proportion to K (--mixture weighted): the pairs sit at fixed places, and
  place j occurs only in rows with K >= j, so with K drawn uniformly the last places
  are rare, and learned positions left some of them unbound (place 14 and 16 at
  0.03 for one seed of the transformer, the others at 1.00); weighting makes that
  rarer, not impossible (--place anywhere, the block of pairs at a random place,
  moves the rare places to the start of the row instead);
  one learning-rate schedule over both stages (train.get_lr: 10% warm-up, cosine);
- the evaluation: --eval fresh rows per K in --pairs, the same for every model;
- the transformer is attention-only by default (--transformer attn, the default
  when transformer.py has Config.mlp: no MLP block, d_model 88 in 2 heads, its body
  matched to the SMALL configs; Zoology's setup). With 1 head of 88 the late pair
  places stayed unbound for 2 seeds of 5 (0.760 and 0.938 at 16 pairs); on those two
  seeds 2 heads gave 1.000 and 1.000, lr 1e-3 1.000 and 0.752, --place anywhere
  1.000 and 0.062 at 16 pairs (with 0.846 and 0.510 at 2);
- --seeds: every model trains once per seed; the tables show mean ± half-range;
- the learning rate: --lr for every model, or --sweep-lr, which trains each model
  family at each rate of a small grid (first seed), keeps the rate with the best
  mean accuracy on a separate validation set, and prints the sweep.
"""
import os
import time

import numpy

from . import common as C

NAME = "recall"
HELP = "multi-query associative recall (MQAR) against the number of pairs"
DESCRIPTION = ("MQAR (Zoology): K key-value pairs, then each key again; the model must answer with its "
               "value. A two-stage curriculum, 3 seeds, optionally a learning-rate sweep per model. Writes "
               "recall.csv, recall_curve.csv (accuracy at the largest K during training), recall_places.csv "
               "(accuracy at the largest K by the queried pair's place), recall_sweep.csv and recall.png.")
SEEDS = True
DEVICE = True      # --device gpu
SWEEP_GRID = [1e-3, 3e-3, 1e-2]
DEFAULTS = {
    "iters": (3000, 30), "stage1_iters": (1200, 10), "stage1_len": (16, 12), "stage1_pairs": ([2, 3, 4], [2]),
    "batch": (64, 8), "lr": (3e-3, 3e-3), "seq_len": (64, 24), "pairs": ([2, 4, 8, 16], [2, 4]),
    "n_keys": (32, 8), "eval": (256, 16), "seeds": ([0, 1, 2], [0]), "transformer": ("auto", "auto"),
    "place": ("start", "start"), "mixture": ("weighted", "weighted"),
}


def mqar(rng, batch, seq_len, n_pairs, n_keys=32, n_values=32, place="start"):
    """Multi-query associative recall (Zoology, section 3.1).

    Each row: K key-value pairs  k1 v1 k2 v2 ... kK vK  (keys distinct, values distinct),
    then a query region where every key appears once more, in random order, at random
    positions; the other positions hold the filler token 0. At a query position the
    target is that key's value from the pairs; only those K positions count
    (mask True). Vocabulary: 0 filler, keys 1..n_keys, values n_keys+1..n_keys+n_values.
    n_pairs: an int, or a list from which each row draws its K (a K listed twice is
    drawn twice as often). place="anywhere": the block of pairs starts at a random
    position o (o <= T - 3K), the fillers before it, the queries after it.
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
        o = 0 if place == "start" else int(rng.integers(seq_len - 3 * K + 1))  # where the pairs begin
        x[b, o:o + 2 * K:2], x[b, o + 1:o + 2 * K:2] = keys, values  # the pairs
        where = o + 2 * K + rng.choice(seq_len - o - 2 * K, K, replace=False)  # query positions, after them
        order = rng.permutation(K)
        x[b, where], y[b, where], mask[b, where] = keys[order], values[order], True
    return x, y, mask


def add_arguments(sp, add):
    add("--iters", C.positive(int), "training iterations in all (both stages), every model")
    add("--stage1-iters", C.non_negative_int, "iterations of the first, short stage (0: no curriculum)")
    add("--stage1-len", C.positive(int), "tokens per sequence in the first stage")
    add("--stage1-pairs", C.int_list, "numbers of pairs in the first stage")
    add("--batch", C.positive(int), "sequences per batch")
    add("--lr", C.positive(float), "peak learning rate, every model (unless --sweep-lr)")
    add("--seq-len", C.positive(int), "tokens per sequence (second stage and evaluation)")
    add("--pairs", C.int_list, "numbers of pairs evaluated; the second stage trains on every K in their range")
    add("--n-keys", C.positive(int), "distinct keys (and as many values)")
    add("--eval", C.positive(int), "evaluation sequences per number of pairs")
    add("--seeds", C.seed_list, "seeds (data and init), comma-separated")
    add("--mixture", str, "how the second stage draws K: 'weighted' (in proportion to K, so that the late "
        "pair places, which only rows with many pairs have, are trained often enough) or 'uniform'")
    add("--place", str, "where the pairs sit: 'start' (positions 0..2K-1, Zoology's layout) or 'anywhere' "
        "(the block of pairs starts at a random position, its queries after it)")
    add("--transformer", str, "'attn' (attention only, no MLP), 'mlp' (the SMALL block) or 'auto' (attn if "
        "transformer.py has Config.mlp)")
    sp.add_argument("--sweep-lr", type=C.lr_list, nargs="?", const=SWEEP_GRID, default=None, metavar="LRS",
                    help="choose each model's learning rate by a sweep over LRS (default grid "
                    + ",".join(map(str, SWEEP_GRID)) + "), on the first seed")


def check(a):
    C.resolve_transformer(a)
    if a.mixture not in ("weighted", "uniform"):
        raise C.UsageError(f"--mixture must be 'weighted' or 'uniform', got {a.mixture!r}")
    if a.place not in ("start", "anywhere"):
        raise C.UsageError(f"--place must be 'start' or 'anywhere', got {a.place!r}")
    for flag, T, ks in (("--pairs", a.seq_len, a.pairs), ("--stage1-pairs", a.stage1_len, a.stage1_pairs)):
        for K in ks:
            if 3 * K > T or K > a.n_keys:
                raise C.UsageError(f"{flag} {K} does not fit: it needs 3 x pairs <= {T} tokens "
                                   f"and pairs <= --n-keys ({a.n_keys})")
    if a.stage1_iters >= a.iters:
        raise C.UsageError(f"--stage1-iters {a.stage1_iters} must be below --iters {a.iters}")
    C.check_memory(f"--batch {a.batch} x --seq-len {a.seq_len}",
                   C.activation_bytes(max(a.batch, 64), a.seq_len, "transformer" in a.models))


def vocab_size(a):
    return 1 + 2 * a.n_keys


def build(name, a, seed, **overrides):
    over = dict(C.transformer_overrides(a.transformer), block_size=a.seq_len) if name == "transformer" else {}
    return C.make_model(name, vocab_size(a), seed, **{**over, **overrides})


def eval_sets(a, seed, tag=7):
    """One evaluation set per K (tag 7: the test sets; tag 8: the sweep's validation sets)."""
    return {K: mqar(numpy.random.default_rng([seed, tag, K]), a.eval, a.seq_len, K, a.n_keys, a.n_keys, a.place)
            for K in a.pairs}


def train_one(model, a, seed, lr, label):
    """The curriculum: stage 1 (short, few pairs), then the full mixture; the same batches
    for every model of a seed. Returns fit's dict; its curve is the accuracy at the
    largest K on 64 held-out rows."""
    rng = numpy.random.default_rng([seed, 1])
    Ks = range(min(a.pairs), max(a.pairs) + 1)
    mixture = [K for K in Ks for _ in range(K if a.mixture == "weighted" else 1)]  # mqar draws from this list
    task = dict(n_keys=a.n_keys, n_values=a.n_keys, place=a.place)
    stages = [(a.stage1_iters, lambda: mqar(rng, a.batch, a.stage1_len, a.stage1_pairs, **task)),
              (a.iters - a.stage1_iters, lambda: mqar(rng, a.batch, a.seq_len, mixture, **task))]
    probe_set = mqar(numpy.random.default_rng([seed, 9]), 64, a.seq_len, max(a.pairs), **task)
    return C.fit(model, [s for s in stages if s[0]], lr, label, lambda m: C.masked_accuracy(m, *probe_set)[0],
                 max(1, a.iters // 10), a.weight_decay)


def accuracy_by_pair(model, x, y, mask):
    """Accuracy at the queries, by the place j (0-based) of the queried pair in the row.
    With --place start the pairs sit at positions 2j, 2j+1, so with learned positions
    each place is learned on its own; a place that training rarely reached shows up here."""
    logits, _ = model.forward(x)
    ok = C.to_host(logits.argmax(-1)) == y
    K = int(mask[0].sum())
    right, count = numpy.zeros(K), numpy.zeros(K)
    for b, t in zip(*numpy.nonzero(mask)):
        first = int(numpy.flatnonzero(x[b])[0])                     # the first key of the row
        j = int(numpy.flatnonzero(x[b, first:first + 2 * K:2] == x[b, t])[0])
        right[j] += ok[b, t]
        count[j] += 1
    return right / numpy.maximum(count, 1)


def describe(a):
    print(f"MQAR: {a.n_keys} keys and {a.n_keys} values (vocabulary {vocab_size(a)}); curriculum: "
          f"{a.stage1_iters} iterations at {a.stage1_len} tokens with {a.stage1_pairs} pairs, then "
          f"{a.iters - a.stage1_iters} at {a.seq_len} tokens with {min(a.pairs)}..{max(a.pairs)} pairs ("
          f"{'drawn in proportion to K' if a.mixture == 'weighted' else 'uniform'}); batch "
          f"{a.batch}; weight decay {a.weight_decay}; pairs at the {'start of the row' if a.place == 'start' else 'start of a random block'}; "
          f"evaluated at {a.pairs} pairs; the same for every model")


def sweep(a, seed):
    """Per model: train at each rate; the best mean validation accuracy wins. Returns
    ({model: lr}, sweep rows, {model: (model object, fit dict)} of the winners)."""
    grid, chosen, rows, kept = a.sweep_lr, {}, [], {}
    val = eval_sets(a, seed, tag=8)
    print(f"learning-rate sweep over {grid} (seed {seed}; validation sets, not the test sets)")
    for name in a.models:
        best = None
        for lr in grid:
            model = build(name, a, seed)
            f = train_one(model, a, seed, lr, f"sweep {name} lr {lr:g}")
            acc = [C.masked_accuracy(model, *val[K])[0] for K in a.pairs] if not f["diverged"] else [0.0]
            score = float(numpy.mean(acc))
            rows.append([name, lr, score, f["loss"], f["diverged"]])
            if best is None or score > best[0]:
                best = (score, lr, model, f)
        chosen[name] = best[1]
        kept[name] = (best[2], best[3])
        print(f"  {name}: best lr {best[1]:g} (mean validation accuracy {best[0]:.3f})", flush=True)
    return chosen, rows, kept


def run(a):
    describe(a)
    chosen, sweep_rows, kept = ({n: a.lr for n in a.models}, [], {}) if a.sweep_lr is None else sweep(a, a.seeds[0])
    C.print_params({n: build(n, a, 0) for n in a.models}, vocab_size(a))
    rows, curves, places, t_all = [], [], [], time.perf_counter()
    for seed in a.seeds:
        evals = eval_sets(a, seed)
        for name in a.models:
            if seed == a.seeds[0] and name in kept:
                model, f = kept.pop(name)                # the sweep already trained it: no second run
            else:
                model = build(name, a, seed)
                f = train_one(model, a, seed, chosen[name], f"recall {name} seed {seed}")
            sbytes = C.state_bytes_after(model, a.seq_len, vocab_size(a))
            accs = [C.masked_accuracy(model, *evals[K])[0] for K in a.pairs]
            rows += [[name, seed, chosen[name], sbytes, K, acc, f["loss"], f["seconds"], f["diverged"]]
                     for K, acc in zip(a.pairs, accs)]
            curves += [[name, seed, it, v] for it, v in f["curve"]]
            by_pair = accuracy_by_pair(model, *evals[max(a.pairs)])
            places += [[name, seed, j + 1, float(v)] for j, v in enumerate(by_pair)]
            print(f"  {name} seed {seed}: " + ", ".join(f"{K} pairs {v:.3f}" for K, v in zip(a.pairs, accs))
                  + f" ({f['seconds']:.0f} s); at {max(a.pairs)} pairs by the pair's place: "
                  + " ".join(f"{v:.2f}" for v in by_pair), flush=True)
    print(f"all runs trained and evaluated in {time.perf_counter() - t_all:.0f} s")
    out = lambda f: os.path.join(a.out_dir, f)  # noqa: E731
    C.write_csv(out("recall.csv"), ["model", "seed", "lr", "state_bytes", "n_pairs", "accuracy",
                                    "final_train_loss", "train_seconds", "diverged"], rows)
    C.write_csv(out("recall_curve.csv"), ["model", "seed", "iteration", f"accuracy_{max(a.pairs)}_pairs"], curves)
    C.write_csv(out("recall_places.csv"), ["model", "seed", "pair_place", f"accuracy_{max(a.pairs)}_pairs"], places)
    if sweep_rows:
        C.write_csv(out("recall_sweep.csv"), ["model", "lr", "mean_val_accuracy", "final_train_loss",
                                              "diverged"], sweep_rows)
        print("\nthe learning-rate sweep (mean validation accuracy over the numbers of pairs):")
        C.markdown_table(["model"] + [f"lr {lr:g}" for lr in a.sweep_lr] + ["chosen"],
                         [[n] + [r[2] for r in sweep_rows if r[0] == n] + [f"{chosen[n]:g}"] for n in a.models])
    summarize(rows, a)


def summarize(rows, a):
    acc = {}
    for r in rows:
        acc.setdefault((r[0], r[4]), []).append(r[5])
    sb = {r[0]: r[3] for r in rows}
    lrs = {r[0]: r[2] for r in rows}
    print(f"\naccuracy on the query positions, mean ± half-range over seeds {a.seeds} ({a.eval} sequences per "
          f"column; chance = 1/{a.n_keys}; answering one of the K values seen at random = 1/K):")
    C.markdown_table(["model", "lr", f"state bytes at T={a.seq_len}"] + [f"{K} pairs" for K in a.pairs],
                     [[n, f"{lrs[n]:g}", f"{sb[n]:,}"] + [C.mean_spread(acc[n, K]) for K in a.pairs]
                      for n in a.models])
    hi = max(a.pairs)
    mean = {k: float(numpy.mean(v)) for k, v in acc.items()}
    print(f"\nagainst Zoology (Arora et al. 2023), at {hi} pairs:")
    if "transformer" in a.models:
        worst = min(min(acc["transformer", K]) for K in a.pairs)
        print(f"- attention recalls every pair at every K: the transformer's worst seed and K {worst:.3f} "
              f"-> {C.verdict(worst >= 0.95)} (>= 0.95)")
    fixed = sorted((n for n in a.models if n != "transformer"), key=lambda n: sb[n])
    if len(fixed) > 1:
        ordered = all(mean[p, hi] <= mean[q, hi] + 0.02 for p, q in zip(fixed, fixed[1:]))
        print("- a fixed state recalls more the larger it is: " + ", ".join(
            f"{n} ({sb[n]:,} B) {mean[n, hi]:.3f}" for n in fixed) + f" -> {C.verdict(ordered)}")
    plateau = [n for n in a.models if all(mean[n, K] < 1.5 / K for K in a.pairs)]
    if plateau:
        print(f"- at or near 1/K at every K (a seen value, not the bound one: the binding not learned at this "
              f"budget, which says nothing of the state's capacity): {', '.join(plateau)}")
    plt = C.pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for n in a.models:
        m = [mean[n, K] for K in a.pairs]
        lo = [m_ - min(acc[n, K]) for m_, K in zip(m, a.pairs)]
        hi_ = [max(acc[n, K]) - m_ for m_, K in zip(m, a.pairs)]
        ax.errorbar(a.pairs, m, yerr=[lo, hi_], fmt="o-", color=C.COLORS.get(n, "k"), label=n, ms=4, capsize=2)
    ax.plot(a.pairs, [1 / K for K in a.pairs], "k:", lw=0.8, label="1/K (a seen value)")
    ax.set(xlabel="key-value pairs", ylabel="accuracy", ylim=(-0.03, 1.03),
           title=f"MQAR, {len(a.seeds)} seed(s): mean, min-max")
    C.log_ticks(ax, a.pairs)
    ax.legend(fontsize=7)
    C.save_png(fig, plt, os.path.join(a.out_dir, "recall.png"))
