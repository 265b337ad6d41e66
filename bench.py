"""
bench.py: how fast each model trains and generates, in tokens per second, how
close a training step comes to the machine's matrix-multiply speed, and the same
for the PyTorch reference (torch_ref/) measured in the same run.

    python bench.py --model rnn                      # ours only, one thread
    python bench.py --model rnn lstm gru --torch     # ours vs PyTorch eager, with the ratio
    python bench.py --model s4 --seq-len 128 256 512 1024 2048     # how a training step grows with L
    python bench.py --model transformer --torch --recompute        # also: generation without the KV cache
    python bench.py --model mamba --torch --torch-option scan=index  # the slow PyTorch scan, for contrast
    python bench.py --model mamba --config scan=loop # any Config field (here the reference scan)
    python bench.py --model rnn --device gpu --json  # CuPy; one JSON line per result

What is timed
- sgemm peak: a float32 (1024 x 1024) @ (1024 x 1024) matmul through NumPy's
  BLAS (on the CPU, with --threads threads); 2 * 1024^3 / time is the GFLOP/s
  the training steps are compared with. Timed first (best of ten: the first
  line), then again between the training steps of every model (below), whose
  row uses its own best: the peak of the machine in the state the steps saw.
- train: one full step exactly as train.py runs it (forward, cross-entropy,
  backward, global-norm clip, AdamW) on random token windows, batch 16 x 128
  by default, the standard config, float32. PyTorch: the same module loaded with
  the same arrays, F.cross_entropy, loss.backward(), clip_grad_norm_,
  torch.optim.AdamW with the same weight-decay groups. Warm-up steps first, then
  the median of --repeats timed steps. Our step, PyTorch's (with --torch) and
  the peak's matmul alternate (ours, theirs, matmul, ours, ...), so all three
  see the machine in the same state: the ratio and the fraction of the peak
  stay fair when its speed drifts during the run. Each train row also shows
  the step's FLOPs counted from the config (FLOPS below), the GFLOP/s achieved
  and that as a fraction of the sgemm peak.
- generate: batch 1, one token at a time through .step (the recurrent state or
  the KV cache), --gen-tokens tokens after a warm-up; the same through the
  reference's step in torch.no_grad(), alternating with ours as above.
- generate-recompute (--recompute): each new token re-runs forward over the
  whole prefix (what a model without a step mode must do).
Memory: as train.py, the process keeps freed memory for reuse
(train.keep_freed_memory); --default-malloc measures without that.
Threads: NumPy's BLAS and PyTorch use the same count, --threads, default 1: on a
shared or loaded machine, more threads than idle cores make both sides crawl (on
a busy 2-core machine, all cores gave 315 tok/s where one thread gave 23,000),
so one thread is the number that compares.
Errors: one line on stderr, exit status 2 for bad input, 1 for anything
unexpected (--debug, or SEQ_DEBUG=1, shows the traceback).
"""
import argparse
import dataclasses
import importlib
import json
import math
import os
import statistics
import sys
import time

MODELS = ["rnn", "lstm", "gru", "s4", "mamba", "transformer", "mamba2"]


# FLOPs of one training step, counted from the config. Each entry gives the
# forward pass's multiply-adds per token (a multiply-add is 2 FLOPs); the
# backward pass costs about twice the forward (a gradient for the input and one
# for the weights of every matmul), so a step is
#     FLOPs = 3 * 2 * multiply-adds per token * B * T.
# Only matmuls, convolutions, FFTs and scans are counted; element-wise work
# (gates, norms, softmax, the optimizer) is not, as is usual for such counts.
# H = d_model, L = n_layer, V = vocab_size, T = sequence length, B = batch.
# A new model is one more entry in FLOPS (a model without one gets no FLOPs columns).
def _s4(c, B, T):
    # per layer: output_linear H -> 2H (2H^2); the causal convolution by FFT, three
    # real FFTs of length 2T per channel (~2.5 * 2T * log2(2T) FLOPs each, so
    # 7.5 log2(2T) multiply-adds per token); the S4D kernel, (N/2) complex
    # multiply-adds (4 real) per channel and position, once per batch
    return c.n_layer * (2 * c.d_model ** 2 + 7.5 * math.log2(2 * T) * c.d_model
                        + 2 * c.d_model * c.d_state / B) + c.d_model * c.vocab_size


def _mamba(c, B, T):
    # per layer (E = expand * H, R = ceil(H / 16), N = d_state, K = d_conv):
    # in_proj H -> 2E, the depthwise conv (E K), x_proj E -> R + 2N, dt_proj R -> E,
    # the selective scan (about 3 multiply-adds per state: B-bar u, A-bar h, C h),
    # out_proj E -> H; the head is tied to the embedding, H V
    E, R, N = c.expand * c.d_model, math.ceil(c.d_model / 16), c.d_state
    return c.n_layer * (3 * E * c.d_model + E * c.d_conv + E * (R + 2 * N) + R * E + 3 * E * N) \
        + c.d_model * c.vocab_size


def _mamba2(c, B, T):
    # per layer (E = expand * H, N = d_state, P = headdim, nheads = E / P, Q = chunk_size,
    # F = E + 2N): in_proj H -> 2E + 2N + nheads, the depthwise conv (F K); the chunked SSD:
    # the scores C B^T inside a chunk (Q N per token, shared by the heads), the masked
    # scores applied to the values (Q E), the chunk states (E N) and their readout (E N),
    # the recurrence across chunks (E N per chunk); out_proj E -> H; the tied head H V
    E, N, Q = c.expand * c.d_model, c.d_state, c.chunk_size
    in_proj = (2 * E + 2 * N + E // c.headdim) * c.d_model
    ssd = Q * N + Q * E + 2 * E * N + E * N / Q
    return c.n_layer * (in_proj + (E + 2 * N) * c.d_conv + ssd + E * c.d_model) + c.d_model * c.vocab_size


FLOPS = {  # forward multiply-adds per token
    # per layer: input and recurrent matmuls, one (H x H) each per gate block; then the head H V
    "rnn": lambda c, B, T: c.n_layer * 2 * c.d_model ** 2 + c.d_model * c.vocab_size,
    "lstm": lambda c, B, T: c.n_layer * 8 * c.d_model ** 2 + c.d_model * c.vocab_size,
    "gru": lambda c, B, T: c.n_layer * 6 * c.d_model ** 2 + c.d_model * c.vocab_size,
    "s4": _s4,
    "mamba": _mamba,
    "mamba2": _mamba2,
    # per layer: qkv 3H^2, the output projection H^2, the MLP 8H^2 (4H^2 without it);
    # attention scores and their weighted sum 2 T H (counted over the full T x T, the
    # usual convention; transformer.py computes only its causal row blocks, 3/4 of it
    # at T = 128); the head tied to wte, H V
    "transformer": lambda c, B, T: c.n_layer * ((12 if getattr(c, "mlp", True) else 4) * c.d_model ** 2
                                                + 2 * T * c.d_model) + c.d_model * c.vocab_size,
}


def step_flops(name, cfg, B, T):
    """FLOPs of one training step (forward + backward), or None for a model without an entry."""
    return 6 * FLOPS[name](cfg, B, T) * B * T if name in FLOPS else None


class UsageError(Exception):
    """Bad input: one line on stderr, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def count(lo):
    """An argparse type: an integer >= lo."""
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not an integer")
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {s}")
        return v
    return parse


def parse_args(argv):
    """Only the standard library here: NumPy is loaded after the thread count is set."""
    pos, nonneg = count(1), count(0)
    p = Parser(prog="bench.py", description="Training and generation speed, ours vs PyTorch.")
    p.add_argument("--model", nargs="+", choices=MODELS, required=True, help="one or more models")
    p.add_argument("--torch", action="store_true", help="also time the PyTorch reference and print the ratio")
    p.add_argument("--torch-option", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to torch_ref.<model>.build (e.g. scan=index for mamba)")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="a model Config field, e.g. d_model=512 or scan=loop (repeatable)")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--batch-size", type=pos, default=16)
    p.add_argument("--seq-len", type=pos, nargs="+", default=[128], help="one or more sequence lengths")
    p.add_argument("--vocab-size", type=pos, default=65, help="vocabulary size (tiny shakespeare: 65)")
    p.add_argument("--repeats", type=pos, default=10, help="timed training steps (the median is reported)")
    p.add_argument("--warmup", type=nonneg, default=3, help="untimed steps first")
    p.add_argument("--gen-tokens", type=pos, default=200, help="tokens generated for the generation speed")
    p.add_argument("--recompute", action="store_true", help="also time generation that re-runs forward")
    p.add_argument("--no-generate", action="store_true", help="skip the generation measurements")
    p.add_argument("--threads", type=pos, default=1, help="threads for NumPy's BLAS and PyTorch (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON line per result")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's defaults (train.py keeps freed memory; see train.keep_freed_memory)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    args = p.parse_args(argv)
    for item in args.config + args.torch_option:
        if "=" not in item:
            raise UsageError(f"--config and --torch-option take KEY=VALUE, got {item!r}")
    return args


def configs(args, train):
    """The Config of every (model, seq_len), checked before anything is timed."""
    out = {}
    for name in args.model:
        module = importlib.import_module(name)
        fields = {f.name: f for f in dataclasses.fields(module.Config)}
        kwargs = {}
        for item in args.config:
            k, v = item.split("=", 1)
            if k not in fields or k == "vocab_size":
                raise UsageError(f"--config {item}: {name}.Config has no field {k!r}"
                                 + (" (use --vocab-size)" if k == "vocab_size" else ""))
            try:
                kwargs[k] = train.field_type(fields[k])(v)
            except argparse.ArgumentTypeError as e:
                raise UsageError(f"--config {item}: {e}")
        for T in args.seq_len:
            cfg = module.Config(vocab_size=args.vocab_size, **kwargs)
            if hasattr(cfg, "block_size") and cfg.block_size < T:
                cfg.block_size = T  # the transformer's positions must cover the sequence
            itemsize = 4 if args.dtype == "float32" else 8
            need = train.memory_estimate(name, cfg, args.batch_size, T, itemsize, 0)
            avail = train.available_memory(train.get_xp(args.device)[0])
            if need and avail and need[0] > avail:
                raise UsageError(f"{name} at batch {args.batch_size} x {T} needs about {train.gib(need[0])} "
                                 f"({need[1]:,} parameters), more than the {train.gib(avail)} available")
            try:   # a config the model refuses is bad input too: find out before timing anything
                module.Model(cfg, seed=0).forward(numpy.zeros((1, T), dtype=numpy.int64))
            except (ValueError, AssertionError, TypeError, ZeroDivisionError) as e:
                raise UsageError(f"invalid {name} configuration: {e}")
            out[name, T] = cfg
    return out


def alternate(fns, warmup, repeats, sync):
    """The times of `repeats` calls of each function in fns (a list per function), their
    calls alternating: a b a b ... So ours and PyTorch's steps, and the matmul that gives
    the peak, see the machine in the same state; a change in its speed during the run
    (another process, the clock) moves them alike, and the ratios stay fair."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    sync()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t0)
    return times


def sgemm(xp, n=1024):
    """A float32 (n x n) @ (n x n) matmul through the array module's BLAS, and its FLOPs.
    Its GFLOP/s at the best of several calls is the peak the training steps are compared with."""
    a = xp.asarray(numpy.random.default_rng(0).standard_normal((n, n), dtype=numpy.float32))
    b = a.T.copy()
    return (lambda: a @ b), 2 * n ** 3


def bench_ours(name, cfg, args, T, xp):
    """Our model and what is timed, by kind: (function, warm-up calls, timed calls, n), where
    the time reported is a call's time / n (a training step: n = 1; generation: per token)."""
    model = importlib.import_module(name).Model(cfg, xp=xp, dtype=numpy.dtype(args.dtype), seed=0)
    opt = train.AdamW(model.params, 0.1, (0.9, 0.99))
    rng = numpy.random.default_rng(0)
    data = rng.integers(0, args.vocab_size, max(100_000, T + 1))

    def step():
        x, y = train.get_batch(data, args.batch_size, T, rng)
        train.train_step(model, opt, x, y, 1e-4, 1.0, xp)

    timed = {"train": (step, args.warmup, args.repeats, 1)}
    if not args.no_generate:
        def generate():
            state = model.init_state(1)
            for i in data[: args.gen_tokens]:
                _, state = model.step(numpy.array([i]), state)
        timed["generate"] = (generate, 1, 3, args.gen_tokens)
        if args.recompute:
            n = min(args.gen_tokens, getattr(cfg, "block_size", args.gen_tokens))

            def recompute():
                for t in range(1, n + 1):
                    model.forward(data[None, :t])
            timed["generate-recompute"] = (recompute, 0, 1, n)
    return model, timed


def bench_torch(name, args, T, cfg, model, to_host):
    """The PyTorch reference loaded with our model's arrays, and its functions to time:
    {"train": step, "generate": generate}, the same work as bench_ours's."""
    import torch
    import torch.nn.functional as F
    import torch_ref
    options = dict(o.split("=", 1) for o in args.torch_option)
    dev = "cuda" if args.device == "gpu" else "cpu"
    dtype = getattr(torch, args.dtype)
    params = {k: to_host(v) for k, v in model.params.items()}
    try:
        ref = torch_ref.build(name, cfg, params, dtype=dtype, **options).to(dev)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--torch-option {' '.join(args.torch_option)}: torch_ref.{name} refuses it ({e})")
    named = dict(ref.named_parameters())
    groups = [{"params": [p for k, p in named.items() if train.decays(k, p.shape)], "weight_decay": 0.1},
              {"params": [p for k, p in named.items() if not train.decays(k, p.shape)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.99))
    rng = numpy.random.default_rng(0)
    data = rng.integers(0, args.vocab_size, max(100_000, T + 1))
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def step():
        x, y = (torch.from_numpy(a).to(dev) for a in train.get_batch(data, args.batch_size, T, rng))
        logits = ref(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()
        sync()

    fns = {"train": step}
    if not args.no_generate:
        tokens = torch.from_numpy(data[: args.gen_tokens]).to(dev)

        @torch.no_grad()
        def generate():
            state = ref.init_state(1)
            for t in range(args.gen_tokens):
                _, state = ref.step(tokens[t:t + 1], state)
            sync()
        fns["generate"] = generate
    return fns


def run(argv):
    global numpy, train
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy   # after the thread count is set: BLAS reads it once, when it loads
    import train
    if not args.default_malloc:
        train.keep_freed_memory()  # as train.py does; applies to both sides of the comparison
    try:
        xp, to_host = train.get_xp(args.device)
    except train.UsageError as e:
        raise UsageError(str(e))
    cfgs = configs(args, train)
    if args.torch:
        try:
            import torch
        except ImportError:
            raise UsageError("--torch needs PyTorch (pip install torch==2.13.0)")
        torch.set_num_threads(args.threads)
    sync = (lambda: xp.cuda.Device().synchronize()) if args.device == "gpu" else (lambda: None)
    matmul, matmul_flops = sgemm(xp)
    peak = matmul_flops / min(alternate([matmul], 3, 10, sync)[0]) / 1e9   # the best of 10 calls
    if not args.json:
        print(f"{args.threads} thread{'s' if args.threads > 1 else ''} on {args.device}; float32 sgemm peak "
              f"{peak:.1f} GFLOP/s (1024 x 1024 matmul); {args.dtype}", flush=True)
    for name in args.model:
        for T in args.seq_len:
            cfg = cfgs[name, T]
            model, timed = bench_ours(name, cfg, args, T, xp)
            theirs = bench_torch(name, args, T, cfg, model, to_host) if args.torch else {}
            flops = step_flops(name, cfg, args.batch_size, T)
            for kind, (fn, warmup, repeats, n) in timed.items():
                # ours, PyTorch's and (for training) the peak's matmul, alternating (see alternate)
                fns = {"ours": fn}
                if kind in theirs:
                    fns["torch"] = theirs[kind]
                if kind == "train" and flops:
                    fns["sgemm"] = matmul
                times = dict(zip(fns, alternate(list(fns.values()), warmup, repeats, sync)))
                t = statistics.median(times["ours"]) / n
                batch = args.batch_size if kind == "train" else 1
                tokens = batch * T if kind == "train" else 1
                row = dict(model=name, kind=kind, config=args.config, device=args.device, dtype=args.dtype,
                           batch=batch, seq_len=T if kind == "train" else None, threads=args.threads,
                           ours_ms=1000 * t, ours_tok_s=tokens / t)
                line = f"{name:<12} {kind:<19} ours {tokens / t:>10,.0f} tok/s ({1000 * t:8.2f} ms"
                line += f" per {'step of ' + str(batch) + 'x' + str(T) if kind == 'train' else 'token'})"
                if kind == "train" and flops:
                    row_peak = matmul_flops / min(times["sgemm"]) / 1e9   # the best call between the steps
                    row.update(step_gflop=flops / 1e9, gflop_s=flops / t / 1e9, sgemm_peak_gflop_s=row_peak,
                               peak_fraction=flops / t / 1e9 / row_peak)
                    line += (f" | {flops / 1e9:6.2f} GFLOP, {flops / t / 1e9:6.1f} GFLOP/s = "
                             f"{100 * flops / t / 1e9 / row_peak:3.0f}% of peak ({row_peak:.1f})")
                if "torch" in times:
                    tt = statistics.median(times["torch"]) / n
                    row.update(torch_ms=1000 * tt, torch_tok_s=tokens / tt, ratio=tt / t,
                               torch_options=args.torch_option)
                    line += f" | torch {tokens / tt:>10,.0f} tok/s | ours/torch {tt / t:5.2f}x"
                print(json.dumps(row) if args.json else line, flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        run(argv)
    except KeyboardInterrupt:
        print("\nbench.py: interrupted", file=sys.stderr)
        return 130
    except UsageError as e:
        print(f"bench.py: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if "--debug" in argv or os.environ.get("SEQ_DEBUG", "") not in ("", "0"):
            raise
        print(f"bench.py: unexpected error: {type(e).__name__}: {e} (run with --debug, or SEQ_DEBUG=1, for "
              "the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
