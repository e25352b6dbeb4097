"""What `zoo train recommender` builds from its options: data, model, loss and optimizer."""

import pathlib

import jax
import optax
from jaxtyping import PRNGKeyArray

from .. import data as datasets, sparse
from .._custom_types import LossFn, Optimizer
from ..recsys._dlrm import DLRMRecommender
from ..recsys._losses import bce_loss, bpr_loss, in_batch_softmax_loss
from ..recsys._mf import MatrixFactorization
from ..recsys._sampling import NegativeSampler, item_counts
from ..recsys._sasrec import SASRec
from ..recsys._sequence_losses import sequence_loss
from ..recsys._two_tower import TwoTower

MODELS = ("mf", "two-tower", "dlrm", "sasrec")
LOSSES = ("bpr", "bce", "softmax", "sampled-softmax")
DEFAULT_LOSS = {"mf": "bpr", "two-tower": "softmax", "dlrm": "bce", "sasrec": "softmax"}
OPTIMIZERS = ("adam", "sparse-adagrad")
DEFAULT_LEARNING_RATE = {"adam": 1e-2, "sparse-adagrad": 0.1}
SASREC_ADAM_LEARNING_RATE = 3e-3  # a transformer diverges at Adam 1e-2
DEFAULT_BATCH_SIZE = {"sasrec": 128}  # sequences per step; the others: interactions
SYNTHETIC_SIZE = (2000, 1000)
RATING_THRESHOLD = 4.0  # MovieLens ratings of 4 and 5 (of 5) are the positives


def load(
    source: str,
    location: pathlib.Path | tuple[int, int],
    key: PRNGKeyArray,
    *,
    sequential: bool = False,
):
    """`(train, test)`: the data, as implicit feedback, split leave-last-out. Synthetic data
    for a `sequential` model has a planted order (`synthetic_sequences`)."""
    if source == "synthetic":
        num_users, num_items = location
        make = datasets.synthetic_sequences if sequential else datasets.synthetic_interactions
        data = make(num_users, num_items, key=key)
    else:
        data = datasets.implicit(datasets.movielens(location), threshold=RATING_THRESHOLD)
    return datasets.leave_last_out(data)


def build_model(name: str, train, dim: int, key: PRNGKeyArray, *, max_len: int = 50):
    """The model named `name` for the id spaces of `train`."""
    num_users, num_items = train.num_users, train.num_items
    if name == "sasrec":
        return SASRec(num_items, dim, num_blocks=2, num_heads=1, max_len=max_len, key=key)
    if name == "mf":
        return MatrixFactorization(num_users, num_items, dim, key=key)
    if name == "two-tower":
        # A cosine with a low temperature trains best with the in-batch softmax.
        return TwoTower(num_users, num_items, dim, similarity="cosine", temperature=0.1, key=key)
    # DLRM on interactions: user and item are its categorical features, the item's training
    # popularity its dense feature.
    counts = item_counts(train, num_items)
    return DLRMRecommender(num_users, num_items, counts, dim=dim, key=key)


def training_data(model: str, train, max_len: int):
    """What the model trains on: interactions, or a sequential model's next-item rows."""
    return datasets.sequences(train, max_len) if model == "sasrec" else train


def learning_rate(model: str, optimizer: str) -> float:
    """The default learning rate of `optimizer` for `model`."""
    if model == "sasrec" and optimizer == "adam":
        return SASREC_ADAM_LEARNING_RATE
    return DEFAULT_LEARNING_RATE[optimizer]


def build_loss(name: str, train, *, model: str = "mf") -> LossFn:
    """The loss named `name`; sampled negatives skip each user's training positives."""
    if model == "sasrec":
        if name == "softmax":
            return sequence_loss("softmax")
        sampler = NegativeSampler(train.num_items, interactions=train, exclude_positives=True)
        return sequence_loss(name.replace("-", "_"), sampler=sampler)
    if name == "softmax":
        return in_batch_softmax_loss(item_counts=item_counts(train, train.num_items))
    sampler = NegativeSampler(train.num_items, interactions=train, exclude_positives=True)
    if name == "bpr":
        return bpr_loss(sampler, num_negatives=4)
    return bce_loss(sampler, num_negatives=4)


def build_optimizer(name: str, learning_rate: float) -> Optimizer:
    """Adam on everything, or row-wise Adagrad on the tables (O(batch) steps) and Adagrad on
    the rest, both at `learning_rate`."""
    if name == "adam":
        return optax.adam(learning_rate)
    return sparse.partition(
        dense=optax.adagrad(learning_rate), embeddings=sparse.rowwise_adagrad(learning_rate)
    )


def split_keys(seed: int) -> tuple[PRNGKeyArray, PRNGKeyArray, PRNGKeyArray]:
    """The data, initialisation and training keys of a run."""
    data_key, init_key, train_key = jax.random.split(jax.random.key(seed), 3)
    return data_key, init_key, train_key
