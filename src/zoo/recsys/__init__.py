"""`zoo.recsys`: recommenders, their losses, negative sampling, ranking metrics and baselines.

The models are also at the top level (`zoo.MatrixFactorization`, `zoo.TwoTower`, `zoo.DLRM`);
the interaction datasets and splits are in `zoo.data`. See `docs/recommenders.md`.
"""

from ._baselines import Popularity as Popularity, RandomScores as RandomScores
from ._dlrm import DLRM as DLRM, DLRMRecommender as DLRMRecommender
from ._evaluate import (
    Report as Report,
    evaluate_ranking as evaluate_ranking,
    evaluate_sampled as evaluate_sampled,
    format_report as format_report,
)
from ._factorized import Factorized as Factorized
from ._losses import (
    bce_loss as bce_loss,
    bpr_loss as bpr_loss,
    in_batch_softmax_loss as in_batch_softmax_loss,
    pair_scores as pair_scores,
)
from ._metrics import (
    auc as auc,
    ranking_metrics as ranking_metrics,
    sampled_metrics as sampled_metrics,
)
from ._mf import MatrixFactorization as MatrixFactorization
from ._recommend import Recommendations as Recommendations, recommend as recommend
from ._sampling import NegativeSampler as NegativeSampler, item_counts as item_counts
from ._sasrec import SASRec as SASRec, SequentialRanker as SequentialRanker
from ._sequence_losses import sequence_loss as sequence_loss
from ._two_tower import TwoTower as TwoTower
