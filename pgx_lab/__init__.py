"""pgx_lab: policy-gradient estimators in JAX, each a few composable parts."""

from pgx_lab import estimators
from pgx_lab import types
from pgx_lab.estimators import presets
from pgx_lab.estimators.estimator import Estimator
from pgx_lab.types import PairBatch
from pgx_lab.types import SequenceBatch

__version__ = "0.1.0"
