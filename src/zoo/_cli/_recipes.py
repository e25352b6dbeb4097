"""What `zoo train recommender` builds from its options: data, model, loss and optimizer; how
it trains (`fit`, the one place that uses `zoo.train`'s options); and the run folder it saves
for `zoo recommend`."""

import json
import pathlib
from collections.abc import Callable, Sequence

import jax
import numpy as np
import optax
from jaxtyping import PRNGKeyArray

from .. import data as datasets, sparse
from .._custom_types import LossFn, Optimizer
from .._io._serialization import load as load_model, save as save_model
from .._training._callbacks import Callback, EarlyStopping, ModelCheckpoint
from .._training._checkpointing import TrainingInterrupted
from .._training._epochs import Loop
from .._training._train import train as zoo_train
from ..data._interactions import Interactions
from ..recsys._baselines import Popularity
from ..recsys._dlrm import DLRMRecommender
from ..recsys._evaluate import evaluate_ranking
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
EPOCHS = 200  # a ceiling: early stopping on validation NDCG@10 ends runs far sooner
PATIENCE = 5
STEPS_PER_EPOCH = 32  # at least, between two validations (see `training_data`)
MONITOR = "ndcg@10"
DEFAULT_DIM = {"sasrec": 64}  # the others: 32
DEFAULT_MAX_LEN = 200  # SASRec's history: the longer, the better on MovieLens
RATING_THRESHOLD = 4.0  # MovieLens ratings of 4 and 5 (of 5) are the positives


def load(
    source: str,
    location: pathlib.Path | tuple[int, int] | None,
    key: PRNGKeyArray,
    *,
    sequential: bool = False,
    columns: tuple[str, ...] = ("user", "item", "timestamp"),
    min_rating: float | None = None,
) -> tuple[Interactions, list[str]]:
    """The cleaned data and a line per cleaning step: implicit feedback (ratings of at least
    `min_rating`, by default 4 where there are ratings), each (user, item) pair once (its
    first event), and the id space compacted. `synthetic` is the ML-100K stand-in;
    `synthetic:USERSxITEMS` planted sets (with a planted order for a `sequential` model)."""
    if source == "synthetic" and location is None:
        data = datasets.synthetic_movielens(key=key)
    elif source == "synthetic":
        num_users, num_items = location
        make = datasets.synthetic_sequences if sequential else datasets.synthetic_interactions
        data = make(num_users, num_items, key=key)
    elif source == "movielens":
        data = datasets.movielens(location)
    else:
        user, item, time, *rating = columns
        data = datasets.read_interactions(
            location, user=user, item=item, time=time, rating=rating[0] if rating else None
        )
    notes = [f"read {len(data['user'])} events, {data.num_users} users, {data.num_items} items"]
    if "rating" in data:
        threshold = RATING_THRESHOLD if min_rating is None else min_rating
        data, removed = datasets.rating_threshold(data, threshold)
        notes.append(f"ratings >= {threshold:g} kept: {removed.events} events removed")
    data, removed = datasets.dedupe(data, keep="first")
    notes.append(f"repeated (user, item) pairs: {removed.events} later events removed")
    return datasets.compact(data), notes


def splits(data: Interactions) -> tuple[Interactions, Interactions, Interactions]:
    """`(train, valid, test)` left out by time (leave-one-out); `test`'s history is train and
    valid together (`history_of_test`)."""
    return datasets.leave_one_out(data)


def check_evaluable(known: Interactions, held_out: Interactions) -> None:
    """Ranks `held_out` by popularity, before any training: a split that leaves no user to
    evaluate is refused now, not after the run."""
    evaluate_ranking(Popularity(known, known.num_items), known, held_out, baselines=False)


def history_of_test(train: Interactions, valid: Interactions) -> Interactions:
    """What is known when the test item comes: the training events and the validation one."""
    return datasets.concatenate(train, valid)


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


def training_data(model: str, train, max_len: int, batch_size: int):
    """What the model trains on: interactions, or a sequential model's next-item rows.

    A sequential model has one row per user: a thousand users make 8 steps of 128, too few
    between two validations for early stopping to read a trend. Its rows are repeated (each
    pass shuffled) so that an epoch has at least `STEPS_PER_EPOCH` steps.
    """
    if model != "sasrec":
        return train
    rows = datasets.sequences(train, max_len)
    count = len(rows["user"])
    repeats = -(-STEPS_PER_EPOCH * batch_size // count)
    return {
        name: np.tile(column, (repeats,) + (1,) * (column.ndim - 1))
        for name, column in rows.items()
    }


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


def fit(
    model,
    training,
    *,
    loss: LossFn,
    optimizer: Optimizer,
    epochs: int,
    batch_size: int,
    key: PRNGKeyArray,
    evaluate: Callable,
    patience: int,
    callbacks: Sequence[Callback] = (),
    best_model: pathlib.Path | None = None,
):
    """Trains to the best validation `MONITOR` (`evaluate(model)` after each epoch, more is
    better), stopping after `patience` epochs without improvement, `epochs` at most: `(model,
    history, interrupted)`, the best epoch's model, or on Ctrl-C that of the epochs completed.
    With `best_model`, the best epoch's model is also saved there as it is found, so that it
    outlives a killed run. `callbacks` (logs, progress) run after these.

    The one function of the CLI that uses `zoo.train`'s options (early stopping, the best
    model's checkpoint, evaluation), so that a change of the trainer's API is a change here
    alone.
    """
    stopping = [EarlyStopping(MONITOR, mode="max", patience=patience)]
    if best_model is not None:
        stopping.append(ModelCheckpoint(best_model, monitor=MONITOR, mode="max"))
    try:
        model, history = zoo_train(
            model,
            training,
            loss=loss,
            optimizer=optimizer,
            epochs=epochs,
            batch_size=batch_size,
            key=key,
            # A small last batch would be a weak in-batch softmax, and one more program.
            loop=Loop(last_batch="drop"),
            eval_fn=evaluate,
            callbacks=[*stopping, *callbacks],
        )
    except TrainingInterrupted as stopped:
        return stopped.model, stopped.history, True
    return model, history, False


def validation(train: Interactions, valid: Interactions) -> Callable:
    """`evaluate(model)`: full-ranking figures on the validation split (no baselines)."""
    return lambda model: dict(evaluate_ranking(model, train, valid, baselines=False)["model"])


_RUN_FILE, _DATA_FILE, _MODEL_FOLDER = "run.json", "interactions.npz", "model"


def save_run(out: pathlib.Path, model, data: Interactions, config: dict) -> pathlib.Path:
    """Saves the model (`out/model`), the data it knows with the raw ids (`out/
    interactions.npz`) and what built it (`out/run.json`): what `zoo recommend` reads."""
    out.mkdir(parents=True, exist_ok=True)
    save_model(out / _MODEL_FOLDER, model, overwrite=True)
    arrays = dict(data) | {"user_ids": data.user_ids, "item_ids": data.item_ids}
    np.savez(out / _DATA_FILE, **arrays)
    (out / _RUN_FILE).write_text(json.dumps(config, indent=2))
    return out / _MODEL_FOLDER


def load_run(run: pathlib.Path):
    """`(model, data)` of a run folder written by `save_run`."""
    if not (run / _RUN_FILE).is_file():
        raise FileNotFoundError(
            f"RUN {run} holds no saved recommender ({_RUN_FILE} is missing): pass the --out "
            "folder of a `zoo train recommender` run"
        )
    config = json.loads((run / _RUN_FILE).read_text())
    with np.load(run / _DATA_FILE, allow_pickle=False) as saved:
        arrays = {name: saved[name] for name in saved.files}
    user_ids, item_ids = arrays.pop("user_ids"), arrays.pop("item_ids")
    data = Interactions(arrays, user_ids=user_ids, item_ids=item_ids)
    template = build_model(
        config["model"], data, config["dim"], jax.random.key(0), max_len=config["max_len"]
    )
    return load_model(run / _MODEL_FOLDER, like=template), data
