"""
transformer.py: a character-level GPT (decoder-only transformer) with a
hand-derived backward pass.

    x0 = wte[idx] + wpe[0:T] -> dropout -> n_layer x Block -> ln_f -> logits = h wte^T
    Block:  x = x + dropout(attn.c_proj(attention(ln_1(x))))
            x = x + dropout(mlp.c_proj(GELU(mlp.c_fc(ln_2(x)))))
            (Config.mlp=False: no ln_2 and no MLP, an attention-only transformer)

What it is
- nanoGPT's GPT (karpathy/nanoGPT model.py) with bias=True, parameter by
  parameter and with its names, so a checkpoint's arrays load into that module
  (and into torch_ref/transformer.py) with no renaming:
  * causal multi-head self-attention, "scaled dot-product attention"
    (Vaswani et al. 2017, section 3.2): softmax(Q K^T / sqrt(d_k)) V, with a causal
    mask, heads as contiguous slices of width hs = d_model / n_head;
  * GPT-2's pre-LayerNorm blocks, an extra LayerNorm after the last block and the
    c_proj init scaled by 1/sqrt(2 n_layer) (Radford et al. 2019, section 2.3);
  * learned absolute position embeddings (wpe), and the output head tied to the
    token embedding (logits = h wte^T, no lm_head key; Press & Wolf 2017);
  * GELU in its tanh form, as GPT-2 and PyTorch's nn.GELU(approximate="tanh"):
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). nanoGPT itself now uses the
    erf form (nn.GELU()); NumPy has no erf, and GPT-2 was trained with tanh.
  * dropout where nanoGPT puts it (after the embedding sum, on the attention
    weights, on both residual branches), only in forward(idx, train=True).
- Memory is the whole history: every layer keeps a key and a value for every
  past position (the KV cache of step()), 2 * n_layer * d_model numbers per
  token, growing with the context up to block_size. That is the opposite answer
  to the recurrent models' fixed-size state.
- forward() is the training path, parallel over the sequence: every projection
  is one matmul over the (B*T, C) rows; attention is a batched matmul over the
  (B, n_head) pairs, in a few causal row blocks of queries (attention_forward).
  There is no Python loop over positions or heads.
  backward() walks the same lines in reverse.
- step() is the inference path: one token against the KV cache, O(t) at
  position t (attention over t cached keys) instead of a recompute over the
  prefix.
- Runs on NumPy or CuPy (the `xp` argument), in float32 or float64.

What it is not
- No flash attention (the attention matrix is materialised, as causal row
  blocks of (B, nh, rows, keys), and cached for backward), no rotary/relative
  positions (pos_emb="none" is the one alternative: no position information at
  all), no padding mask, no weight decay or clipping (train.py does those), no
  vocab padding.

Shapes (B batch, T time, C = d_model, nh = n_head, hs = C/nh, V vocab, L = n_layer)
    idx       (B, T) int        token ids
    wte       (V, C)            transformer.wte.weight   token embedding, also the output head
    wpe       (block_size, C)   transformer.wpe.weight   learned positions (absent if pos_emb="none")
    W_attn    (3C, C)           transformer.h.{i}.attn.c_attn.weight   rows [q | k | v] = W^Q, W^K, W^V
    b_attn    (3C,)             transformer.h.{i}.attn.c_attn.bias
    W_ao      (C, C)  (C,)      transformer.h.{i}.attn.c_proj.{weight,bias}  W^O, mixes the heads
    W_fc      (4C, C) (4C,)     transformer.h.{i}.mlp.c_fc.{weight,bias}
    W_mo      (C, 4C) (C,)      transformer.h.{i}.mlp.c_proj.{weight,bias}
    ln_1, ln_2, ln_f (C,) (C,)  transformer.h.{i}.ln_1.{weight,bias} ..., transformer.ln_f.{weight,bias}
    q, k, v   (B, nh, T, hs)    Q, K, V of one layer, head-major
    S, P      (B, nh, T, T)     scores Q K^T / sqrt(hs), and P = softmax_row(S) (causal; computed
                                and cached in row blocks, the part above them never computed)
    Y         (B, nh, T, hs)    P V; merged back to y (B*T, C), the input of attn.c_proj
    logits    (B, T, V)
Linear weights are (out, in) as PyTorch stores them: y = x W^T + b. The residual
stream is kept as (B*T, C) rows, so every Linear is a single 2-D matmul.

Every backward line is derived next to it, in the *_backward helpers below and in
Model.backward; the tests check it by finite differences, against a loop-over-heads
attention, and against the PyTorch reference.
"""
import math
from dataclasses import dataclass

import numpy


@dataclass
class Config:
    vocab_size: int = 65      # number of distinct characters; train.py sets it from the corpus
    d_model: int = 128        # C, the width of the residual stream (nanoGPT's n_embd)
    n_layer: int = 4          # transformer blocks
    n_head: int = 4           # attention heads per block; head size hs = d_model / n_head
    block_size: int = 128     # longest context: rows of wpe, and the KV cache's limit
    dropout: float = 0.0      # dropout probability (nanoGPT's places), only in forward(train=True)
    pos_emb: str = "learned"  # "learned": wpe, as GPT-2; "none": no position information at all
    mlp: bool = True          # False: blocks are x = x + attn(ln_1(x)) only, no ln_2 and no MLP


LN_EPS = 1e-5                        # LayerNorm eps, inside the sqrt (PyTorch's default)
GELU_C = math.sqrt(2.0 / math.pi)    # the tanh GELU's constants (Hendrycks & Gimpel 2016, section 2)
GELU_A = 0.044715


def check_idx(idx, vocab_size, ndim, xp):
    """Token ids as an integer xp array of `ndim` dims, all in [0, vocab_size)."""
    if not hasattr(idx, "dtype"):
        idx = numpy.asarray(idx)
    if idx.ndim != ndim or idx.dtype.kind not in "iu":
        want = "(B, T)" if ndim == 2 else "(B,)"
        raise ValueError(f"token ids must be an integer array of shape {want}, "
                         f"got dtype {idx.dtype} and shape {tuple(idx.shape)}")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got values in "
                         f"[{int(idx.min())}, {int(idx.max())}]")
    return xp.asarray(idx)


# ------------------------------------------------------ helpers, forward/backward pairs
# Each piece is a pair: name_forward(arrays..., xp) -> (y, cache), and
# name_backward(dy, cache) -> the gradients of its inputs (and of its parameters), in
# the order of the forward's arguments. Model.backward calls them in reverse order.
# Next to each backward: why its lines are the gradient. Notation: rows are positions
# (N = B*T), dX is dL/dX for the scalar loss L, * and / are elementwise, sums and means
# over rows are written out.

def linear_forward(x, w, b, xp):
    """y = x W^T + b: x (N, in), w (out, in) as PyTorch stores it, b (out,) -> y (N, out).
    The cache also holds a vector of N ones, for db in backward."""
    y = x @ w.T
    y += b
    return y, (x, w, xp.ones(x.shape[0], dtype=x.dtype))


def linear_backward(dy, cache):
    """dy (N, out) -> dx (N, in), dw (out, in), db (out,).
    y_r = W x_r + b for every row r, so dx_r = W^T dy_r, i.e. dx = dy W; W and b are
    shared by all rows, so their gradients sum over rows: dW = sum_r dy_r x_r^T = dy^T x
    (one matmul), db = sum_r dy_r = 1^T dy.
    db as a mat-vec (BLAS) rather than the reduction dy.sum(0): 0.52 -> 0.33 ms per layer
    for the four Linears of a block at the standard config (measured, one thread)."""
    x, w, ones = cache
    return dy @ w, dy.T @ x, ones @ dy


def row_mean_vector(x, xp):
    """(1/C, ..., 1/C) for rows of length C: x @ it is the mean of every row of x (N, C).
    Row means as a matrix-vector product (BLAS) rather than x.mean(-1), a NumPy reduction
    along short rows: 0.014 against 0.065 ms for (2048, 128); LayerNorm forward 0.53 -> 0.38
    ms and backward 0.91 -> 0.77 ms (measured, one thread)."""
    return xp.full(x.shape[-1], 1.0 / x.shape[-1], dtype=x.dtype)


def layernorm_forward(x, w, b, xp):
    """LayerNorm over the last axis, biased variance, eps inside the sqrt (PyTorch's):
    x (N, C) -> y = n * w + b, n = (x - mu) * rstd, rstd = 1 / sqrt(var + eps).
    Caches n and rstd (N, 1) (and w, the mean vector and a vector of N ones); x itself is
    not needed again."""
    mean = row_mean_vector(x, xp)
    n = x - (x @ mean)[:, None]                    # x - mu
    # the row sums of n^2 by einsum, without an (N, C) temporary: 0.11 -> 0.04 ms (2048, 128)
    rstd = 1.0 / xp.sqrt(xp.einsum("ij,ij->i", n, n) * (1.0 / x.shape[-1]) + LN_EPS)[:, None]
    n *= rstd                                      # n = (x - mu) rstd
    y = n * w
    y += b
    return y, (n, rstd, w, mean, xp.ones(x.shape[0], dtype=x.dtype))


def layernorm_backward(dy, cache):
    """dy (N, C) -> dx (N, C), dw (C,), db (C,).  With dn = dy * w and means over the
    C channels of a row:  dx = rstd (dn - mean(dn) - n mean(dn * n)).
    Why: n_j = (x_j - mu) rstd depends on every x_i of its row three ways: directly
    (rstd delta_ij), through mu (d mu / d x_i = 1/C) and through rstd (var = mean((x - mu)^2),
    so d rstd / d x_i = -rstd^3 (x_i - mu) / C = -rstd^2 n_i / C). Together
    d n_j / d x_i = rstd (delta_ij - 1/C - n_i n_j / C); summing dn_j times it over j gives
    the line. The mean terms couple all C channels of a row."""
    n, rstd, w, mean, ones = cache
    # Row means and column sums as mat-vecs (BLAS) rather than reductions, with
    # mean(dn) = dy @ (w/C) and mean(dn * n) = (dy * n) @ (w/C): 6 elementwise passes
    # instead of 9 (backward 1.1 -> 0.9 ms for (2048, 128), interleaved A/B, one thread)
    w_mean = w * mean                              # w / C
    dyn = dy * n
    dw, db = ones @ dyn, ones @ dy                 # dw = sum_r dy_r * n_r, db = sum_r dy_r
    dx = dy * w                                    # dn
    dx -= (dy @ w_mean)[:, None]                   # dn - mean(dn)
    dx -= n * (dyn @ w_mean)[:, None]              # - n mean(dn * n)
    dx *= rstd
    return dx, dw, db


def row_blocks(n_rows, n_cols, xp):
    """Slices of about 64K entries (256 KB in float32) over the rows of an (n_rows, n_cols)
    array, for cache blocking on the CPU: a chain of elementwise passes runs block by block,
    so its temporaries stay in the L2 cache instead of streaming through memory once per
    pass. On a GPU (CuPy) one slice, the whole array."""
    step = max(1, (1 << 16) // n_cols) if xp is numpy else n_rows
    return [slice(i, i + step) for i in range(0, n_rows, step)]


def gelu_forward(h, xp):
    """GELU, tanh form: g = 0.5 h (1 + t), t = tanh(u), u = sqrt(2/pi) (h + 0.044715 h^3).
    Computed as g = h s with s = 0.5 (1 + t) = sigma(2u) = 1 / (1 + e^(-2u)) (since
    tanh u = 2 sigma(2u) - 1): the same function, through exp, which NumPy computes about
    twice as fast as tanh in float32 (1.4 against 2.9 ns per element, one thread), and
    exact in the tail, where 1 + tanh(u) cancels to 0 for u < -9 in float32. For u < -44,
    e^(-2u) overflows to inf and s = 1 / (1 + inf) = 0, the right limit (the overflow
    warning is silenced for that). The cache is the derivative g'(h) (see gelu_backward),
    evaluated here while h and s are in cache, so backward is one multiply."""
    g, dg_dh = xp.empty_like(h), xp.empty_like(h)
    # Cache blocking (row_blocks): the passes below, block by block over (B*T, 4C),
    # took 2.9 ms, against 5.3 ms for g here plus g' in backward as plain passes over the
    # whole array (standard config, one thread, measured). Generation is not slowed by the
    # extra passes (bench.py, measured). Fewer passes: g and g' written with s = sigma(2u),
    # 14 passes instead of 18 (3.3 -> 2.7 ms per layer, interleaved A/B, one thread); s by
    # exp instead of tanh: 21% less time (8.5 -> 6.7 ms per layer on a slower machine than
    # the numbers above), a training step 2.7% faster (medians of 40, interleaved A/B).
    with numpy.errstate(over="ignore"):
        for r in row_blocks(*h.shape, xp):
            x, gr, d = h[r], g[r], dg_dh[r]
            x2 = x * x
            s = x2 * (-2 * GELU_C * GELU_A)
            s -= 2 * GELU_C
            s *= x                                 # -2u = -2 sqrt(2/pi) (h + 0.044715 h^3)
            xp.exp(s, out=s)
            s += 1.0
            xp.reciprocal(s, out=s)                # s = 1 / (1 + e^(-2u)) = 0.5 (1 + t)
            xp.multiply(x, s, out=gr)              # g = h s
            x2 *= 6 * GELU_C * GELU_A
            x2 += 2 * GELU_C                       # 2 du/dh = 2 sqrt(2/pi) (1 + 3 * 0.044715 h^2)
            xp.subtract(1.0, s, out=d)
            d *= x2
            d *= gr
            d += s                                 # g' = s + g (1 - s) 2 du/dh
    return g, dg_dh


def gelu_backward(dg, cache):
    """dg -> dh = dg * g'(h), g'(h) from the cache. The product rule on g = 0.5 h (1 + t),
    with dt/dh = (1 - t^2) du/dh (tanh' = 1 - tanh^2) and du/dh = sqrt(2/pi) (1 + 3 * 0.044715 h^2):
        g'(h) = 0.5 (1 + t) + 0.5 h (1 - t^2) du/dh
              = s + g (1 - s) 2 du/dh,     with s = 0.5 (1 + t), g = h s
    since 1 - t^2 = (1 + t)(1 - t) = 4 s (1 - s). (1 - t^2) rather than 1/cosh(u)^2, which
    overflows in float32 for |u| > 89.
    dg is overwritten (it is Model.backward's temporary)."""
    dg *= cache
    return dg


CAUSAL_BLOCK = 64   # query rows per causal block (see attention_forward)


def causal_blocks(T):
    """Row blocks of about CAUSAL_BLOCK queries, at least two (so the tiny test configs run
    the blocked path too), as (start, end) pairs: queries start..end-1 see keys 0..end-1."""
    n = min(T, max(2, -(-T // CAUSAL_BLOCK)))
    bounds = [T * j // n for j in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def attention_forward(q, k, v, mask, keep, xp):
    """Scaled dot-product attention, all (batch, head) pairs at once:
    Y = dropout(softmax_row(Q K^T / sqrt(hs) + mask)) V.
    q (B, nh, Tq, hs), k, v (B, nh, Tk, hs); mask: None (every query sees every key) or
    the causal mask (Tq = Tk, additive (T, T), -inf where a key is in the future); keep:
    dropout's multiplier on P (B, nh, Tq, Tk), or None.
    Returns Y (B, nh, Tq, hs) and the cache (a dict, by name). Y lies in memory as
    (B, Tq, nh, hs), so merging the heads back into (B*Tq, C) rows is a free reshape."""
    # S = Q K^T / sqrt(hs): with unit-variance entries q.k has variance hs, and the
    # scale keeps the scores near unit variance, where the softmax is not saturated.
    # Applied to q (Tq x hs) rather than to S (Tq x Tk); the cache keeps the scaled q.
    q = q * (1.0 / math.sqrt(q.shape[-1]))
    B, nh, Tq, hs = q.shape
    # Causal blocks: the queries are split into row blocks, and block (s, e) computes its
    # scores against keys 0..e-1 only; the part above the diagonal, where the mask would
    # make P = 0, is never computed (a quarter of the scores at two blocks; attention
    # forward 4.2 -> 3.8 ms per layer at the standard config, measured, one thread).
    # Without a mask, one block: all queries against all keys.
    blocks = causal_blocks(Tq) if mask is not None else [(0, Tq)]
    Y = xp.empty((B, Tq, nh, hs), q.dtype).transpose(0, 2, 1, 3)
    Ps, Pds = [], []
    for s, e in blocks:
        n = e if mask is not None else k.shape[-2]          # the keys this block sees: 0..n-1
        # Layout trick: S is computed as (K Q^T)^T, a (rows, keys) view of a (keys, rows)
        # array, so the softmax's reductions over the keys run across rows in memory
        # (elementwise over long contiguous rows) instead of along each short row: the row
        # max 0.85 -> 0.25 ms; attention forward 4.1 -> 3.6 ms per layer at the standard
        # config (measured, one thread). The math is unchanged.
        S = (k[..., :n, :] @ q[..., s:e, :].swapaxes(-1, -2)).swapaxes(-1, -2)   # (B, nh, e-s, n)
        if mask is not None:                       # the diagonal block: -inf before the row max
            # its mask copied into S's (keys, rows) layout, contiguous (16 KB), so the add is one
            # long loop instead of short strided ones: 0.19 -> 0.02 ms per block (measured)
            S[..., s:e] += xp.ascontiguousarray(mask[s:e, s:e].T).T
        S -= S.max(-1, keepdims=True)              # the diagonal is never masked, so the max is finite
        P = xp.exp(S, out=S)
        # P = softmax_row(S), this block's rows; times the reciprocal of the row sums rather than
        # a division: that pass 0.53 -> 0.39 ms on the last block (measured, one thread). The row
        # sums as a batched mat-vec P 1 (BLAS) rather than P.sum(-1): 0.23 -> 0.04 ms (same block)
        P *= 1.0 / (P @ xp.ones(n, P.dtype))[..., None]
        Pd = P if keep is None else P * keep[..., s:e, :n]   # dropout on the attention weights
        xp.matmul(Pd, v[..., :n, :], out=Y[..., s:e, :])     # Y = Pd V, this block's rows
        Ps.append(P)
        Pds.append(Pd)
    return Y, dict(q=q, k=k, v=v, P=Ps, Pd=Pds, keep=keep, Y=Y, blocks=blocks, xp=xp)


def attention_weights(cache):
    """The whole P (B, nh, Tq, Tk) from attention_forward's cache: its row blocks, with
    zeros above them (the causal part never computed). For inspection and the tests."""
    Ps, xp = cache["P"], cache["xp"]
    P = xp.zeros(Ps[0].shape[:-2] + (cache["Y"].shape[-2], cache["k"].shape[-2]), Ps[0].dtype)
    for (s, e), Pb in zip(cache["blocks"], Ps):
        P[..., s:e, :Pb.shape[-1]] = Pb
    return P


def attention_backward(dY, cache, out=None):
    """dY (B, nh, Tq, hs) -> dq, dk, dv, each the shape of its input; written into `out`,
    three arrays of those shapes (views into one buffer, say), if given.
    - Y = Pd V: dV = Pd^T dY and dPd = dY V^T.
    - Pd = P * keep (dropout, keep fixed): dP = dPd * keep.
    - P = softmax_row(S): P_ij = exp(S_ij) / sum_l exp(S_il) has
      dP_ij / dS_il = P_ij (delta_jl - P_il), so for each row
          dS = P * (dP - rowsum(dP * P)).
      The row sum D_i = sum_j P_ij dP_ij equals sum_d dY_id Y_id, because
      sum_j P_ij keep_ij V_jd = Y_id: O(hs) per row instead of O(Tk) (the
      FlashAttention backward uses the same identity, Dao et al. 2022, appendix B).
    - The mask: masked P_ij are exactly 0, so dS_ij = 0 there; an additive constant has
      no gradient of its own. The causal part never computed is P = 0 too: no gradient.
    - S = (Q s) K^T with s = 1/sqrt(hs) and Q s cached: dQ = s dS K and dK = dS^T (Q s).
    Block by block (attention_forward's causal blocks): row block (s, e) gives dQ of its
    rows and adds its share to dK and dV of the keys it saw; the last block saw every
    key, so it goes first and writes dK and dV whole."""
    q, k, v, Ps, Pds, keep, Y, xp = (cache[n] for n in ("q", "k", "v", "P", "Pd", "keep", "Y", "xp"))
    dq, dk, dv = out if out is not None else (xp.empty(q.shape, q.dtype), xp.empty(k.shape, k.dtype),
                                              xp.empty(v.shape, v.dtype))
    # D by einsum, a sum of products without the (B, nh, T, hs) temporary of (dY * Y).sum(-1):
    # 0.31 -> 0.09 ms per layer (measured, one thread)
    D = xp.einsum("bhtd,bhtd->bht", dY, Y)[..., None]   # D_i = rowsum(dP * P) = dY_i . Y_i
    for (s, e), P, Pd in reversed(list(zip(cache["blocks"], Ps, Pds))):
        n = P.shape[-1]                            # the keys this block saw: 0..n-1
        dYb = dY[..., s:e, :]
        dP = (v[..., :n, :] @ dYb.swapaxes(-1, -2)).swapaxes(-1, -2)   # dPd = dY V^T, laid out as P
        if keep is not None:
            dP *= keep[..., s:e, :n]               # dP = dPd * keep
        dP -= D[..., s:e, :]                       # dP - D
        dP *= P                                    # dS = P * (dP - D)
        xp.matmul(dP, k[..., :n, :], out=dq[..., s:e, :])     # dQ = dS K (times s below)
        if n == k.shape[-2]:                       # every key: write
            xp.matmul(Pd.swapaxes(-1, -2), dYb, out=dv)       # dV = Pd^T dY
            xp.matmul(dP.swapaxes(-1, -2), q[..., s:e, :], out=dk)   # dK = dS^T (Q s)
        else:                                      # keys 0..n-1: add
            dv[..., :n, :] += Pd.swapaxes(-1, -2) @ dYb
            dk[..., :n, :] += dP.swapaxes(-1, -2) @ q[..., s:e, :]
    dq *= 1.0 / math.sqrt(q.shape[-1])
    return dq, dk, dv


class Model:
    """The GPT. `params` holds the arrays (live: forward reads them on every call).

    self.rng: the NumPy Generator that draws the dropout masks, on the host, as
    numpy.random.default_rng(seed + 1) (seed + 1 so the masks do not repeat the init's
    numbers). It advances only in forward(train=True) with dropout > 0. train.py saves
    model.rng.bit_generator.state in checkpoints and restores it on --resume, so a
    resumed run draws the same masks as an unbroken one."""

    def __init__(self, cfg, xp=numpy, dtype=numpy.float32, seed=0):
        self.cfg, self.xp, self.dtype = cfg, xp, numpy.dtype(dtype)
        if cfg.d_model % cfg.n_head:
            raise ValueError(f"d_model ({cfg.d_model}) must be a multiple of n_head ({cfg.n_head})")
        if cfg.pos_emb not in ("learned", "none"):
            raise ValueError(f'pos_emb must be "learned" or "none", got {cfg.pos_emb!r}')
        if not 0.0 <= cfg.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {cfg.dropout}")
        V, C, L = cfg.vocab_size, cfg.d_model, cfg.n_layer
        rng = numpy.random.default_rng(seed)
        self.rng = numpy.random.default_rng(seed + 1)

        def normal(std, *shape):  # drawn in float64 on the host, then cast and moved
            return xp.asarray((std * rng.standard_normal(shape)).astype(self.dtype))

        def const(value, *shape):
            return xp.full(shape, value, dtype=self.dtype)

        # nanoGPT's GPT._init_weights: every Linear and Embedding N(0, 0.02), biases 0,
        # LayerNorm 1 / 0; then the two c_proj weights per block (the ones that write into
        # the residual stream) N(0, 0.02 / sqrt(2 L)) (GPT-2, section 2.3).
        proj_std = 0.02 / math.sqrt(2 * L)
        p = {"transformer.wte.weight": normal(0.02, V, C)}
        if cfg.pos_emb == "learned":
            p["transformer.wpe.weight"] = normal(0.02, cfg.block_size, C)
        for i in range(L):
            h = f"transformer.h.{i}."
            p[h + "ln_1.weight"], p[h + "ln_1.bias"] = const(1, C), const(0, C)
            p[h + "attn.c_attn.weight"], p[h + "attn.c_attn.bias"] = normal(0.02, 3 * C, C), const(0, 3 * C)
            p[h + "attn.c_proj.weight"], p[h + "attn.c_proj.bias"] = normal(proj_std, C, C), const(0, C)
            if cfg.mlp:
                p[h + "ln_2.weight"], p[h + "ln_2.bias"] = const(1, C), const(0, C)
                p[h + "mlp.c_fc.weight"], p[h + "mlp.c_fc.bias"] = normal(0.02, 4 * C, C), const(0, 4 * C)
                p[h + "mlp.c_proj.weight"], p[h + "mlp.c_proj.bias"] = normal(proj_std, C, 4 * C), const(0, C)
        p["transformer.ln_f.weight"], p["transformer.ln_f.bias"] = const(1, C), const(0, C)
        self.params = p
        self._masks = {}

    # ---------------------------------------------------------------- small pieces
    def causal_mask(self, T):
        """(T, T) additive mask: 0 on and below the diagonal, -inf above (key after query).
        Laid out transposed in memory, as attention's scores S are."""
        if T not in self._masks:
            xp = self.xp
            self._masks[T] = xp.tril(xp.full((T, T), -xp.inf, dtype=self.dtype), -1).T
        return self._masks[T]

    def dropout_keep(self, shape):
        """Inverted dropout's multiplier: 0 with probability p, else 1/(1-p), so the
        expected activation is unchanged and evaluation needs no rescaling. Drawn from
        self.rng on the host (float32 uniforms, whatever the model's dtype), then moved.
        Backward: y = x * keep with keep a constant, so dx = dy * keep, the same mask."""
        p = self.cfg.dropout
        keep = self.xp.asarray(self.rng.random(shape, dtype=numpy.float32) >= p).astype(self.dtype)
        keep *= 1.0 / (1.0 - p)
        return keep

    # ------------------------------------------------------------------ forward
    def forward(self, idx, train=False, x0=None):
        """idx (B, T) -> logits (B, T, V), cache. train=True turns dropout on (if
        cfg.dropout > 0). x0, if given, replaces the embedding output wte[idx] + wpe[:T]
        (B, T, C): the tests use it to check the gradient reaching the embeddings, which
        backward leaves in cache["dx0"]."""
        xp, p, cfg = self.xp, self.params, self.cfg
        idx = check_idx(idx, cfg.vocab_size, 2, xp)
        B, T = idx.shape
        C, nh = cfg.d_model, cfg.n_head
        hs = C // nh
        if cfg.pos_emb == "learned" and T > cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {cfg.block_size} "
                             f"(the rows of the learned position embedding wpe)")
        drop = train and cfg.dropout > 0
        # Dropout masks are drawn from self.rng in a fixed order (embedding, then per layer:
        # attention weights, attention residual, MLP residual), so a restored rng state
        # repeats them exactly.
        if x0 is None:
            x0 = p["transformer.wte.weight"][idx]                  # (B, T, C)
            if cfg.pos_emb == "learned":
                x0 = x0 + p["transformer.wpe.weight"][:T]          # broadcast over B
        else:
            x0 = xp.asarray(x0, dtype=self.dtype)
        x = x0.reshape(B * T, C)                                   # the residual stream, (B*T, C) rows
        keep0 = self.dropout_keep((B * T, C)) if drop else None
        if drop:
            x = x * keep0
        mask = self.causal_mask(T)
        layers = []
        for i in range(cfg.n_layer):
            w = lambda name: p[f"transformer.h.{i}.{name}"]        # noqa: E731
            c = {}                                                 # this layer's cache
            # ---- attention sub-block: x = x + dropout(attn.c_proj(attention(ln_1(x))))
            a, c["ln_1"] = layernorm_forward(x, w("ln_1.weight"), w("ln_1.bias"), xp)
            qkv, c["c_attn"] = linear_forward(a, w("attn.c_attn.weight"), w("attn.c_attn.bias"), xp)  # (N, 3C)
            # split q|k|v, then heads as contiguous slices of width hs: (B, nh, T, hs) views
            q, k, v = qkv.reshape(B, T, 3, nh, hs).transpose(2, 0, 3, 1, 4)
            keep = self.dropout_keep((B, nh, T, T)) if drop else None
            Y, c["attn"] = attention_forward(q, k, v, mask, keep, xp)       # (B, nh, T, hs)
            y = Y.transpose(0, 2, 1, 3).reshape(B * T, C)          # merge heads: (B*T, C), a view
            out, c["attn.c_proj"] = linear_forward(y, w("attn.c_proj.weight"), w("attn.c_proj.bias"), xp)
            c["keep_r1"] = self.dropout_keep((B * T, C)) if drop else None
            if drop:
                out *= c["keep_r1"]
            x = x + out
            if cfg.mlp:
                # ---- MLP sub-block: x = x + dropout(mlp.c_proj(GELU(mlp.c_fc(ln_2(x)))))
                a, c["ln_2"] = layernorm_forward(x, w("ln_2.weight"), w("ln_2.bias"), xp)
                h, c["mlp.c_fc"] = linear_forward(a, w("mlp.c_fc.weight"), w("mlp.c_fc.bias"), xp)  # (N, 4C)
                g, c["gelu"] = gelu_forward(h, xp)
                out, c["mlp.c_proj"] = linear_forward(g, w("mlp.c_proj.weight"), w("mlp.c_proj.bias"), xp)
                c["keep_r2"] = self.dropout_keep((B * T, C)) if drop else None
                if drop:
                    out *= c["keep_r2"]
                x = x + out
            layers.append(c)
        hf, ln_f = layernorm_forward(x, p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], xp)
        logits = (hf @ p["transformer.wte.weight"].T).reshape(B, T, -1)   # tied head, (B, T, V)
        # What backward needs, per layer, under the name of the piece that made it: the inputs
        # of the four Linears (the LayerNorm outputs (B*T, C), merged y (B*T, C), GELU's output
        # g (B*T, 4C)); each LayerNorm's (n, rstd); attention's q, k, v (views into qkv), P
        # (B, nh, T, T), its output Y and, with dropout, Pd and the masks; GELU's derivative
        # g'(h) (B*T, 4C). Nothing is recomputed in backward.
        cache = {"idx": idx, "x0": x0, "keep0": keep0, "layers": layers, "hf": hf, "ln_f": ln_f}
        return logits, cache

    # ----------------------------------------------------------------- backward
    def backward(self, dlogits, cache):
        """dlogits (B, T, V) -> grads, a dict with the keys of .params (same order).
        The forward's calls in reverse, each *_backward next to the line it undoes. Where a
        tensor feeds two consumers its gradient is the sum of both: the residual stream
        (x = x + f(x): dx gets the branch's gradient added, +=) and the tied wte (embedding
        and head)."""
        xp, p, cfg = self.xp, self.params, self.cfg
        idx = cache["idx"]
        B, T = idx.shape
        V, C, nh = cfg.vocab_size, cfg.d_model, cfg.n_head
        hs = C // nh
        wte = p["transformer.wte.weight"]
        grads = {}
        # logits = hf wte^T, a Linear without bias: the head's share of dwte (the embedding's
        # share is added last)
        dl = xp.asarray(dlogits, dtype=self.dtype).reshape(B * T, V)
        dwte = dl.T @ cache["hf"]                                   # (V, C)
        dx = dl @ wte                                               # dhf (B*T, C)
        dx, grads["transformer.ln_f.weight"], grads["transformer.ln_f.bias"] = \
            layernorm_backward(dx, cache["ln_f"])
        for i in reversed(range(cfg.n_layer)):
            c = cache["layers"][i]
            g = {}                                                  # this layer's gradients, short names
            if cfg.mlp:
                # ---- MLP sub-block, x = x + dropout(out): dx reaches both x and out
                dout = dx if c["keep_r2"] is None else dx * c["keep_r2"]   # dropout: the same mask
                dgelu, g["mlp.c_proj.weight"], g["mlp.c_proj.bias"] = linear_backward(dout, c["mlp.c_proj"])
                dh = gelu_backward(dgelu, c["gelu"])                   # in place
                da, g["mlp.c_fc.weight"], g["mlp.c_fc.bias"] = linear_backward(dh, c["mlp.c_fc"])
                da, g["ln_2.weight"], g["ln_2.bias"] = layernorm_backward(da, c["ln_2"])
                dx += da
            # ---- attention sub-block, x = x + dropout(out)
            dout = dx if c["keep_r1"] is None else dx * c["keep_r1"]
            dy, g["attn.c_proj.weight"], g["attn.c_proj.bias"] = linear_backward(dout, c["attn.c_proj"])
            dY = dy.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)     # split heads again (a view)
            # dq | dk | dv are written straight into qkv's (B*T, 3C) layout, through the
            # same split into heads as forward's (no merging copies)
            dqkv = xp.empty((B * T, 3 * C), dtype=self.dtype)
            attention_backward(dY, c["attn"], out=dqkv.reshape(B, T, 3, nh, hs).transpose(2, 0, 3, 1, 4))
            da, g["attn.c_attn.weight"], g["attn.c_attn.bias"] = linear_backward(dqkv, c["c_attn"])
            da, g["ln_1.weight"], g["ln_1.bias"] = layernorm_backward(da, c["ln_1"])
            dx += da
            grads.update((f"transformer.h.{i}.{name}", d) for name, d in g.items())
        # x = dropout(x0)
        if cache["keep0"] is not None:
            dx = dx * cache["keep0"]
        dx0 = dx.reshape(B, T, C)
        cache["dx0"] = dx0
        # x0 = wte[idx] + wpe[:T]. Row r of x0 is a copy of row idx_r of wte, so dwte[t] sums
        # dx0 over the rows whose token is t (repeated ids add up): a one-hot matmul, added to
        # the tied head's share. wpe[t] is shared by the B rows at position t.
        onehot = (idx.reshape(-1, 1) == xp.arange(V)).astype(self.dtype)   # (B*T, V)
        dwte += onehot.T @ dx                                       # (V, C)
        grads["transformer.wte.weight"] = dwte
        if cfg.pos_emb == "learned":
            dwpe = xp.zeros((cfg.block_size, C), dtype=self.dtype)
            dwpe[:T] = dx0.sum(0)                                   # rows >= T were not used
            grads["transformer.wpe.weight"] = dwpe
        return {name: grads[name] for name in p}

    # ------------------------------------------------------------ step (inference)
    # The state is the KV cache: for every layer the keys and values of all positions
    # seen so far, (B, nh, n, hs) each, so one new token costs one query against n cached
    # keys, O(n), instead of a forward over the whole prefix, O(n^2). This is the
    # transformer's answer to "how does a network remember?": it keeps everything,
    # 2 * n_layer * d_model numbers per token (1024 at the standard config), so the
    # state grows with the context, where an RNN's stays d_model per layer.
    #
    # The block_size limit (pos_emb="learned"): the cache holds at most block_size
    # positions, because wpe has block_size rows. When it is full, the next token does
    # what nanoGPT's generate() does (idx[:, -block_size:]): the context becomes the last
    # block_size tokens, re-encoded at positions 0..block_size-1. Absolute positions
    # cannot slide, so the cached keys are rebuilt: a forward over the last
    # block_size - 1 tokens (kept in the state for this), then the new token is stepped
    # at position block_size - 1. The logits therefore equal forward() on that window,
    # exactly, but from then on every token costs a forward over the window, O(block_size^2).
    #
    # pos_emb="none": nothing depends on the position, so there is no limit: the cache
    # grows by one key and value per layer per token, and step equals forward over the
    # whole sequence, however long.
    def init_state(self, batch):
        """The empty KV cache: per layer K and V of shape (batch, nh, 0, hs), and the
        last tokens (batch, 0), kept (up to block_size - 1) to re-encode a full cache."""
        xp, cfg = self.xp, self.cfg
        empty = xp.zeros((batch, cfg.n_head, 0, cfg.d_model // cfg.n_head), dtype=self.dtype)
        return {"k": [empty] * cfg.n_layer, "v": [empty] * cfg.n_layer,
                "tokens": xp.zeros((batch, 0), dtype=xp.int64)}

    def step(self, idx_t, state):
        """idx_t (B,) -> logits (B, V), new state (the old state is left unchanged)."""
        xp, p, cfg = self.xp, self.params, self.cfg
        idx_t = check_idx(idx_t, cfg.vocab_size, 1, xp)
        B = idx_t.shape[0]
        C, nh = cfg.d_model, cfg.n_head
        hs = C // nh
        K, Vc, tokens = state["k"], state["v"], state["tokens"]
        learned = cfg.pos_emb == "learned"
        t = K[0].shape[2]                                           # the new token's position
        if learned and t == cfg.block_size:
            # full: rebuild the cache from the last block_size - 1 tokens at positions 0..
            if cfg.block_size > 1:
                cached = self.forward(tokens)[1]["layers"]
                K, Vc = [c["attn"]["k"] for c in cached], [c["attn"]["v"] for c in cached]
            else:
                K, Vc = self.init_state(B)["k"], self.init_state(B)["v"]
            t = K[0].shape[2]
        x = p["transformer.wte.weight"][idx_t]                      # (B, C)
        if learned:
            x = x + p["transformer.wpe.weight"][t]
        new_K, new_V = [], []
        for i in range(cfg.n_layer):
            w = lambda name: p[f"transformer.h.{i}.{name}"]         # noqa: E731
            a = layernorm_forward(x, w("ln_1.weight"), w("ln_1.bias"), xp)[0]
            qkv = linear_forward(a, w("attn.c_attn.weight"), w("attn.c_attn.bias"), xp)[0]   # (B, 3C)
            q, k, v = qkv.reshape(B, 3, nh, 1, hs).transpose(1, 0, 2, 3, 4)  # (B, nh, 1, hs) each
            k = xp.concatenate([K[i], k], axis=2)                   # append: (B, nh, t+1, hs)
            v = xp.concatenate([Vc[i], v], axis=2)
            new_K.append(k)
            new_V.append(v)
            # one query against all cached keys; no mask: the cache holds only the past
            Y = attention_forward(q, k, v, None, None, xp)[0]       # (B, nh, 1, hs)
            x = x + linear_forward(Y.reshape(B, C), w("attn.c_proj.weight"), w("attn.c_proj.bias"), xp)[0]
            if cfg.mlp:
                a = layernorm_forward(x, w("ln_2.weight"), w("ln_2.bias"), xp)[0]
                h = linear_forward(a, w("mlp.c_fc.weight"), w("mlp.c_fc.bias"), xp)[0]
                g = gelu_forward(h, xp)[0]
                x = x + linear_forward(g, w("mlp.c_proj.weight"), w("mlp.c_proj.bias"), xp)[0]
        hf = layernorm_forward(x, p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], xp)[0]
        if learned:   # the token history, for the re-encoding above
            tokens = xp.concatenate([tokens, idx_t[:, None].astype(tokens.dtype)], axis=1)
            tokens = tokens[:, max(0, tokens.shape[1] - (cfg.block_size - 1)):]
        return hf @ p["transformer.wte.weight"].T, {"k": new_K, "v": new_V, "tokens": tokens}
