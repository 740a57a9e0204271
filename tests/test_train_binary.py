"""`python -m experiments.train` as a user runs it: a tiny GRPO run checkpoints, writes its metrics
and report, and continues from the checkpoint when started again with the same workdir; bad
overrides fail with a message naming `config.<field>` before anything is written."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_GRPO = ["--config=experiments/configs/grpo_tokens.py", "--config.d_model=16",
             "--config.num_layers=1", "--config.num_heads=2", "--config.prompts_per_batch=4",
             "--config.group_size=4", "--config.task=copy", "--config.max_difficulty=2", "--config.eval_prompts=8",
             "--config.chunk_size=2", "--config.save_every=2", "--config.progress=False",
             "--config.reward_type=partial",
             # The pretraining path at no cost: a band of [0, 1] is reached at the first check.
             "--config.pretrain=True", "--config.pretrain_low=0.0", "--config.pretrain_high=1.0"]


def train(workdir, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "experiments.train", f"--workdir={workdir}",
                         *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def steps(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f]


def test_grpo_binary_checkpoints_and_continues(tmp_path):
  workdir = str(tmp_path / "grpo")
  first = train(workdir, *TINY_GRPO, "--config.num_updates=2")
  assert first.returncode == 0, first.stderr[-3000:]
  assert "report:" in first.stdout
  ckpts = os.listdir(os.path.join(workdir, "checkpoints"))
  assert "2" in ckpts and "fingerprint.json" in ckpts
  assert steps(workdir) == [0, 2]
  assert os.listdir(os.path.join(workdir, "tb"))
  report = open(os.path.join(workdir, "report.md")).read()
  assert "eval_success" in report and "pretrained to a success rate" in report
  assert "resumed" not in report

  second = train(workdir, *TINY_GRPO, "--config.num_updates=4")
  assert second.returncode == 0, second.stderr[-3000:]
  assert steps(workdir) == [0, 2, 4]                  # continued at 2, not restarted at 0
  assert "4" in os.listdir(os.path.join(workdir, "checkpoints"))
  assert "resumed from a checkpoint" in open(os.path.join(workdir, "report.md")).read()

  other = train(workdir, *TINY_GRPO, "--config.num_updates=4", "--config.learning_rate=0.01")
  assert other.returncode == 2
  assert "learning_rate" in other.stderr and "different run" in other.stderr
  assert steps(workdir) == [0, 2, 4]                  # nothing mixed in


def test_bad_overrides_name_the_field(tmp_path):
  workdir = str(tmp_path / "bad")
  out = train(workdir, "--config=experiments/configs/reinforce_tabular.py",
              "--config.learning_rate=-1")
  assert out.returncode == 2
  assert "config.learning_rate" in out.stderr and "> 0" in out.stderr
  assert not os.path.exists(workdir)
  out = train(workdir, "--config=experiments/configs/reinforce_tabular.py", "--config.lr=0.1")
  assert out.returncode != 0 and "lr" in out.stderr
  assert not os.path.exists(workdir)
