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
  (B, n_head) pairs. There is no Python loop over positions or heads.
  backward() walks the same lines in reverse.
- step() is the inference path: one token against the KV cache, O(t) at
  position t (attention over t cached keys) instead of a recompute over the
  prefix.
- Runs on NumPy or CuPy (the `xp` argument), in float32 or float64.

What it is not
- No flash attention (the (B, nh, T, T) attention matrix is materialised and
  cached for backward), no rotary/relative positions (pos_emb="none" is the
  one alternative: no position information at all), no padding mask, no
  weight decay or clipping (train.py does those), no vocab padding.

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
    S, P      (B, nh, T, T)     scores Q K^T / sqrt(hs), and P = softmax_row(S) (causal)
    Y         (B, nh, T, hs)    P V; merged back to y (B*T, C), the input of attn.c_proj
    logits    (B, T, V)
Linear weights are (out, in) as PyTorch stores them: y = x W^T + b. The residual
stream is kept as (B*T, C) rows, so every Linear is a single 2-D matmul.

The math of every backward line is in MATH.md section 8 of this project's design
notes; the tests check it by finite differences, against a loop-over-heads
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
def layernorm_forward(x, w, b, xp):
    """LayerNorm over the last axis, biased variance: x (N, C) -> y (N, C), (n, rstd).
    Caches the normalised n and rstd (N, 1); x itself is not needed again."""
    mu = x.mean(-1, keepdims=True)
    n = x - mu
    rstd = 1.0 / xp.sqrt((n * n).mean(-1, keepdims=True) + LN_EPS)
    n *= rstd                                      # n = (x - mu) rstd
    return n * w + b, (n, rstd)


def layernorm_backward(dy, cache, w):
    """dy (N, C) -> dx (N, C), dw, db.  dx = rstd (dn - mean(dn) - n mean(dn n)), dn = dy w."""
    n, rstd = cache
    dn = dy * w
    dx = dn - dn.mean(-1, keepdims=True)
    dx -= n * (dn * n).mean(-1, keepdims=True)     # the mean term couples all C channels of a row
    dx *= rstd
    return dx, (dy * n).sum(0), dy.sum(0)


def gelu_forward(h, xp):
    """GELU, tanh form: g = 0.5 h (1 + tanh(u)), u = sqrt(2/pi) (h + 0.044715 h^3).
    Returns g and t = tanh(u) (cached, so backward needs no second tanh)."""
    t = h * h
    t *= GELU_A
    t += 1.0
    t *= h
    t *= GELU_C                                    # u
    xp.tanh(t, out=t)                              # t = tanh(u)
    g = t + 1.0
    g *= h
    g *= 0.5
    return g, t


def gelu_backward(dg, h, t):
    """dg -> dh = dg * g'(h), with
        g'(h) = 0.5 (1 + t) + 0.5 h (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 h^2).
    (1 - t^2), not sech^2 via cosh, which overflows in float32 (MATH.md section 4)."""
    dh = h * h
    dh *= 3 * GELU_A
    dh += 1.0
    dh *= GELU_C                                   # du/dh = sqrt(2/pi) (1 + 3 * 0.044715 h^2)
    dh *= h
    dh *= 0.5
    dh *= 1.0 - t * t                              # 0.5 h (1 - t^2) du/dh
    dh += 0.5
    dh += 0.5 * t                                  # + 0.5 (1 + t): now g'(h)
    dh *= dg
    return dh


def attention_forward(q, k, v, mask, keep, xp):
    """Scaled dot-product attention, all (batch, head) pairs at once.
    q (..., Tq, hs), k, v (..., Tk, hs); mask: additive (Tq, Tk), -inf where a key is in
    the future, or None; keep: dropout multiplier on P (..., Tq, Tk), or None.
    Returns Y (..., Tq, hs), P (the softmax) and Pd (P after dropout, which multiplies v)."""
    # S = Q K^T / sqrt(hs), the scale applied to q (Tq x hs) rather than to S (Tq x Tk)
    S = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.swapaxes(-1, -2)   # (B, nh, Tq, Tk)
    if mask is not None:
        S += mask                                  # -inf before the row max: exp gives exact zeros
    S -= S.max(-1, keepdims=True)                  # the diagonal is never masked, so the max is finite
    P = xp.exp(S, out=S)
    P /= P.sum(-1, keepdims=True)                  # P = softmax_row(S)
    Pd = P if keep is None else P * keep
    return Pd @ v, P, Pd                           # Y = Pd V  (B, nh, Tq, hs)


def attention_backward(dY, Y, q, k, v, P, Pd, keep):
    """dY (B, nh, T, hs) -> dq, dk, dv (B, nh, T, hs). MATH.md section 8, attention core.
    Masked entries of P are exactly 0, so dS is 0 there: the mask needs nothing here."""
    dv = Pd.swapaxes(-1, -2) @ dY                  # Y = Pd V  ->  dV = Pd^T dY
    dP = dY @ v.swapaxes(-1, -2)                   #           ->  dPd = dY V^T   (B, nh, T, T)
    if keep is not None:
        dP *= keep                                 # Pd = P * keep
    # softmax: dS = P * (dP - D), D_i = sum_j P_ij dP_ij = sum_d dY_id Y_id
    # (the second form is O(T hs) per row instead of O(T^2); it holds with dropout too,
    # because sum_j P_ij keep_ij v_j = Y_i. Dao et al. 2022, FlashAttention, appendix B.)
    dP -= (dY * Y).sum(-1, keepdims=True)
    dP *= P                                        # dS
    scale = 1.0 / math.sqrt(q.shape[-1])
    dq = dP @ k                                    # S = Q K^T / sqrt(hs)  ->  dQ = dS K / sqrt(hs)
    dq *= scale
    dk = dP.swapaxes(-1, -2) @ q                   #                       ->  dK = dS^T Q / sqrt(hs)
    dk *= scale
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
        """(T, T) additive mask: 0 on and below the diagonal, -inf above (key after query)."""
        if T not in self._masks:
            xp = self.xp
            self._masks[T] = xp.triu(xp.full((T, T), -xp.inf, dtype=self.dtype), 1)
        return self._masks[T]

    def dropout_keep(self, shape):
        """Inverted dropout's multiplier: 0 with probability p, else 1/(1-p), so the
        expected activation is unchanged and evaluation needs no rescaling. Drawn from
        self.rng on the host (float32 uniforms, whatever the model's dtype), then moved."""
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
            # ---- attention sub-block: x = x + dropout(c_proj(attention(ln_1(x))))
            a, c["ln_1"] = layernorm_forward(x, w("ln_1.weight"), w("ln_1.bias"), xp)
            qkv = a @ w("attn.c_attn.weight").T                    # (B*T, 3C), columns [q | k | v]
            qkv += w("attn.c_attn.bias")
            # split q|k|v, then heads as contiguous slices of width hs: (3, B, nh, T, hs)
            q, k, v = qkv.reshape(B, T, 3, nh, hs).transpose(2, 0, 3, 1, 4)
            c["keep_att"] = self.dropout_keep((B, nh, T, T)) if drop else None
            Y, c["P"], c["Pd"] = attention_forward(q, k, v, mask, c["keep_att"], xp)
            y = Y.transpose(0, 2, 1, 3).reshape(B * T, C)          # merge heads: (B, T, nh, hs) -> (B*T, C)
            out = y @ w("attn.c_proj.weight").T                    # (B*T, C)
            out += w("attn.c_proj.bias")
            c["keep_r1"] = self.dropout_keep((B * T, C)) if drop else None
            if drop:
                out *= c["keep_r1"]
            x = x + out
            c.update(a=a, q=q, k=k, v=v, y=y)
            if not cfg.mlp:                                        # attention-only block
                layers.append(c)
                continue
            # ---- MLP sub-block: x = x + dropout(c_proj(GELU(c_fc(ln_2(x)))))
            a2, c["ln_2"] = layernorm_forward(x, w("ln_2.weight"), w("ln_2.bias"), xp)
            hpre = a2 @ w("mlp.c_fc.weight").T                     # (B*T, 4C)
            hpre += w("mlp.c_fc.bias")
            g, t = gelu_forward(hpre, xp)
            out = g @ w("mlp.c_proj.weight").T                     # (B*T, C)
            out += w("mlp.c_proj.bias")
            c["keep_r2"] = self.dropout_keep((B * T, C)) if drop else None
            if drop:
                out *= c["keep_r2"]
            x = x + out
            c.update(a2=a2, h=hpre, t=t, g=g)
            layers.append(c)
        hf, ln_f = layernorm_forward(x, p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], xp)
        logits = (hf @ p["transformer.wte.weight"].T).reshape(B, T, -1)   # tied head, (B, T, V)
        # What backward needs. Stored, per layer: the LayerNorm outputs a, a2 (the inputs of
        # c_attn and c_fc) with their (n, rstd); q, k, v (views into qkv); P and, with dropout,
        # Pd and the masks (B, nh, T, T); merged y; the pre-GELU h, t = tanh(u) and g (B*T, 4C).
        # Nothing is recomputed in backward.
        cache = {"idx": idx, "x0": x0, "keep0": keep0, "layers": layers, "hf": hf, "ln_f": ln_f}
        return logits, cache

    # ----------------------------------------------------------------- backward
    def backward(self, dlogits, cache):
        """dlogits (B, T, V) -> grads, a dict with the keys of .params (same order)."""
        xp, p, cfg = self.xp, self.params, self.cfg
        idx = cache["idx"]
        B, T = idx.shape
        V, C, nh = cfg.vocab_size, cfg.d_model, cfg.n_head
        hs = C // nh
        wte = p["transformer.wte.weight"]
        grads = {}
        # logits = hf wte^T: the tied head's share of dwte (the embedding's share is added last)
        dl = xp.asarray(dlogits, dtype=self.dtype).reshape(B * T, V)
        dwte = dl.T @ cache["hf"]                                   # (V, C)
        dx = dl @ wte                                               # dhf (B*T, C)
        # hf = ln_f(x)
        dx, grads["transformer.ln_f.weight"], grads["transformer.ln_f.bias"] = \
            layernorm_backward(dx, cache["ln_f"], p["transformer.ln_f.weight"])
        for i in reversed(range(cfg.n_layer)):
            c = cache["layers"][i]
            pre = f"transformer.h.{i}."
            w = lambda name: p[pre + name]                          # noqa: E731
            if cfg.mlp:
                # ---- MLP sub-block, x = x + dropout(out): dx reaches both x and out
                dout = dx if c["keep_r2"] is None else dx * c["keep_r2"]
                # out = g W_mo^T + b
                grads[pre + "mlp.c_proj.weight"] = dout.T @ c["g"]     # (C, 4C)
                grads[pre + "mlp.c_proj.bias"] = dout.sum(0)
                dg = dout @ w("mlp.c_proj.weight")                      # (B*T, 4C)
                # g = GELU(h)
                dh = gelu_backward(dg, c["h"], c["t"])
                # h = a2 W_fc^T + b
                grads[pre + "mlp.c_fc.weight"] = dh.T @ c["a2"]        # (4C, C)
                grads[pre + "mlp.c_fc.bias"] = dh.sum(0)
                da2 = dh @ w("mlp.c_fc.weight")                         # (B*T, C)
                # a2 = ln_2(x); the residual: dx += its path through ln_2
                da2, grads[pre + "ln_2.weight"], grads[pre + "ln_2.bias"] = \
                    layernorm_backward(da2, c["ln_2"], w("ln_2.weight"))
                dx += da2
            # ---- attention sub-block, x = x + dropout(out)
            dout = dx if c["keep_r1"] is None else dx * c["keep_r1"]
            # out = y W_ao^T + b
            grads[pre + "attn.c_proj.weight"] = dout.T @ c["y"]    # (C, C)
            grads[pre + "attn.c_proj.bias"] = dout.sum(0)
            dy = dout @ w("attn.c_proj.weight")                     # (B*T, C)
            # y = merge(Y): split heads again, as views (B, nh, T, hs)
            dY = dy.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)
            Y = c["y"].reshape(B, T, nh, hs).transpose(0, 2, 1, 3)
            dq, dk, dv = attention_backward(dY, Y, c["q"], c["k"], c["v"], c["P"], c["Pd"], c["keep_att"])
            # q, k, v = split(qkv): merge dq | dk | dv back into the (B*T, 3C) layout
            dqkv = xp.empty((B, T, 3, nh, hs), dtype=self.dtype)
            dqkv[:, :, 0] = dq.transpose(0, 2, 1, 3)
            dqkv[:, :, 1] = dk.transpose(0, 2, 1, 3)
            dqkv[:, :, 2] = dv.transpose(0, 2, 1, 3)
            dqkv = dqkv.reshape(B * T, 3 * C)
            # qkv = a W_attn^T + b
            grads[pre + "attn.c_attn.weight"] = dqkv.T @ c["a"]    # (3C, C)
            grads[pre + "attn.c_attn.bias"] = dqkv.sum(0)
            da = dqkv @ w("attn.c_attn.weight")                     # (B*T, C)
            # a = ln_1(x); the residual
            da, grads[pre + "ln_1.weight"], grads[pre + "ln_1.bias"] = \
                layernorm_backward(da, c["ln_1"], w("ln_1.weight"))
            dx += da
        # x = dropout(x0)
        if cache["keep0"] is not None:
            dx = dx * cache["keep0"]
        dx0 = dx.reshape(B, T, C)
        cache["dx0"] = dx0
        # x0 = wte[idx] + wpe[:T]: scatter-add rows of wte by a one-hot matmul (repeated
        # ids add up), into the same gradient as the tied head's share
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
                K, Vc = [c["k"] for c in cached], [c["v"] for c in cached]
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
            qkv = a @ w("attn.c_attn.weight").T + w("attn.c_attn.bias")   # (B, 3C)
            q, k, v = qkv.reshape(B, 3, nh, 1, hs).transpose(1, 0, 2, 3, 4)  # (B, nh, 1, hs) each
            k = xp.concatenate([K[i], k], axis=2)                   # append: (B, nh, t+1, hs)
            v = xp.concatenate([Vc[i], v], axis=2)
            new_K.append(k)
            new_V.append(v)
            # one query against all cached keys; no mask: the cache holds only the past
            Y = attention_forward(q, k, v, None, None, xp)[0]       # (B, nh, 1, hs)
            x = x + Y.reshape(B, C) @ w("attn.c_proj.weight").T + w("attn.c_proj.bias")
            if cfg.mlp:
                a2 = layernorm_forward(x, w("ln_2.weight"), w("ln_2.bias"), xp)[0]
                g = gelu_forward(a2 @ w("mlp.c_fc.weight").T + w("mlp.c_fc.bias"), xp)[0]
                x = x + g @ w("mlp.c_proj.weight").T + w("mlp.c_proj.bias")
        hf = layernorm_forward(x, p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], xp)[0]
        if learned:   # the token history, for the re-encoding above
            tokens = xp.concatenate([tokens, idx_t[:, None].astype(tokens.dtype)], axis=1)
            tokens = tokens[:, max(0, tokens.shape[1] - (cfg.block_size - 1)):]
        return hf @ p["transformer.wte.weight"].T, {"k": new_K, "v": new_V, "tokens": tokens}
