"""icl-lr: train a transformer to do in-context regression, every run and sweep tracked in W&B.

Layers, each a subpackage, imports flowing down this list only (tests/test_layers.py; docs/design.md):
  cli/       the commands: train (icl-lr-train, python train.py), analyze (icl-lr-analyze)
  analysis/  runs' records -> tables, plots, reports
  run/       composition: the validated config of a run, what a start may do with a run dir, sweeps
  train/     the train step and loop, evaluation, optimiser, devices; RunConfig, every section in one
  model/     the model families (GPT-2, LSTM, linear self-attention) and the encodings (read-in, loss, decoding)
  task/      the tasks (linear regression, sparse, classification, nonlinear, mixtures): sampling, baselines
  records/   what a run leaves: run dir, schema of names, tracking (local files, W&B), checkpoints
  fields.py  typed config sections and their one-line errors

Shape letters, one meaning each across the package, written as suffixes (`xs_BxNxD`):
  B prompts in a batch, P prompts of a fixed set, C a chunk of them; N points per prompt, K context size
  (a prefix of the points), D the input dimension (data.n_dims), D1 = D + 1 (a point's x and y);
  T tokens of a sequence, E the model width (model.n_embd), H attention heads, A a head's width;
  V the vocabulary (bins), O a token's outputs; M tasks of a pool, S noise levels; R an SVD's rank;
  W the short convolution's window (a point's tokens).
"""

__version__ = "0.1.0"  # pyproject.toml reads it
