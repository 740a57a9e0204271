"""GSPO (Zheng et al. 2025, eq. 5-7; sequence-level ratio, clip range 3e-4 / 4e-4) on the
reverse task.

  python -m experiments.train --config=experiments/configs/gspo_tokens.py --workdir=/tmp/gspo
"""

from experiments import configs


def get_config():
  """The default config (a ConfigDict)."""
  return configs.tokens_config("gspo", 3e-4, 4e-4)
