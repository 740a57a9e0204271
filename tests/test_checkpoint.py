"""Checkpointer: save every K / keep N, exact restore (also in a new process), corruption fallback,
the work-directory fingerprint, and bad input."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pgx_lab.train.checkpoint import Checkpointer
from pgx_lab.train.checkpoint import IncompatibleWorkdirError
from pgx_lab.train.state import TrainState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Built the same way here and in the subprocess of `test_restore_in_new_process`.
_MAKE_STATE = """
def make_state(s):
  params = {"w": jax.random.normal(jax.random.PRNGKey(1), (64, 96)), "b": jnp.zeros(96)}
  opt = optax.adam(1e-2)
  state = TrainState.create(params, opt, jax.random.PRNGKey(2))
  # Two real Adam steps so that mu, nu and the count are not their initial values.
  for _ in range(2):
    grads = jax.tree.map(lambda p: jnp.sin(p) + 0.1, state.params)
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    state = state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)
  return state.replace(step=jnp.int32(s), params=jax.tree.map(lambda p: p + s, state.params),
                       key=jax.random.fold_in(state.key, s))
"""
exec(_MAKE_STATE)  # pylint: disable=exec-used  # defines make_state


def _abstract():
  return jax.eval_shape(lambda: make_state(0))  # noqa: F821


def _assert_same(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _step_dirs(d):
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def test_save_every_keep_last_and_restore_exact(tmp_path):
  ck = Checkpointer(tmp_path / "ckpt", keep=3, save_every=10)
  saved = [s for s in range(51) if ck.save(s, make_state(s))]  # noqa: F821
  assert saved == [0, 10, 20, 30, 40, 50]
  ck.wait()
  assert _step_dirs(tmp_path / "ckpt") == [30, 40, 50]
  assert ck.latest_step() == 50
  assert ck.save(50, make_state(50), force=True) is False  # noqa: F821  (already there)
  assert ck.save(53, make_state(53), force=True) is True  # noqa: F821
  ck.close()

  ck = Checkpointer(tmp_path / "ckpt", keep=3, save_every=10)
  state, step = ck.restore_latest(_abstract())
  assert step == 53
  assert type(state) is TrainState
  adam = state.opt_state[0]
  assert isinstance(adam, optax.ScaleByAdamState), type(adam)
  assert int(adam.count) == 2
  _assert_same(state, make_state(53))  # noqa: F821
  ck.close()


def test_restore_in_new_process(tmp_path):
  with Checkpointer(tmp_path, save_every=5) as ck:
    ck.save(0, make_state(0))  # noqa: F821
    ck.save(5, make_state(5))  # noqa: F821
  out = tmp_path / "restored.npz"
  script = textwrap.dedent("""
      import sys, jax, jax.numpy as jnp, numpy as np, optax
      from pgx_lab.train.checkpoint import Checkpointer
      from pgx_lab.train.state import TrainState
      """) + _MAKE_STATE + textwrap.dedent(f"""
      ck = Checkpointer({str(tmp_path)!r}, save_every=5)
      state, step = ck.restore_latest(jax.eval_shape(lambda: make_state(0)))
      assert isinstance(state.opt_state[0], optax.ScaleByAdamState)
      leaves = jax.tree.leaves(state)
      np.savez({str(out)!r}, step=step, **{{f"l{{i}}": np.asarray(x) for i, x in enumerate(leaves)}})
      """)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = np.load(out)
  assert int(got["step"]) == 5
  want = jax.tree.leaves(make_state(5))  # noqa: F821
  for i, x in enumerate(want):
    np.testing.assert_array_equal(got[f"l{i}"], np.asarray(x))


def _largest_array_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs
           if "/d/" in os.path.join(r, f)]
  return max(files, key=os.path.getsize)


def _truncate(step_dir):
  f = _largest_array_file(step_dir)
  with open(f, "r+b") as fh:
    fh.truncate(os.path.getsize(f) // 2)


def _overwrite(step_dir):
  # Flips bytes inside the stored array values; orbax alone would return wrong numbers.
  f = _largest_array_file(step_dir)
  with open(f, "r+b") as fh:
    fh.seek(os.path.getsize(f) // 2)
    b = fh.read(16)
    fh.seek(os.path.getsize(f) // 2)
    fh.write(bytes(x ^ 0xFF for x in b))


def _delete_metadata(step_dir):
  os.remove(os.path.join(step_dir, "default", "_METADATA"))


@pytest.mark.parametrize("corrupt", [_truncate, _overwrite, _delete_metadata])
def test_corrupted_latest_falls_back_to_previous(tmp_path, corrupt):
  with Checkpointer(tmp_path, save_every=10) as ck:
    for s in (0, 10, 20):
      ck.save(s, make_state(s))  # noqa: F821
  corrupt(str(tmp_path / "20"))
  ck = Checkpointer(tmp_path, save_every=10)
  with pytest.warns(RuntimeWarning, match=r"step 20 .*corrupted"):
    state, step = ck.restore_latest(_abstract())
  assert step == 10
  _assert_same(state, make_state(10))  # noqa: F821
  # The bad step is set aside, so the resumed run can save step 20 again.
  assert _step_dirs(tmp_path) == [0, 10]
  assert os.path.isdir(tmp_path / "corrupted" / "20")
  assert ck.save(20, make_state(20)) is True  # noqa: F821
  ck.wait()
  state, step = ck.restore_latest(_abstract())
  assert step == 20
  _assert_same(state, make_state(20))  # noqa: F821
  ck.close()


def test_unverified_unreadable_checkpoint_is_skipped(tmp_path):
  # A step without checksums (e.g. a crash right after orbax's commit) relies on orbax's checks.
  with Checkpointer(tmp_path, save_every=10) as ck:
    for s in (0, 10):
      ck.save(s, make_state(s))  # noqa: F821
  os.remove(tmp_path / "10" / "pgx_lab_checksums.json")
  _delete_metadata(str(tmp_path / "10"))
  ck = Checkpointer(tmp_path, save_every=10)
  with pytest.warns(RuntimeWarning, match=r"step 10 .*cannot be read"):
    state, step = ck.restore_latest(_abstract())
  assert step == 0
  _assert_same(state, make_state(0))  # noqa: F821
  ck.close()


def test_wrong_target_of_intact_checkpoint_raises_and_keeps_it(tmp_path):
  with Checkpointer(tmp_path) as ck:
    ck.save(0, make_state(0))  # noqa: F821
  wrong = _abstract().replace(params={"other": jax.ShapeDtypeStruct((3,), jnp.float32)})
  ck = Checkpointer(tmp_path)
  with pytest.raises(Exception):
    ck.restore_latest(wrong)
  assert _step_dirs(tmp_path) == [0]
  ck.close()


def test_nothing_saved(tmp_path):
  ck = Checkpointer(tmp_path / "empty", save_every=3)
  assert ck.latest_step() is None
  assert ck.restore_latest(_abstract()) == (None, None)
  assert ck.save(1, make_state(1)) is False  # noqa: F821
  ck.close()


def test_fingerprint(tmp_path):
  fp = {"lr": 1e-3, "model": {"width": 64, "depth": 2}, "seeds": (1, 2), "env": "CartPole-v1"}
  Checkpointer(tmp_path, fingerprint=fp).close()
  assert os.path.exists(tmp_path / "fingerprint.json")
  Checkpointer(tmp_path, fingerprint=dict(fp)).close()  # same: reopens (tuple == stored list)
  Checkpointer(tmp_path).close()  # no fingerprint given: no check
  other = {"lr": 3e-4, "model": {"width": 32, "depth": 2}, "seeds": [1, 2], "env": "CartPole-v1"}
  with pytest.raises(IncompatibleWorkdirError) as info:
    Checkpointer(tmp_path, fingerprint=other)
  msg = str(info.value)
  assert "lr" in msg and "model.width" in msg
  assert "model.depth" not in msg and "seeds" not in msg and "env" not in msg
  assert isinstance(info.value, ValueError)
  with pytest.raises(IncompatibleWorkdirError, match="extra"):
    Checkpointer(tmp_path, fingerprint={**fp, "extra": 1})


@pytest.mark.parametrize("kwargs, name", [
    ({"keep": 0}, "keep"), ({"save_every": 0}, "save_every"), ({"save_every": 2.5}, "save_every"),
    ({"fingerprint": {"f": object()}}, "fingerprint"), ({"fingerprint": [1]}, "fingerprint")])
def test_bad_constructor_arguments(tmp_path, kwargs, name):
  with pytest.raises(ValueError, match=f"`{name}`"):
    Checkpointer(tmp_path, **kwargs)


@pytest.mark.parametrize("step", [-1, 1.0, True, np.zeros(2, np.int32)])
def test_bad_step(tmp_path, step):
  ck = Checkpointer(tmp_path)
  with pytest.raises(ValueError, match="`step`"):
    ck.save(step, make_state(0))  # noqa: F821
  ck.close()


def test_sharded_state_restores_with_target_shardings(tmp_path):
  mesh = jax.make_mesh((4,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
  row = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = make_state(3)  # noqa: F821
  state = jax.tree.map(lambda x: jax.device_put(x, row if x.shape[:1] == (64,) else rep), state)
  with Checkpointer(tmp_path) as ck:
    ck.save(3, state)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        state)
  with Checkpointer(tmp_path) as ck:
    restored, step = ck.restore_latest(target)
  assert step == 3
  _assert_same(restored, make_state(3))  # noqa: F821
  assert restored.params["w"].sharding == row
  assert restored.opt_state[0].mu["w"].sharding == row
  assert restored.params["b"].sharding == rep
