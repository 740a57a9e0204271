"""Training: supervised pretraining to an intermediate success rate (`pretrain`)."""

from pgx_lab.train.pretrain import PretrainError
from pgx_lab.train.pretrain import pretrain

__all__ = ["PretrainError", "pretrain"]
