"""experiments: what the models remember, measured. One subcommand per claim.

    python -m experiments recall      # multi-query associative recall (MQAR; Arora et al. 2023, "Zoology")
    python -m experiments capacity    # MQAR accuracy against state bytes, 2-3 widths per model (Zoology's figure)
    python -m experiments copy        # selective copying (Gu & Dao 2023, "Mamba", section 4.1.1)
    python -m experiments induction   # induction heads: train at 64, evaluate to 16x longer (Mamba, 4.1.2)
    python -m experiments cost        # time and memory against sequence length: O(N) vs O(N^2), state vs KV cache
    python -m experiments length      # char LM: train at 128, the loss at each position up to 8x longer
    python -m experiments gradients   # |dL_T / dx_{T-k}| against the distance k: vanishing gradients
    python -m experiments recall --quick          # a smoke test of a few seconds (its numbers mean nothing)
    python -m experiments recall --help           # every flag of one experiment
    python -m experiments recall --device gpu     # the models on CuPy (recall, capacity, copy, induction, length)

Run it from the repository root (it imports the model files and train.py from
there). It is a package, one module per experiment plus common.py (the models,
the training loop on train.train_step, the masked loss, the output helpers, the
argument parsing and the error guard); there is no experiments.py script, since a
file and a package cannot share that import name.

The question is the project's: how does a network remember? Six models keep a
fixed-size running state (rnn, lstm, gru, s4, mamba, mamba2); the transformer
keeps the whole history (its KV cache). Each subcommand
prints its progress and a table, writes its numbers as CSV under --out-dir (default
results/) and, when matplotlib is installed (optional; it is not in
requirements.txt), a small PNG next to it.

What every experiment shares
- The models are used only through the project's protocol: Config, Model(cfg,
  xp=, dtype=, seed=), .params, .forward, .backward (and cache["dx0"]), .init_state,
  .step; the loss, AdamW, clipping, schedule and training step are train.py's.
- Small configs of comparable size (common.SMALL: about 63-66K parameters besides
  the embedding and head, 2 layers each), so that the models train in minutes on
  two CPU cores. They are not the standard configs train.py uses.
- The same training budget for every model of an experiment: the same iterations,
  batch, learning rate (linear warm-up over the first 10%, cosine to lr/10), AdamW
  (betas 0.9/0.99, weight decay 0.1 on matrices, by train.py's rule), gradient
  clipping at 1.0, and the same batches (each model's data stream starts from the
  same seed). recall's --sweep-lr picks one rate per model family by a printed sweep.
- --device gpu builds the models on CuPy (common.XP); the tasks are generated on
  the host, fit() uploads each batch, and only what is measured (argmax, losses)
  comes back. cost and gradients stay on the CPU (tracemalloc, float64).
- float32 everywhere, except the gradient measurement (float64 copies of the
  trained float32 models, so that a gradient of 1e-40 is still a number).
- State bytes: the sum of .nbytes over the arrays of the state that .step returns
  after N tokens at batch 1: h (and c) for rnn/lstm/gru, the complex SSM state for
  s4, the SSM and conv states for mamba, K and V for the transformer. Not counted:
  s4's discretized constants (the same for every sequence: parameters in another
  form) and the transformer's token history (kept only to re-encode the cache
  past block_size with learned positions).

Errors: bad input (an unknown model, a bad value, unusable data, an output folder
that cannot be written) ends with one line on stderr and exit status 2, before
anything is written; an unexpected error ends with one line naming the exception
and exit status 1 (--debug, or SEQ_DEBUG=1 in the environment, shows the traceback);
Ctrl-C exits with 130.
"""
from . import capacity, copying, cost, gradients, induction, length, recall

MODULES = [recall, capacity, copying, induction, cost, length, gradients]
