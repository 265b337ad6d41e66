"""
torch_ref/train.py: train the PyTorch reference of a model (torch_ref/<model>.py)
exactly as train.py trains ours, for the "same recipe in PyTorch" comparison.
Needs PyTorch. Run it from the repository root as a module:

    python -m torch_ref.train --model rnn --data shakespeare
    python -m torch_ref.train --model lstm --data notes.txt --max-iters 500

It takes train.py's flags and uses train.py itself for everything but the model
and the optimizer: the same corpus, vocabulary and split, the same initial
arrays (our Model's init, loaded by name), the same training batches (the same
seeded sampler), the same evaluation windows, the same learning-rate schedule,
clipping and weight-decay groups. The model is the torch_ref module, the loss
F.cross_entropy, the optimizer torch.optim.AdamW. It prints the same eval lines
and wall time; it writes no checkpoint. Errors behave as in train.py: one line
on stderr, exit status 2 (130 for Ctrl-C, 1 for anything unexpected; --debug
or SEQ_DEBUG=1 shows the traceback).
"""
import math
import sys
import time

import numpy

import train


def run(argv):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        raise train.UsageError("needs PyTorch (pip install torch==2.13.0)")
    import torch_ref
    s = train.setup(argv)
    r, args = s.recipe, s.args
    dev = "cuda" if args.device == "gpu" else "cpu"
    params = {k: s.to_host(v) for k, v in s.model.params.items()}
    ref = torch_ref.build(s.name, s.cfg, params, dtype=getattr(torch, r["dtype"])).to(dev)
    named = dict(ref.named_parameters())
    ssm = lambda k: k.rsplit(".", 1)[-1] in train.NO_DECAY  # noqa: E731
    groups = [{"params": [p for k, p in named.items() if train.decays(k, p.shape)],
               "weight_decay": r["weight_decay"], "scale": 1.0},
              {"params": [p for k, p in named.items() if not train.decays(k, p.shape) and not ssm(k)],
               "weight_decay": 0.0, "scale": 1.0},
              {"params": [p for k, p in named.items() if ssm(k)], "weight_decay": 0.0, "scale": r["ssm_lr_scale"]}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=r["lr"], betas=(r["beta1"], r["beta2"]))
    B, T = r["batch_size"], r["seq_len"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: {s.name} reference, "
          f"{sum(p.numel() for p in named.values()):,} parameters, corpus {s.corpus}")
    windows = {split: train.eval_windows(getattr(s, f"{split}_data"), B, T, r["eval_iters"])
               for split in ("train", "val")}
    to_t = lambda a: torch.from_numpy(a).to(dev)  # noqa: E731

    @torch.no_grad()
    def evaluate(step):
        t0 = time.perf_counter()
        ref.eval()  # no dropout while evaluating
        losses = {}
        for split, ws in windows.items():
            total = 0.0
            for x, y in ws:
                logits = ref(to_t(x))
                total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), to_t(y).reshape(-1)).item()
            losses[split] = total / len(ws)
        print(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
        ref.train()
        return time.perf_counter() - t0

    t_start, t_eval, t_log = time.perf_counter(), 0.0, time.perf_counter()
    end = r["max_iters"]
    for it in range(end):
        if it % r["eval_interval"] == 0:
            t_eval += evaluate(it)
            t_log = time.perf_counter()
        lr = train.get_lr(it, r["lr"], r["min_lr"], r["warmup_iters"], r["lr_decay_iters"])
        for g in opt.param_groups:
            g["lr"] = lr * g["scale"]
        x, y = train.get_batch(s.train_data, B, T, s.data_rng)
        logits = ref(to_t(x))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), to_t(y).reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), r["grad_clip"])
        opt.step()
        if (it + 1) % args.log_interval == 0:
            loss_v = loss.item()
            if not math.isfinite(loss_v):
                raise train.UsageError(f"the loss is {loss_v} at iteration {it}: the run diverged and stops")
            dt = (time.perf_counter() - t_log) / args.log_interval
            print(f"iter {it + 1}/{end} | loss {loss_v:.4f} | lr {lr:.2e} | norm {norm.item():.4f} | "
                  f"{dt * 1000:.1f} ms | {B * T / dt:,.0f} tok/s", flush=True)
            t_log = time.perf_counter()
    t_eval += evaluate(end)
    wall = time.perf_counter() - t_start
    print(f"done: {end} iterations in {wall:.1f} s ({wall - t_eval:.1f} s training, {t_eval:.1f} s evaluation)")


def main(argv=None):
    train.keep_freed_memory()  # the same allocator setting as train.py
    with numpy.errstate(over="ignore", invalid="ignore"):
        return train.guarded("torch_ref.train", run, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
