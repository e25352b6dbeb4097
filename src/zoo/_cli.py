"""The `zoo` command line: `zoo train mlp ...`."""

import argparse
import datetime
import json
import pathlib
import sys

_DATASETS = ("digits", "mnist")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `zoo` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    return args.run(args, parser)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo",
        description="Train zoo models from the shell. Results go to a run folder: "
        "history.json and a training-curve PNG.",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    train = commands.add_parser("train", help="train a model", description="Train a model.")
    models = train.add_subparsers(title="models", required=True, metavar="MODEL")
    _add_mlp(models)
    return parser


def _add_mlp(models) -> None:
    mlp = models.add_parser(
        "mlp",
        help="a multilayer perceptron classifier on digits (shipped, offline) or MNIST",
        description="Train a zoo.MLP classifier with Adam and report test accuracy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    mlp.add_argument(
        "--dataset",
        choices=_DATASETS,
        default="digits",
        help="digits: 8x8 UCI digits shipped with zoo; mnist: 28x28 MNIST",
    )
    mlp.add_argument(
        "--data-dir",
        type=pathlib.Path,
        default=None,
        help="folder with the MNIST IDX files (default: $ZOO_DATA_DIR/mnist, "
        "then ~/.cache/zoo/mnist, downloading when missing)",
    )
    mlp.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="passes over the data (default: 20 for digits, 10 for mnist)",
    )
    mlp.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="examples per step (default: 32 for digits, 128 for mnist)",
    )
    mlp.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate")
    mlp.add_argument(
        "--hidden", type=_widths, default=(256, 128), help="hidden layer widths, comma-separated"
    )
    mlp.add_argument("--dropout", type=_probability, default=0.0, help="dropout rate")
    mlp.add_argument("--seed", type=int, default=0, help="seed of the init and shuffle keys")
    mlp.add_argument(
        "--out", type=pathlib.Path, default=None, help="run folder (default: runs/<timestamp>)"
    )
    mlp.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    mlp.set_defaults(run=_train_mlp)


def _train_mlp(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import jax
    import optax

    import zoo

    digits = args.dataset == "digits"
    epochs = args.epochs or (20 if digits else 10)
    batch_size = args.batch_size or (32 if digits else 128)
    train_data, test_data = _load(args)
    out = args.out or pathlib.Path("runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)

    init_key, train_key = jax.random.split(jax.random.key(args.seed))
    in_size, out_size = train_data["x"].shape[1], 10
    model = zoo.MLP(in_size, out_size, args.hidden, dropout=args.dropout, key=init_key)
    _say(
        args,
        f"zoo: MLP {in_size}-{'-'.join(map(str, args.hidden))}-{out_size} on "
        f"{args.dataset} ({len(train_data['y'])} train / {len(test_data['y'])} test), "
        f"Adam {args.lr:g}, batch {batch_size}, {epochs} epochs",
    )

    def report(history):
        epoch = history["epoch"][-1]
        _say(
            args,
            f"epoch {epoch:3d}  loss {history['train']['loss'][-1]:.4f}  "
            f"test accuracy {history['eval']['accuracy'][-1]:.4f}  "
            f"({history['time'][-1]:.2f}s)",
        )

    _, history = zoo.train(
        model,
        train_data,
        optimizer=optax.adam(args.lr),
        epochs=epochs,
        batch_size=batch_size,
        eval_data=test_data,
        key=train_key,
        progress=None if not args.quiet else False,
        on_epoch=report,
    )
    (out / "history.json").write_text(json.dumps(history, indent=2))
    zoo.plot_history(history, out / "training_curve.png")
    print(
        f"final test accuracy {history['eval']['accuracy'][-1]:.4f}; "
        f"wrote {out / 'history.json'} and {out / 'training_curve.png'}"
    )
    return 0


def _load(args):
    import zoo

    if args.dataset == "digits":
        return zoo.data.digits("train"), zoo.data.digits("test")
    try:
        return (
            zoo.data.mnist("train", root=args.data_dir),
            zoo.data.mnist("test", root=args.data_dir),
        )
    except zoo.data.DatasetNotFoundError as error:
        print(f"zoo: error: {error}", file=sys.stderr)
        raise SystemExit(1) from error


def _say(args, line: str) -> None:
    if not args.quiet:
        print(line, flush=True)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive widths such as 256,128; got {text!r}"
        )
    return widths


if __name__ == "__main__":
    sys.exit(main())
