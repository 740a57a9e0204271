"""Score-function estimators as four parts (advantage, reference, mask, aggregation) and presets."""

from pgx_lab.estimators import advantage_parts
from pgx_lab.estimators import advantages
from pgx_lab.estimators import aggregation
from pgx_lab.estimators import empg
from pgx_lab.estimators import hybrid
from pgx_lab.estimators import likelihood
from pgx_lab.estimators import masks
from pgx_lab.estimators import nlpo
from pgx_lab.estimators import offline
from pgx_lab.estimators import offline_parts
from pgx_lab.estimators import one_token_rollout
from pgx_lab.estimators import penalties
from pgx_lab.estimators import presets
from pgx_lab.estimators import preference
from pgx_lab.estimators import reference
from pgx_lab.estimators import reference_parts
from pgx_lab.estimators import tempsamp
from pgx_lab.estimators import value_loss
from pgx_lab.estimators.estimator import Estimator
