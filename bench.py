"""
bench.py: how fast each model trains and generates, in tokens per second, and
the same for the PyTorch reference (torch_ref/) measured in the same run.

    python bench.py --model rnn                      # ours only
    python bench.py --model rnn lstm gru --torch     # ours vs PyTorch eager, with the ratio
    python bench.py --model s4 --seq-len 128 256 512 1024 2048     # how a training step grows with L
    python bench.py --model transformer --torch --recompute        # also: generation without the KV cache
    python bench.py --model mamba --torch --torch-option scan=index  # the slow PyTorch scan, for contrast
    python bench.py --model mamba --config scan=loop # any Config field (here the reference scan)
    python bench.py --model rnn --device gpu --json  # CuPy; one JSON line per result

What is timed
- train: one full step exactly as train.py runs it (forward, cross-entropy,
  backward, global-norm clip, AdamW) on random token windows, batch 16 x 128
  by default, the standard config, float32. PyTorch: the same module loaded with
  the same arrays, F.cross_entropy, loss.backward(), clip_grad_norm_,
  torch.optim.AdamW with the same weight-decay groups. Warm-up steps first, then
  the median of --repeats timed steps.
- generate: batch 1, one token at a time through .step (the recurrent state or
  the KV cache), --gen-tokens tokens after a warm-up; the same through the
  reference's step in torch.no_grad().
- generate-recompute (--recompute): each new token re-runs forward over the
  whole prefix (what a model without a step mode must do).
Memory: as train.py, the process keeps freed memory for reuse
(train.keep_freed_memory); --default-malloc measures without that.
Threads: NumPy's BLAS and PyTorch use the same count (--threads, default: all
cores), set before either is imported.
"""
import argparse
import json
import os
import sys
import time

MODELS = ["rnn", "lstm", "gru", "s4", "mamba", "transformer", "mamba2"]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench.py", description="Training and generation speed, ours vs PyTorch.")
    p.add_argument("--model", nargs="+", choices=MODELS, required=True, help="one or more models")
    p.add_argument("--torch", action="store_true", help="also time the PyTorch reference and print the ratio")
    p.add_argument("--torch-option", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to torch_ref.<model>.build (e.g. scan=index for mamba)")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="a model Config field, e.g. d_model=512 or scan=loop (repeatable)")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, nargs="+", default=[128], help="one or more sequence lengths")
    p.add_argument("--vocab-size", type=int, default=65, help="vocabulary size (tiny shakespeare: 65)")
    p.add_argument("--repeats", type=int, default=10, help="timed training steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--gen-tokens", type=int, default=200, help="tokens generated for the generation speed")
    p.add_argument("--recompute", action="store_true", help="also time generation that re-runs forward")
    p.add_argument("--no-generate", action="store_true", help="skip the generation measurements")
    p.add_argument("--threads", type=int, help="threads for NumPy's BLAS and PyTorch (default: all cores)")
    p.add_argument("--json", action="store_true", help="print one JSON line per result")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's defaults (train.py keeps freed memory; see train.keep_freed_memory)")
    args = p.parse_args(argv)
    for k in ("batch_size", "vocab_size", "repeats", "gen_tokens"):
        if getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be positive")
    if min(args.seq_len) < 1:
        p.error("--seq-len must be positive")
    if any("=" not in c for c in args.config + args.torch_option):
        p.error("--config and --torch-option take KEY=VALUE")
    return args


ARGS = parse_args(sys.argv[1:]) if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import dataclasses  # noqa: E402
import importlib  # noqa: E402

import numpy  # noqa: E402

import train  # noqa: E402


def median_time(fn, warmup, repeats, sync):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(numpy.median(times))


def config_for(module, vocab_size, T, overrides):
    fields = {f.name: type(f.default) for f in dataclasses.fields(module.Config)}
    kwargs = {}
    for item in overrides:
        k, v = item.split("=", 1)
        if k not in fields:
            print(f"bench.py: error: {module.__name__}.Config has no field {k!r}", file=sys.stderr)
            sys.exit(2)
        kwargs[k] = fields[k](v)
    cfg = module.Config(vocab_size=vocab_size, **kwargs)
    if hasattr(cfg, "block_size") and cfg.block_size < T:
        cfg.block_size = T  # the transformer's positions must cover the sequence
    return cfg


def bench_ours(name, args, T, xp, sync):
    module = importlib.import_module(name)
    cfg = config_for(module, args.vocab_size, T, args.config)
    model = module.Model(cfg, xp=xp, dtype=numpy.dtype(args.dtype), seed=0)
    opt = train.AdamW(model.params, 0.1, (0.9, 0.99))
    rng = numpy.random.default_rng(0)
    data = rng.integers(0, args.vocab_size, 100_000)

    def step():
        x, y = train.get_batch(data, args.batch_size, T, rng)
        train.train_step(model, opt, x, y, 1e-4, 1.0, xp)

    out = {"train": median_time(step, args.warmup, args.repeats, sync)}
    if not args.no_generate:
        def generate():
            state = model.init_state(1)
            for i in data[: args.gen_tokens]:
                _, state = model.step(numpy.array([i]), state)
        out["generate"] = median_time(generate, 1, 3, sync) / args.gen_tokens
        if args.recompute:
            n = min(args.gen_tokens, getattr(cfg, "block_size", args.gen_tokens))

            def recompute():
                for t in range(1, n + 1):
                    model.forward(data[None, :t])
            out["generate-recompute"] = median_time(recompute, 0, 1, sync) / n
    return cfg, model, out


def bench_torch(name, args, T, cfg, model, to_host):
    import torch
    import torch.nn.functional as F
    import torch_ref
    options = dict(o.split("=", 1) for o in args.torch_option)
    dev = "cuda" if args.device == "gpu" else "cpu"
    dtype = getattr(torch, args.dtype)
    params = {k: to_host(v) for k, v in model.params.items()}
    ref = torch_ref.build(name, cfg, params, dtype=dtype, **options).to(dev)
    named = dict(ref.named_parameters())
    groups = [{"params": [p for k, p in named.items() if train.decays(k, p.shape)], "weight_decay": 0.1},
              {"params": [p for k, p in named.items() if not train.decays(k, p.shape)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.99))
    rng = numpy.random.default_rng(0)
    data = rng.integers(0, args.vocab_size, 100_000)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def step():
        x, y = (torch.from_numpy(a).to(dev) for a in train.get_batch(data, args.batch_size, T, rng))
        logits = ref(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()

    out = {"train": median_time(step, args.warmup, args.repeats, sync)}
    if not args.no_generate:
        tokens = torch.from_numpy(data[: args.gen_tokens]).to(dev)

        @torch.no_grad()
        def generate():
            state = ref.init_state(1)
            for t in range(args.gen_tokens):
                _, state = ref.step(tokens[t:t + 1], state)
        out["generate"] = median_time(generate, 1, 3, sync) / args.gen_tokens
    return out


def main():
    args = ARGS
    if not args.default_malloc:
        train.keep_freed_memory()  # as train.py does; applies to both sides of the comparison
    try:
        xp, to_host = train.get_xp(args.device)
    except train.UsageError as e:
        print(f"bench.py: error: {e}", file=sys.stderr)
        return 2
    sync = (lambda: xp.cuda.Device().synchronize()) if args.device == "gpu" else (lambda: None)
    if args.torch:
        try:
            import torch
        except ImportError:
            print("bench.py: error: --torch needs PyTorch (pip install torch==2.13.0)", file=sys.stderr)
            return 2
        if args.threads:
            torch.set_num_threads(args.threads)
    threads = args.threads or os.cpu_count()
    for name in args.model:
        for T in args.seq_len:
            cfg, model, ours = bench_ours(name, args, T, xp, sync)
            theirs = bench_torch(name, args, T, cfg, model, to_host) if args.torch else {}
            for kind, t in ours.items():
                batch = args.batch_size if kind == "train" else 1
                tokens = batch * T if kind == "train" else 1
                row = dict(model=name, kind=kind, config=args.config, device=args.device, dtype=args.dtype, batch=batch,
                           seq_len=T if kind == "train" else None, threads=threads,
                           ours_ms=1000 * t, ours_tok_s=tokens / t)
                line = f"{name:<12} {kind:<19} ours {tokens / t:>10,.0f} tok/s ({1000 * t:8.2f} ms"
                line += f" per {'step of ' + str(batch) + 'x' + str(T) if kind == 'train' else 'token'})"
                if kind in theirs:
                    row.update(torch_ms=1000 * theirs[kind], torch_tok_s=tokens / theirs[kind],
                               ratio=theirs[kind] / t, torch_options=args.torch_option)
                    line += f" | torch {tokens / theirs[kind]:>10,.0f} tok/s | ours/torch {theirs[kind] / t:5.2f}x"
                print(json.dumps(row) if args.json else line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
