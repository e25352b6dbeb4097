"""zoo: an Equinox model zoo with a fused trainer, sparse embedding training and Orbax checkpoints.

Every model is a callable pytree (an `equinox.Module`); `zoo.train` trains any of them.
"""

from . import (
    data as data,
    distributed as distributed,
    losses as losses,
    metrics as metrics,
    recsys as recsys,
    sparse as sparse,
)
from ._io._checkpoints import Checkpoints as Checkpoints
from ._io._rebuild import Rebuildable as Rebuildable
from ._io._serialization import load as load, save as save
from ._nn._embedding import Embedding as Embedding
from ._nn._mlp import MLP as MLP
from ._training._callbacks import (
    Callback as Callback,
    ChunkInfo as ChunkInfo,
    EarlyStopping as EarlyStopping,
    EpochInfo as EpochInfo,
    Logger as Logger,
    ModelCheckpoint as ModelCheckpoint,
    ProgressBar as ProgressBar,
    RunInfo as RunInfo,
)
from ._training._checkpointing import (
    Checkpointing as Checkpointing,
    NonFiniteLossError as NonFiniteLossError,
    TrainingInterrupted as TrainingInterrupted,
    TrainingStopped as TrainingStopped,
)
from ._training._data import ValidationSplit as ValidationSplit
from ._training._epochs import Loop as Loop
from ._training._evaluate import evaluate as evaluate, plot_history as plot_history
from ._training._step import (
    TrainState as TrainState,
    per_example_grad_norms as per_example_grad_norms,
    per_example_grads as per_example_grads,
)
from ._training._train import train as train
from ._version import __version__ as __version__
from .recsys import (
    DLRM as DLRM,
    MatrixFactorization as MatrixFactorization,
    SASRec as SASRec,
    TwoTower as TwoTower,
)
