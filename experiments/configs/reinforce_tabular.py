"""REINFORCE (Williams 1992) on a finite-horizon Garnet MDP; the exact J is logged each chunk.

  python -m experiments.train --config=experiments/configs/reinforce_tabular.py --workdir=/tmp/rt
"""

from experiments import configs


def get_config():
  """The default config (a ConfigDict)."""
  c = configs.common("tabular")
  c.num_updates = 300
  c.chunk_size = 50
  c.save_every = 100
  c.learning_rate = 0.1
  c.num_seeds = 4
  c.mdp = "garnet"
  c.num_states = 10
  c.num_actions = 3
  c.branching = 3
  c.horizon = 10
  c.gamma = 0.95
  c.mdp_seed = 0
  c.batch_size = 32
  c.baseline = "batch"
  return c
