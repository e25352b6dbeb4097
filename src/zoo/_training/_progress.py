"""The progress bar: tqdm on a terminal, silent when asked or when output is not a terminal."""

from tqdm.auto import tqdm


def progress_bar(total: int | None, enabled: bool | None, epochs: int) -> tqdm:
    # tqdm's `disable=None` switches the bar off when stderr is not a TTY (CI logs, pipes).
    disable = None if enabled is None else not enabled
    return tqdm(total=total, disable=disable, unit="step", desc=f"epoch 1/{epochs}", leave=True)
