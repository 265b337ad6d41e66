"""cost: time and memory against sequence length N. A fixed state costs the same per
token at any N (O(N) training, O(1) generation per token, a flat state); attention
trains in O(N^2) and its KV cache grows with N.

Per model: a training step's time (train.train_step) and peak allocation
(tracemalloc), generation time per token through .step near each N, and the state
bytes after N tokens, with log-log slopes. The transformer runs with pos_emb="none"
so that N may pass any block_size (position embeddings cost nothing measurable).
"""
import math
import os
import time
import tracemalloc

import numpy

import train

from . import common as C

NAME = "cost"
HELP = "training and generation time, state and memory against sequence length"
DESCRIPTION = ("Per model: a training step's time and peak allocation, generation time per token through "
               ".step, and the state bytes after N tokens, for N in --lengths, with log-log slopes. Writes "
               "cost.csv, cost_slopes.csv and cost.png.")
DEFAULTS = {"lengths": ([128, 256, 512, 1024, 2048, 4096], [32, 64, 128]), "batch": (1, 1), "repeats": (3, 1),
            "window": (32, 8), "max_seconds": (60.0, 20.0)}


def add_arguments(sp, add):
    add("--lengths", C.int_list, "sequence lengths N, comma-separated")
    add("--batch", C.positive(int), "training batch")
    add("--repeats", C.positive(int), "timed training steps per N (after one warm-up)")
    add("--window", C.positive(int), "generation steps before N whose median is the time per token")
    add("--max-seconds", C.positive(float), "skip longer N for a model once one training step takes longer")


def check(a):
    C.check_memory(f"--batch {a.batch} x N={max(a.lengths)}",
                   C.activation_bytes(a.batch, max(a.lengths), "transformer" in a.models))


def loglog_slope(xs, ys):
    """Least-squares slope of log y against log x (nan with fewer than 2 usable points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if y and y > 0 and math.isfinite(y)]
    if len(pts) < 2:
        return float("nan")
    lx, ly = numpy.array(pts).T
    return float(numpy.polyfit(lx, ly, 1)[0])


def run(a):
    V = 65
    lengths = a.lengths
    print(f"cost against sequence length N in {lengths}: training step (forward, loss, backward, clip, AdamW) "
          f"at batch {a.batch}, generation through .step at batch 1, state bytes after N tokens, and the peak "
          f"memory a training step allocates (tracemalloc); median of {a.repeats} after one warm-up; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print("the transformer runs with pos_emb='none' here, so that N may pass any block_size "
          "(position embeddings cost nothing measurable; attention is what grows)")
    models = {n: C.make_model(n, V, a.seed, **({"pos_emb": "none", "block_size": max(lengths)}
                                            if n == "transformer" else {})) for n in a.models}
    C.print_params(models, V)
    rng = numpy.random.default_rng(a.seed)
    rows = []
    for name, model in models.items():
        opt = train.AdamW(model.params, C.WEIGHT_DECAY, C.BETAS)
        train_ms, peak_mb, stopped = {}, {}, None
        for N in lengths:
            if stopped:
                break
            x = rng.integers(0, V, (a.batch, N))
            y = rng.integers(0, V, (a.batch, N))
            times = []
            for r in range(a.repeats + 1):
                t0 = time.perf_counter()
                train.train_step(model, opt, x, y, 1e-4, C.GRAD_CLIP)
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
                sbytes[N] = C.state_nbytes(state)
            if time.perf_counter() - t_gen > a.max_seconds * 4:
                print(f"  {name}: generation stopped after {t + 1} tokens (> 4 x --max-seconds)")
                break
        print(f"  {name}: generation " + ", ".join(f"N={N} {gen_ms[N]:.3f} ms/token" for N in gen_ms), flush=True)
        for N in lengths:
            rows.append([name, N, train_ms.get(N, ""), gen_ms.get(N, ""), sbytes.get(N, ""), peak_mb.get(N, "")])
    C.write_csv(os.path.join(a.out_dir, "cost.csv"),
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
    C.write_csv(os.path.join(a.out_dir, "cost_slopes.csv"), header, slope_rows)
    print("\nmeasurements (ms; bytes; MB):")
    C.markdown_table(["model", "N", "train step ms", "generate ms/token", "state bytes", "train peak MB"],
                   [[r[0], r[1]] + [("" if v == "" else (f"{v:,}" if isinstance(v, int) else f"{v:.3g}"))
                                    for v in r[2:]] for r in rows])
    print("\nlog-log slopes (1 = linear in N, 2 = quadratic, 0 = flat):")
    C.markdown_table(header, [[r[0]] + [f"{v:.2f}" for v in r[1:]] for r in slope_rows])
    sl = {r[0]: r[1:] for r in slope_rows}
    print("\nagainst the claims (the slopes over the largest three N):")
    for n in models:
        tr, gen, st = sl[n][1], sl[n][3], sl[n][5]
        if n == "transformer":
            print(f"- transformer: training O(N^2) (the T x T attention matrix) -> slope {tr:.2f}: "
                  f"{C.verdict(tr > 1.3)}; generation O(N) per token (attention over N cached keys) -> {gen:.2f}: "
                  f"{C.verdict(gen > 0.5)}; KV cache grows linearly -> {st:.2f}: {C.verdict(abs(st - 1) < 0.05)}")
        else:
            print(f"- {n}: training O(N) -> slope {tr:.2f}: {C.verdict(tr < 1.3)}; generation O(1) per token -> "
                  f"{gen:.2f}: {C.verdict(abs(gen) < 0.3)}; state flat -> {st:.2f}: {C.verdict(abs(st) < 0.05)}")
    print("  (times are wall-clock on a shared machine; per-token generation at batch 1 is dominated by "
          "Python overhead until the attention over the cache outgrows it, which is why the transformer's "
          "slope over all N is below 1.)")

    plt = C.pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3))
    for ax, c, title in zip(axes, (2, 3, 4), ("training step (ms)", "generation (ms/token)",
                                              "state bytes per sequence")):
        for n in models:
            pts = [(row[1], row[c]) for row in rows if row[0] == n and row[c] != ""]
            if pts:
                ax.plot(*zip(*pts), "o-", color=C.COLORS.get(n, "k"), label=n, ms=3)
        ax.set(yscale="log", xlabel="sequence length N", title=title)
        C.log_ticks(ax, lengths)
        ax.tick_params(axis="x", labelsize=7)
    axes[0].legend(fontsize=7)
    C.save_png(fig, plt, os.path.join(a.out_dir, "cost.png"))
