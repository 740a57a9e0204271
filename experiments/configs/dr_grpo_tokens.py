"""Dr.GRPO (Liu et al. 2025, eq. 3: no std scaling, token sum / (B * T_max)) on the reverse task.

  python -m experiments.train --config=experiments/configs/dr_grpo_tokens.py --workdir=/tmp/drgrpo
"""

from experiments import configs


def get_config():
  """The default config (a ConfigDict)."""
  return configs.tokens_config("dr_grpo", 0.2, 0.2)
