"""The main job at a small size: it trains, writes the report and the plot, and validates config."""

import json
import os

import numpy as np
import pytest

from experiments import estimator_comparison as ec


def _small():
  c = ec.default_config()
  c.seeds = 2
  c.iterations = 30
  c.num_contexts = 8
  c.length = 4
  c.vocab_size = 4
  c.threshold = 2
  return c


def test_small_run_writes_report_and_every_estimator_learns(tmp_path):
  results = ec.run(_small(), str(tmp_path), progress=False)
  for name in ec.ESTIMATORS:
    curve = np.asarray(results[name]["curve"])
    assert curve.shape == (2, 4)
    # Exact expected reward, no sampling noise: every estimator must beat the uniform policy.
    assert curve[:, -1].mean() > curve[:, 0].mean() + 0.1, name
  report = (tmp_path / "report.md").read_text()
  for name in ec.ESTIMATORS:
    assert f"| {name} |" in report
  assert os.path.getsize(tmp_path / "learning_curves.png") > 10_000
  saved = json.loads((tmp_path / "metrics.json").read_text())
  assert saved["_config"]["seeds"] == 2


@pytest.mark.parametrize("field,value", [
    ("seeds", 0), ("iterations", 25), ("learning_rate", -1.0), ("threshold", 9),
    ("estimators", "reinforce,a2c"), ("group_size", 1)])
def test_invalid_config_names_the_field(field, value):
  c = _small()
  c[field] = value
  with pytest.raises(ValueError, match=field):
    ec.validate(c)


def test_unknown_field_is_refused():
  c = _small()
  c.unlocked = True
  with c.unlocked():
    c.lr = 0.1
  with pytest.raises(ValueError, match="config.lr"):
    ec.validate(c)
