"""Early stopping: when to stop, and which epoch was best, as a pure function of the history.

The decision reads only the monitored figure's per-epoch values, which the history already
holds (and checkpoints save), so a resumed run decides exactly as an uninterrupted one. The
best model itself is kept by the trainer beside the training state.
"""

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple

from .. import _checks
from .._custom_types import IntLike, RealLike

# Figures for which more is better; anything else is taken as a loss (less is better).
_HIGHER_IS_BETTER = ("accuracy", "auc", "hr@", "ndcg@", "recall@", "precision@", "mrr")


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stops `zoo.train` when an eval figure stops improving, and returns the best epoch's model.

    **Arguments:**

    - `monitor`: the eval figure to watch: a metric name (`"accuracy"`, `"cross_entropy"`, ...)
        or a key of the dict `eval_fn` returns (`"hr@10"`), as recorded in `history["eval"]`.
    - `mode`: `"min"` (a loss) or `"max"` (an accuracy). `None` picks `"max"` for accuracy,
        AUC and ranking figures (`hr@k`, `ndcg@k`, `recall@k`, `precision@k`, `mrr`) and
        `"min"` otherwise.
    - `patience`: stop once this many epochs in a row have not improved (`0` acts like `1`:
        stop at the first epoch that does not improve).
    - `min_delta`: an epoch improves only if it beats the best so far by more than this.
    - `restore_best`: return the best epoch's model (`True`) or the last epoch's.

    The best model is saved in each checkpoint, so a resumed run stops at the same epoch with
    the same model, bit for bit. `history["best_epoch"]` holds the best epoch and
    `history["stop_reason"]` either `"early_stopping"` or `"epochs"`.

    !!! example

        ```python
        model = zoo.MLP(in_size=64, out_size=10, hidden=(32,), key=jax.random.key(0))
        model, history = zoo.train(
            model, zoo.data.digits("train"), epochs=30, validation_split=0.1,
            early_stopping=zoo.EarlyStopping("accuracy", mode="max", patience=3),
        )
        ```
    """

    monitor: str
    mode: Literal["min", "max"] | None = None
    patience: IntLike = 3
    min_delta: RealLike = 0.0
    restore_best: bool = True

    def __post_init__(self):
        example = "zoo.EarlyStopping(monitor='accuracy', patience=3, min_delta=0.001)"
        if not isinstance(self.monitor, str) or not self.monitor:
            raise TypeError(
                f"EarlyStopping's monitor must name an eval figure such as 'accuracy'; got "
                f"{self.monitor!r}. For example zoo.EarlyStopping(monitor='accuracy')."
            )
        if self.mode not in (None, "min", "max"):
            raise ValueError(
                f"EarlyStopping's mode must be 'min', 'max' or None; got {self.mode!r}. For "
                "example zoo.EarlyStopping(monitor='accuracy', mode='max')."
            )
        _checks.integer("EarlyStopping's patience", self.patience, example=example)
        if self.patience < 0:
            raise ValueError(
                f"EarlyStopping's patience must be >= 0 (epochs without improvement before "
                f"stopping); got {self.patience}. For example zoo.EarlyStopping("
                f"monitor={self.monitor!r}, patience=3)."
            )
        _checks.real("EarlyStopping's min_delta", self.min_delta, low=0.0, example=example)
        _checks.boolean("EarlyStopping's restore_best", self.restore_best, example=example)

    @property
    def resolved_mode(self) -> Literal["min", "max"]:
        if self.mode is not None:
            return self.mode
        name = self.monitor.lower()
        return "max" if any(name.startswith(h) for h in _HIGHER_IS_BETTER) else "min"

    def check_monitor(self, names: Iterable[str]) -> None:
        """Raises unless the eval produces the monitored figure."""
        names = list(names)
        if self.monitor in names:
            return
        if not names:
            raise ValueError(
                f"early_stopping monitors {self.monitor!r}, but there is no evaluation: pass "
                "eval_data, validation_split (e.g. validation_split=0.1) or eval_fn."
            )
        produced = ", ".join(repr(name) for name in names)
        raise ValueError(
            f"early_stopping monitors {self.monitor!r}, which the evaluation does not produce; "
            f"it produces {produced}. For example zoo.EarlyStopping(monitor={names[0]!r})."
        )

    def decide(self, values: Sequence[float]) -> "Decision":
        """The best epoch so far and whether to stop, from the monitored per-epoch values."""
        sign = 1.0 if self.resolved_mode == "min" else -1.0
        best, best_index, wait = math.inf, -1, 0
        for index, value in enumerate(values):
            # NaN never improves: the comparison is False.
            if sign * value < best - self.min_delta:
                best, best_index, wait = sign * value, index, 0
            else:
                wait += 1
        return Decision(best_epoch=best_index + 1, stop=wait >= max(self.patience, 1))

    def decision(self, history: dict) -> "Decision":
        """`decide` on the monitored values a `zoo.train` history has recorded so far."""
        return self.decide(history["eval"].get(self.monitor, []))


class Decision(NamedTuple):
    best_epoch: int  # 1-based; 0 while no epoch has improved on the start
    stop: bool
