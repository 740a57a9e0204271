"""ml_collections configs of `experiments.train`, one `get_config()` per file, and their validation.

    python -m experiments.train --config=experiments/configs/grpo_tokens.py \
        --config.learning_rate=3e-4

Every config has a `kind` field ("env", "tokens" or "tabular") choosing the training loop
(`pgx_lab.train.loop`); `validate.validate(config)` checks every field before anything compiles.
"""

import ml_collections


def common(kind: str) -> ml_collections.ConfigDict:
  """A ConfigDict with the fields every kind of run has, at their defaults.

  Args:
    kind: "env", "tokens" or "tabular", the training loop.
  """
  c = ml_collections.ConfigDict()
  c.kind = kind
  c.seed = 0
  c.num_updates = 200
  c.chunk_size = 10
  c.save_every = 50
  c.keep = 3
  c.learning_rate = 1e-3
  c.max_grad_norm = 0.0
  c.progress = True
  c.tensorboard = True
  return c


def tokens_config(estimator: str, clip_eps: float, clip_eps_high: float):
  """A "tokens" ConfigDict for `estimator` ("grpo", "gspo", "dr_grpo") with its clip range."""
  c = common("tokens")
  c.num_updates = 100
  c.chunk_size = 10
  c.save_every = 20
  c.learning_rate = 3e-4
  c.max_grad_norm = 1.0
  c.estimator = estimator
  c.task = "reverse"
  c.max_difficulty = 5
  c.reward_type = "exact"
  c.d_model = 64
  c.num_layers = 2
  c.num_heads = 4
  c.prompts_per_batch = 16
  c.group_size = 8
  c.epochs = 2
  c.clip_eps = clip_eps
  c.clip_eps_high = clip_eps_high
  c.kl_beta = 0.0
  c.temperature = 1.0
  c.pretrain = True
  c.pretrain_low = 0.2
  c.pretrain_high = 0.6
  c.pretrain_max_steps = 2000
  c.pretrain_lr = 1e-3
  c.pretrain_eval_every = 10
  c.eval_prompts = 256
  return c
