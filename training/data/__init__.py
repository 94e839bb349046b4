"""Dataset readers: which files form the training pairs and the evaluation splits.

- `splits`: `load_train_pairs`, `load_eval_split`, `TrainSplit`, `EvalSplit`, `Pair`
  (readers: `university` for University-1652 and the synthetic layout, `sues200`; `listing`);
- `query_images`: a drone image as the model's query (pose-aware views read their attitude);
- `synth`: the synthetic cross-view world generator.

torch- and albumentations-free (an import-linter contract), so evaluation, calibration and the
precision report use them without the training stack; the torch side (`pairs`, `augment`,
`sampler`) sits in training/ above them.
"""
