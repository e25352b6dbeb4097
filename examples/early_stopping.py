"""Early stopping on a held-out split: train until the validation loss stops improving, and
get back the best epoch's model.

    uv run python examples/early_stopping.py [--patience 5] [--figure docs/img/training_curve.png]
    uv run python examples/early_stopping.py --smoke   # seconds

An MLP 64-256-128-10 on the 8x8 digits shipped with zoo: a fifth of the training set, drawn
per class, is held out as the validation set; training stops once its cross-entropy has not
improved for `--patience` epochs, and `zoo.train` returns the model of the best epoch (its
`history["best_epoch"]`). The test set is only scored at the end. With `--figure`, draws the
history with `zoo.plot_history`: train and validation loss on one axis, the best epoch marked.
"""

import argparse
import pathlib
import sys

import jax
import optax

import zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100, help="at most this many")
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--figure", type=pathlib.Path, help="draw the history to this PNG")
    parser.add_argument("--smoke", action="store_true", help="at most 3 epochs, patience 1")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.patience = 3, 1

    train, test = zoo.data.digits("train"), zoo.data.digits("test")
    init_key, train_key = jax.random.split(jax.random.key(0))
    model = zoo.MLP(in_size=64, out_size=10, hidden=(256, 128), dropout=0.1, key=init_key)
    model, history = zoo.train(
        model,
        train,
        optimizer=optax.adam(1e-3),
        epochs=args.epochs,
        batch_size=32,
        validation_split=zoo.ValidationSplit(0.2, stratify=True),
        callbacks=[zoo.EarlyStopping("cross_entropy", patience=args.patience)],
        key=train_key,
    )
    best = history["best_epoch"]
    print(
        f"stopped after epoch {history['epoch'][-1]} ({history['stop_reason']}); best epoch "
        f"{best}: validation cross-entropy {history['eval']['cross_entropy'][best - 1]:.4f}"
    )
    print(f"test accuracy of the best epoch's model: {zoo.evaluate(model, test)['accuracy']:.4f}")
    if args.figure:
        plot(history, args.figure)


def plot(history: dict, path: pathlib.Path) -> None:
    """`zoo.plot_history`'s drawing, through the repository's benchmarks/figures.py, which
    also writes the history beside the PNG as JSON so that the figure can be redrawn."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
    import figures

    figures.save(path, "history", history, figures.this_command())


if __name__ == "__main__":
    main()
