"""GRPO (Shao et al. 2024, eq. 3) on the reverse task, from a policy pretrained to a sampled
success rate in [0.2, 0.6] (100 updates: about 0.3 -> 0.8 in ~25 s on 2 CPU cores).

  python -m experiments.train --config=experiments/configs/grpo_tokens.py --workdir=/tmp/grpo
"""

from experiments import configs


def get_config():
  """The default config (a ConfigDict)."""
  return configs.tokens_config("grpo", 0.2, 0.2)
