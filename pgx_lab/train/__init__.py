"""Training: the TrainState, the sharded update step, checkpoints, metrics, loops, pretraining."""

from pgx_lab.train.checkpoint import Checkpointer
from pgx_lab.train.checkpoint import IncompatibleWorkdirError
from pgx_lab.train.loop import TrainResult
from pgx_lab.train.loop import train
from pgx_lab.train.loop import train_env
from pgx_lab.train.loop import train_tabular
from pgx_lab.train.loop import train_tokens
from pgx_lab.train.metrics import MetricsWriter
from pgx_lab.train.pretrain import PretrainError
from pgx_lab.train.pretrain import pretrain
from pgx_lab.train.state import TrainState
from pgx_lab.train.update import count_compilations
from pgx_lab.train.update import make_update_step

__all__ = [
    "Checkpointer", "IncompatibleWorkdirError", "MetricsWriter", "PretrainError", "TrainResult",
    "TrainState", "count_compilations", "make_update_step", "pretrain", "train", "train_env",
    "train_tabular", "train_tokens",
]
