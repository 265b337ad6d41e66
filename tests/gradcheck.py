"""Finite-difference gradient checking for every model.

The recipe:
- float64, deterministic; parameters perturbed away from their init first, so
  norm weights are not 1, biases not 0, and so on;
- two losses from the same logits: (a) the summed cross-entropy on random
  targets, (b) a random projection sum(logits * R), fed to backward as dlogits = R;
- centered differences, h = 1e-5;
- per tensor: ||a - n|| <= 1e-6 (||a|| + ||n||) + floor, and per entry
  |a - n| <= atol + rtol * max(|a|, |n|), rtol 1e-5, atol 1e-8 * max(1, |L|).
  The floor is the round-off of the centered difference itself: each loss is
  computed with a relative error of a few eps, so (L(+h) - L(-h)) / 2h carries an
  error of about eps |L| / h = 2.2e-16 |L| / 1e-5 = 2e-11 |L| per entry, times
  sqrt(entries) for a norm:
  it matters only for tensors whose whole gradient is that small (Mamba's A_log
  at init, ~1e-4 against a summed loss of ~26, where PyTorch's own autograd
  gradient misses the bare 1e-6 by the same amount);
- every entry of small tensors; for large ones a stratified sample over the flat
  index (so every row block, e.g. every gate, is hit) plus the first and last
  entries and the entry of largest analytic gradient;
- the gradient reaching the embedding output (cache["dx0"]), the same way;
- a whole-model directional derivative along a random direction over all
  parameters, which catches a gradient missing from the dict.
"""
import numpy

from models import to_host

H = 1e-5          # step of the centered difference
RTOL = 1e-5       # per-entry relative tolerance
NORM_TOL = 1e-6   # norm-relative tolerance per tensor
ROUNDOFF = 2e-11  # round-off of a centered difference at h = 1e-5, per unit of |L| (see above)
FULL = 200        # tensors with at most this many entries are checked entirely
SAMPLE = 40       # stratified random entries of larger tensors


def perturb(model, scale=0.1, seed=1):
    """Move every parameter away from its (often symmetric) init, in place."""
    rng = numpy.random.default_rng(seed)
    for v in model.params.values():
        v += model.xp.asarray(scale * rng.standard_normal(v.shape))


def entries(shape, grad, rng):
    """Flat indices to check in a tensor of `shape`."""
    n = int(numpy.prod(shape))
    if n <= FULL:
        return numpy.arange(n)
    edges = numpy.linspace(0, n, SAMPLE + 1).astype(int)
    picked = [rng.integers(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    picked += [0, n - 1, int(numpy.argmax(numpy.abs(grad)))]
    return numpy.unique(picked)


def compare(name, a, n, loss_scale):
    """Return a failure message, or None, for analytic a vs numerical n (1-D arrays)."""
    a, n = numpy.asarray(a, float), numpy.asarray(n, float)
    denom = numpy.linalg.norm(a) + numpy.linalg.norm(n)
    norm_err = numpy.linalg.norm(a - n) / denom if denom > 0 else 0.0
    roundoff = ROUNDOFF * max(1.0, abs(loss_scale)) * numpy.sqrt(a.size)
    atol = 1e-8 * max(1.0, abs(loss_scale))
    bad = numpy.abs(a - n) > atol + RTOL * numpy.maximum(numpy.abs(a), numpy.abs(n))
    if numpy.linalg.norm(a - n) <= NORM_TOL * denom + roundoff and not bad.any():
        return None
    i = int(numpy.argmax(numpy.abs(a - n)))
    return (f"{name}: norm-relative error {norm_err:.2e}, {int(bad.sum())}/{a.size} entries off; "
            f"worst: analytic {a[i]:.10g} vs numerical {n[i]:.10g}")


class Losses:
    """The two test losses, evaluated from one forward pass."""

    def __init__(self, model, idx, seed=2):
        rng = numpy.random.default_rng(seed)
        self.model, self.idx = model, idx
        B, T = idx.shape
        V = model.cfg.vocab_size
        self.targets = rng.integers(0, V, (B, T))
        self.R = rng.standard_normal((B, T, V))

    def values(self, x0=None):
        logits, cache = self.model.forward(self.idx, x0=x0)
        z = to_host(logits)
        m = z.max(-1, keepdims=True)
        lse = (m + numpy.log(numpy.exp(z - m).sum(-1, keepdims=True)))[..., 0]
        ce = (lse - numpy.take_along_axis(z, self.targets[..., None], -1)[..., 0]).sum()
        return numpy.array([ce, (z * self.R).sum()]), z, cache

    def dlogits(self, z):
        """dL/dlogits for (a) the summed cross-entropy and (b) the projection."""
        p = numpy.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        onehot = numpy.eye(z.shape[-1])[self.targets]
        return [p - onehot, self.R]


def check_model(model, idx, seed=3, corrupt=None):
    """Check every gradient of `model` at `idx`; return a list of failure messages.

    `corrupt(grads)` may alter the analytic gradients before the comparison: the
    negative control uses it to prove the checker can fail."""
    xp = model.xp
    rng = numpy.random.default_rng(seed)
    losses = Losses(model, idx)
    L0, z, _ = losses.values()
    failures = []

    # Analytic gradients for both losses, and the structure of the dict.
    analytic, dx0 = [], []
    for k, dl in enumerate(losses.dlogits(z)):
        logits, cache = model.forward(idx)
        grads = model.backward(xp.asarray(dl), cache)
        if list(grads) != list(model.params):
            failures.append(f"gradient keys {sorted(grads)} != parameter keys {sorted(model.params)}")
            return failures
        for name, g in grads.items():
            p = model.params[name]
            if g.shape != p.shape or g.dtype != p.dtype:
                failures.append(f"{name}: gradient {g.shape} {g.dtype} vs parameter {p.shape} {p.dtype}")
        grads = {name: to_host(g).copy() for name, g in grads.items()}
        if corrupt is not None:
            corrupt(grads)
        analytic.append(grads)
        dx0.append(to_host(cache["dx0"]))
    if failures:
        return failures

    # Every parameter tensor, each separately.
    for name, p in model.params.items():
        flat = [g[name].ravel() for g in analytic]
        picked = entries(p.shape, flat[1], rng)
        num = numpy.zeros((2, picked.size))
        for j, i in enumerate(picked):
            pos = numpy.unravel_index(i, p.shape)
            old = p[pos].copy() if hasattr(p[pos], "copy") else p[pos]
            p[pos] = old + H
            Lp = losses.values()[0]
            p[pos] = old - H
            Lm = losses.values()[0]
            p[pos] = old
            num[:, j] = (Lp - Lm) / (2 * H)
        for k, label in enumerate(["cross-entropy", "projection"]):
            msg = compare(f"{name} ({label})", flat[k][picked], num[k], L0[k])
            if msg:
                failures.append(msg)

    # The gradient reaching the embedding output x0 (B, T, C).
    _, _, cache = losses.values()
    x0 = to_host(cache["x0"]).copy()
    picked = entries(x0.shape, dx0[1].ravel(), rng)
    num = numpy.zeros((2, picked.size))
    for j, i in enumerate(picked):
        pos = numpy.unravel_index(i, x0.shape)
        xe = x0.copy()
        xe[pos] += H
        Lp = losses.values(xp.asarray(xe))[0]
        xe[pos] -= 2 * H
        Lm = losses.values(xp.asarray(xe))[0]
        num[:, j] = (Lp - Lm) / (2 * H)
    for k, label in enumerate(["cross-entropy", "projection"]):
        msg = compare(f"embedding output dx0 ({label})", dx0[k].ravel()[picked], num[k], L0[k])
        if msg:
            failures.append(msg)

    # Whole-model directional derivative along a random direction v.
    v = {n: rng.standard_normal(p.shape) for n, p in model.params.items()}
    saved = {n: p.copy() for n, p in model.params.items()}
    for n, p in model.params.items():
        p += xp.asarray(H * v[n])
    Lp = losses.values()[0]
    for n, p in model.params.items():
        p -= xp.asarray(2 * H * v[n])
    Lm = losses.values()[0]
    for n, p in model.params.items():
        p[...] = saved[n]
    for k, label in enumerate(["cross-entropy", "projection"]):
        a = sum(float((analytic[k][n] * v[n]).sum()) for n in v)
        msg = compare(f"directional derivative ({label})", [a], [(Lp[k] - Lm[k]) / (2 * H)], L0[k])
        if msg:
            failures.append(msg)
    return failures
