"""Token reward and preference datasets: round trip in a new process, views, errors, speed."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from pgx_lab.data import rlds, token_datasets as td

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reward_arrays(n, rng, lp=5, lr=7):
  return dict(prompt=rng.integers(0, 30, (n, lp)), prompt_mask=rng.random((n, lp)) < 0.8,
              response=rng.integers(0, 30, (n, lr)).astype(np.int16),
              response_mask=(rng.random((n, lr)) < 0.6).astype(np.float32),
              reward=rng.normal(size=n), class_id=rng.integers(0, 4, n))


def _preference_arrays(n, rng, lp=4, lr=6):
  return dict(prompt=rng.integers(0, 30, (n, lp)), prompt_mask=np.ones((n, lp), bool),
              chosen=rng.integers(0, 30, (n, lr)), chosen_mask=rng.random((n, lr)) < 0.7,
              rejected=rng.integers(0, 30, (n, lr)), rejected_mask=rng.random((n, lr)) < 0.7,
              chosen_reward=rng.normal(size=n), rejected_reward=rng.normal(size=n))


def _stored(x):
  """What a written array reads back as: int32 tokens/ids, float32 masks and rewards."""
  x = np.asarray(x)
  return x.astype(np.int32) if np.issubdtype(x.dtype, np.integer) else x.astype(np.float32)


def test_round_trip_in_new_process(tmp_path):
  rng = np.random.default_rng(0)
  rew, pref = _reward_arrays(50, rng), _preference_arrays(23, rng)
  p_rew = td.write_reward_dataset(tmp_path / "rew", **rew, block_size=7, metadata={"task": "t"})
  p_pref = td.write_preference_dataset(tmp_path / "pref", **pref, block_size=5)
  out = tmp_path / "read.npz"
  script = ("import sys, json, numpy as np\n"
            "from pgx_lab.data import token_datasets as td\n"
            "r = td.read_reward_dataset(sys.argv[1]); p = td.read_preference_dataset(sys.argv[2])\n"
            "arr = lambda d, pre: {pre + k: v for k, v in vars(d).items()\n"
            "                      if isinstance(v, np.ndarray)}\n"
            "arrs = dict(arr(r, 'rew/'), **arr(p, 'pref/'))\n"
            "np.savez(sys.argv[3], meta=json.dumps(r.metadata), **arrs)\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  subprocess.run([sys.executable, "-c", script, p_rew, p_pref, str(out)], check=True, cwd=REPO,
                 env=env, capture_output=True)
  got = np.load(out)
  for prefix, arrays in (("rew/", rew), ("pref/", pref)):
    for k, v in arrays.items():
      want = _stored(v)
      assert got[prefix + k].dtype == want.dtype, k
      np.testing.assert_array_equal(got[prefix + k], want, err_msg=k)
  assert len([k for k in got.files if k != "meta"]) == len(rew) + len(pref)
  assert json.loads(str(got["meta"])) == {"task": "t"}


def test_optional_fields_and_sequence_batch(tmp_path):
  rng = np.random.default_rng(1)
  arrays = _reward_arrays(12, rng, lp=3, lr=4)
  arrays["prompt"][6:] = arrays["prompt"][:6]                 # rows i and i + 6 share a prompt
  arrays["prompt_mask"][6:] = arrays["prompt_mask"][:6]
  arrays["prompt"][0, ~arrays["prompt_mask"][0]] += 1          # padding tokens do not count
  del arrays["class_id"]
  d = td.read_reward_dataset(td.write_reward_dataset(tmp_path / "r", **arrays))
  assert d.class_id is None
  sb = d.to_sequence_batch()
  np.testing.assert_array_equal(sb.tokens, np.concatenate([arrays["prompt"], arrays["response"]],
                                                          1).astype(np.int32))
  np.testing.assert_array_equal(sb.mask[:, :3], 0)
  np.testing.assert_array_equal(sb.mask[:, 3:], arrays["response_mask"])
  key = [tuple(np.where(m, p, -1)) for p, m in zip(arrays["prompt"], arrays["prompt_mask"])]
  for i in range(12):
    for j in range(12):
      assert (sb.group_ids[i] == sb.group_ids[j]) == (key[i] == key[j])
  assert sb.group_ids.min() >= 0 and sb.group_ids.max() < 12
  pref = _preference_arrays(3, rng)
  del pref["chosen_reward"], pref["rejected_reward"]
  p = td.read_preference_dataset(td.write_preference_dataset(tmp_path / "p", **pref))
  assert p.chosen_reward is None and p.rejected_reward is None and p.chosen_mask.dtype == np.float32


def test_missing_half_written_and_wrong_kind_raise(tmp_path):
  rng = np.random.default_rng(2)
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "none")):
    td.read_reward_dataset(tmp_path / "none")
  cases = {"marker": lambda p: os.remove(p / rlds.MARKER),
           "shard": lambda p: os.remove(next(p.glob("*.array_record-*"))),
           "features": lambda p: os.remove(p / "features.json"),
           "rows": lambda p: _edit_marker(p, num_rows=99)}
  for case, damage in cases.items():
    path = tmp_path / case
    td.write_reward_dataset(path, **_reward_arrays(20, rng), block_size=8)
    damage(path)
    with pytest.raises(rlds.IncompleteDatasetError, match=str(path)):
      td.read_reward_dataset(path)
  path = td.write_reward_dataset(tmp_path / "ok", **_reward_arrays(4, rng))
  with pytest.raises(ValueError, match="token_rewards"):
    td.read_preference_dataset(path)
  with pytest.raises(ValueError, match="rlds_episodes"):
    rlds.read_episodes(path)


def _edit_marker(path, **changes):
  m = json.loads((path / rlds.MARKER).read_text())
  (path / rlds.MARKER).write_text(json.dumps(dict(m, **changes)))


@pytest.mark.parametrize("field, value, match", [
    ("prompt_mask", np.ones((4, 4)), "prompt_mask"),                # shape differs from prompt
    ("response_mask", np.full((4, 7), 2.0), "response_mask"),       # not 0/1
    ("response", np.zeros((4, 7)), "response"),                     # float tokens
    ("reward", None, "reward"),
    ("reward", np.zeros(3), "reward"),                              # N differs
    ("class_id", np.zeros(4), "class_id"),                          # float ids
])
def test_bad_reward_input_names_argument(tmp_path, field, value, match):
  arrays = _reward_arrays(4, np.random.default_rng(3))
  arrays[field] = value
  with pytest.raises(ValueError, match=match):
    td.write_reward_dataset(tmp_path / "x", **arrays)
  assert not (tmp_path / "x").exists()


def test_bad_preference_input_and_empty(tmp_path):
  rng = np.random.default_rng(4)
  pref = _preference_arrays(4, rng)
  pref["rejected"], pref["rejected_mask"] = pref["rejected"][:, :3], pref["rejected_mask"][:, :3]
  with pytest.raises(ValueError, match="rejected"):
    td.write_preference_dataset(tmp_path / "x", **pref)
  with pytest.raises(ValueError, match="prompt"):
    td.write_reward_dataset(tmp_path / "x", **_reward_arrays(0, rng))
  with pytest.raises(ValueError, match="block_size"):
    td.write_reward_dataset(tmp_path / "x", **_reward_arrays(2, rng), block_size=0)


def test_read_speed(tmp_path):
  """100k rows: reports the load speed (rows/s); asserts values only."""
  arrays = _reward_arrays(100_000, np.random.default_rng(5), lp=16, lr=32)
  t0 = time.perf_counter()
  path = td.write_reward_dataset(tmp_path / "big", **arrays)
  t1 = time.perf_counter()
  d = td.read_reward_dataset(path)
  t2 = time.perf_counter()
  print(f"\ntoken rewards: wrote 100000 rows in {t1 - t0:.2f}s, read in {t2 - t1:.3f}s "
        f"({100_000 / (t2 - t1):,.0f} rows/s)")
  np.testing.assert_array_equal(d.response, arrays["response"])
  np.testing.assert_array_equal(d.reward, arrays["reward"].astype(np.float32))
