"""Supervised pretraining: it stops inside the success band, the returned params measure in the
band again on fresh prompts, the loss is the teacher-forced NLL, and failures are reported."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab.envs.token_tasks import make_task
from pgx_lab.envs.token_tasks import vocab
from pgx_lab.models import sampling
from pgx_lab.models import transformer
from pgx_lab.train.pretrain import PretrainError
from pgx_lab.train.pretrain import pretrain
from pgx_lab.train.pretrain import sft_loss

TASK = make_task("reverse", max_difficulty=3)
CONFIG = transformer.TransformerConfig(vocab_size=vocab.VOCAB_SIZE,
                                       max_len=TASK.prompt_len + TASK.response_len,
                                       d_model=32, num_layers=2, num_heads=2)
BAND = (0.2, 0.6)
INIT = jax.jit(transformer.init_params, static_argnums=1)  # flax init runs op by op eagerly


def test_reaches_band_and_returned_params_measure_in_it():
  params, hist = pretrain(jax.random.PRNGKey(0), TASK, CONFIG, target_success=BAND,
                          max_steps=600, batch_size=32, lr=3e-3, eval_every=10, eval_size=512)
  assert hist["reached"]
  assert BAND[0] <= hist["success"][-1] <= BAND[1]
  assert all(not BAND[0] <= s <= BAND[1] for s in hist["success"][:-1])   # stopped at the first
  assert hist["success"][0] < BAND[0]                                    # untrained: ~0
  assert 0 < hist["step"][-1] <= 600 and hist["step"] == sorted(hist["step"])
  assert hist["loss"][-1] < hist["loss"][1]
  assert len(hist["class_success"][-1]) == TASK.num_classes
  # Independent measurement on fresh prompts: sample at temperature 1, parse by hand.
  prompts = TASK.sample_prompts(jax.random.PRNGKey(123), 1024)
  out = jax.jit(sampling.sample, static_argnums=(1, 5), static_argnames=("eos_id",))(
      params, CONFIG, jax.random.PRNGKey(7), prompts.tokens, prompts.mask, TASK.response_len,
      eos_id=vocab.EOS)
  resp, tgt, n = map(np.asarray, (out.response, prompts.target, prompts.target_len))
  ok = [r.tolist()[:k + 1] == tgt[i, :k].tolist() + [vocab.EOS] for i, (r, k) in
        enumerate(zip(resp, n))]
  # Two measurements of n = 512 and 1024 samples: standard errors <= 0.022 and 0.016.
  assert BAND[0] - 0.08 <= np.mean(ok) <= BAND[1] + 0.08
  assert abs(np.mean(ok) - hist["success"][-1]) < 0.1


def test_sft_loss_is_teacher_forced_nll():
  params = INIT(jax.random.PRNGKey(1), CONFIG)
  prompts = TASK.sample_prompts(jax.random.PRNGKey(2), 4, difficulty=jnp.array([1, 3, 1, 3]))
  demo = TASK.demonstration(prompts)
  loss = float(jax.jit(sft_loss, static_argnums=1)(params, CONFIG, prompts, demo))
  forward = jax.jit(transformer.apply, static_argnums=1)
  # By hand: run each unpadded prompt + answer + EOS alone and sum log-softmax of the targets.
  total, count = 0.0, 0
  for i in range(4):
    prompt = [t for t in np.asarray(prompts.tokens[i]).tolist() if t != vocab.PAD]
    answer = [t for t in np.asarray(demo[i]).tolist() if t != vocab.PAD]
    seq = jnp.array([prompt + answer], jnp.int32)
    logits, _ = forward(params, CONFIG, seq)
    lsm = np.asarray(jax.nn.log_softmax(logits[0], axis=-1))
    for j, tok in enumerate(answer):
      total -= lsm[len(prompt) + j - 1, tok]
      count += 1
  assert loss == pytest.approx(total / count, rel=1e-5)


def test_failure_is_reported():
  # The settings of the first test (compilations are shared), but no room for a training chunk.
  kw = dict(target_success=BAND, max_steps=9, batch_size=32, lr=3e-3, eval_every=10,
            eval_size=512)
  with pytest.raises(PretrainError, match="max_steps") as err:
    pretrain(jax.random.PRNGKey(0), TASK, CONFIG, **kw)
  assert err.value.history["success"][0] < BAND[0] and not err.value.history["reached"]
  params, hist = pretrain(jax.random.PRNGKey(0), TASK, CONFIG, on_failure="return", **kw)
  assert not hist["reached"] and hist["step"] == [0]
  init = INIT(jax.random.split(jax.random.PRNGKey(0), 3)[0], CONFIG)
  assert all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(init)))


def test_bad_input_names_argument():
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="target_success"):
    pretrain(key, TASK, CONFIG, target_success=(0.6, 0.2))
  with pytest.raises(ValueError, match="max_len"):
    pretrain(key, TASK, CONFIG._replace(max_len=8))
  with pytest.raises(ValueError, match="vocab_size"):
    pretrain(key, TASK, CONFIG._replace(vocab_size=20))
  with pytest.raises(ValueError, match="lr"):
    pretrain(key, TASK, CONFIG, lr=-1.0)
  with pytest.raises(ValueError, match="eval_every"):
    pretrain(key, TASK, CONFIG, eval_every=0)
  with pytest.raises(ValueError, match="on_failure"):
    pretrain(key, TASK, CONFIG, on_failure="ignore")
  with pytest.raises(ValueError, match="task"):
    pretrain(key, "reverse", CONFIG)
