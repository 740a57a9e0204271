"""Policies and language models. Params are plain pytrees; models know no learner."""

from pgx_lab.models import mlp
from pgx_lab.models import sampling
from pgx_lab.models import transformer
from pgx_lab.models.tabular import TabularSequencePolicy
