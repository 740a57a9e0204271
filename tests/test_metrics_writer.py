"""MetricsWriter: metrics.jsonl lines and TensorBoard scalars read back independently, bad input.

TensorBoard is not installed, so the event files are read here from the TFRecord framing
(u64 length, masked crc32c of the length, data, masked crc32c of the data; see TensorFlow's
`tensorflow/core/lib/io/record_writer.cc`) with a crc32c written in this file, and the records
decoded with tensorboardX's `Event` protobuf.
"""

import glob
import json
import math
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from pgx_lab.train.metrics import MetricsWriter


def _crc32c_table():
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli polynomial, reflected
    table.append(c)
  return table


_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
  c = 0xFFFFFFFF
  for b in data:
    c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
  c ^= 0xFFFFFFFF
  return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_crc32c_known_value():
  # RFC 3720 B.4: crc32c of 32 zero bytes is 0x8A9136AA; check the unmasked part of our crc.
  c = 0xFFFFFFFF
  for b in bytes(32):
    c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
  assert c ^ 0xFFFFFFFF == 0x8A9136AA


def _read_events(path):
  with open(path, "rb") as f:
    buf = f.read()
  events, pos = [], 0
  while pos < len(buf):
    header = buf[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (hcrc,) = struct.unpack("<I", buf[pos + 8:pos + 12])
    assert hcrc == _masked_crc32c(header)
    data = buf[pos + 12:pos + 12 + length]
    assert len(data) == length
    (dcrc,) = struct.unpack("<I", buf[pos + 12 + length:pos + 16 + length])
    assert dcrc == _masked_crc32c(data)
    events.append(event_pb2.Event.FromString(data))
    pos += 16 + length
  return events


def _scalars(workdir):
  files = glob.glob(os.path.join(workdir, "tb", "**", "events.out.tfevents.*"), recursive=True)
  assert files, "no TensorBoard event file"
  out = {}
  for path in files:
    for ev in _read_events(path):
      for v in ev.summary.value:
        out[(v.tag, ev.step)] = v.simple_value
  return out


def _metrics(step):
  return {"loss": np.float32(1.0 / (step + 1)), "reward": jnp.asarray(2.5 * step),
          "episodes": 3 * step, "lr": jnp.full((1,), 1e-3)}


def test_jsonl_and_tensorboard_hold_the_values(tmp_path):
  steps = [0, 10, 20, 30]
  with MetricsWriter(tmp_path) as w:
    for s in steps:
      w.write(s, _metrics(s))
  with open(tmp_path / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == steps
  scalars = _scalars(str(tmp_path))
  for r, s in zip(rows, steps):
    want = {"loss": float(np.float32(1.0 / (s + 1))), "reward": 2.5 * s, "episodes": 3.0 * s,
            "lr": float(np.float32(1e-3))}
    assert set(r) == {"step", *want}
    for k, v in want.items():
      assert r[k] == pytest.approx(v, rel=1e-7)
      assert scalars[(k, s)] == pytest.approx(v, rel=1e-6)  # TensorBoard stores float32
  assert len(scalars) == 4 * len(steps)


def test_reopen_appends_and_tensorboard_off(tmp_path):
  with MetricsWriter(tmp_path, tensorboard=False) as w:
    w.write(1, {"a": 1.0})
  with MetricsWriter(tmp_path, tensorboard=False) as w:
    w.write(2, {"a": float("nan"), "b": -math.inf})
  with open(tmp_path / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert rows[0] == {"step": 1, "a": 1.0}
  assert rows[1]["step"] == 2 and math.isnan(rows[1]["a"]) and rows[1]["b"] == -math.inf
  assert not os.path.exists(tmp_path / "tb")


@pytest.mark.parametrize("step, metrics, name", [
    (-1, {"a": 1.0}, "step"), (1.5, {"a": 1.0}, "step"), (True, {"a": 1.0}, "step"),
    (0, {"a": np.ones(2)}, "metrics['a']"), (0, {"a": "high"}, "metrics['a']"),
    (0, {"step": 1.0}, "metrics"), (0, {3: 1.0}, "metrics"), (0, [("a", 1.0)], "metrics")])
def test_bad_input(tmp_path, step, metrics, name):
  w = MetricsWriter(tmp_path, tensorboard=False)
  with pytest.raises(ValueError, match=f"`{name}`".replace("[", r"\[").replace("]", r"\]")):
    w.write(step, metrics)
  w.close()
  with open(tmp_path / "metrics.jsonl") as f:
    assert f.read() == ""
  with pytest.raises(ValueError, match="after `close`"):
    w.write(0, {"a": 1.0})
