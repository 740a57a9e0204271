"""PPO (Schulman et al. 2017) on gymnax CartPole-v1 with PureJaxRL's default hyperparameters
(Lu et al. 2022, purejaxrl/ppo.py: 4 envs x 128 steps, 4 epochs of 4 minibatches, lr 2.5e-4
annealed, GAE 0.99 / 0.95, clip 0.2, value coef 0.5, grad-norm clip 0.5, 64-unit tanh MLPs),
vmapped over seeds.

  python -m experiments.train --config=experiments/configs/ppo_cartpole.py --workdir=/tmp/ppo
"""

from experiments import configs


def get_config():
  """The default config (a ConfigDict)."""
  c = configs.common("env")
  c.num_updates = 976          # 5e5 env steps / (4 envs * 128 steps), rounded to chunks
  c.chunk_size = 61
  c.save_every = 244
  c.learning_rate = 2.5e-4
  c.max_grad_norm = 0.5
  c.num_seeds = 2
  c.env_name = "CartPole-v1"
  c.num_envs = 4
  c.num_steps = 128
  c.update_epochs = 4
  c.num_minibatches = 4
  c.gamma = 0.99
  c.gae_lambda = 0.95
  c.clip_eps = 0.2
  c.entropy_coef = 0.01
  c.value_coef = 0.5
  c.hidden_size = 64
  c.anneal_lr = True
  c.eval_envs = 16
  return c
