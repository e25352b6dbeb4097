"""The `zoo` command line: `zoo train mlp ...` and `zoo train recommender ...`."""

import argparse
import contextlib
import datetime
import json
import pathlib
import re
import sys

from ..data._download import DatasetNotFoundError

_DATASETS = ("digits", "mnist")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `zoo` console script.

    A mistake is one line on stderr, `zoo: error: ...`, naming the flag: exit status 2 for a
    flag's value (argparse's own complaints also show the usage), 1 for a failure while
    running (missing or malformed data). A run that fails leaves no empty folder behind.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        args.out = _run_folder(args)
    except _UsageError as error:
        return _fail(args, str(error), 2)
    made = [args.out, getattr(args, "data_dir", None)]  # what a failed run must not leave
    try:
        with _removed_on_failure(*[folder for folder in made if folder is not None]):
            return args.run(args, parser)
    except _UsageError as error:
        return _fail(args, str(error), 2)
    except _USER_ERRORS as error:
        message, names_a_flag = _in_flags(str(error), args.flags)
        usage = names_a_flag and isinstance(error, ValueError | TypeError)
        return _fail(args, message, 2 if usage else 1)


class _UsageError(Exception):
    """A flag's value that the command refuses before any work (exit status 2)."""


# What zoo raises for a user's mistake; anything else is a bug, and keeps its traceback.
_USER_ERRORS = (ValueError, TypeError, OSError, FloatingPointError, DatasetNotFoundError)


def _fail(args, message: str, status: int) -> int:
    line = " ".join(message.split())  # one line, however the message was wrapped
    print(f"zoo: error: {line}", file=sys.stderr)
    raise SystemExit(status)


def _in_flags(message: str, flags: dict[str, str]) -> tuple[str, bool]:
    """`message` in the command line's words, and whether it names one of the flags.

    zoo's messages name Python arguments (`batch_size`, `root=`) and end with a Python call
    (`For example: zoo.train(...)`); the CLI user typed flags, so each argument becomes its
    flag and the Python example is dropped. The one place that translates.
    """
    message = re.split(r"\s*\b(?:For example|Example)\b:?", message)[0].strip()
    found = False
    for argument, flag in flags.items():
        # The argument as such: `batch_size=8`, `root= a folder`, `epochs must be ...`.
        named = rf"(?<![\w.'\"-]){argument}(?:=\s*|(?=\s+must\b))"
        message, count = re.subn(named, flag + " ", message)
        message = message.replace(flag + "  ", flag + " ")
        found = found or count > 0
    return message, found


@contextlib.contextmanager
def _removed_on_failure(*folders: pathlib.Path):
    """If the run fails, removes the folders of `folders` (and new parents) that it created and
    left empty: a mistake leaves nothing behind, while a run that failed after writing logs (or
    downloading data) keeps them."""
    missing = [_first_missing(folder) for folder in folders]
    try:
        yield
    except BaseException:
        for created in missing:
            if created is not None and created.is_dir():
                _remove_if_empty(created)
        raise


def _remove_if_empty(folder: pathlib.Path) -> None:
    for path in [*sorted(folder.rglob("*"), reverse=True), folder]:  # children first
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _first_missing(folder: pathlib.Path) -> pathlib.Path | None:
    """The outermost of `folder` and its parents that does not exist yet."""
    return next((p for p in reversed((folder, *folder.parents)) if not p.exists()), None)


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds each option's default to its help, except a default of None or False: those
    options say in their help what happens without them ("default: 20 for digits, ...")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo",
        description="Train zoo models from the shell. Results go to a run folder: "
        "history.json, history.jsonl (a line per epoch), TensorBoard event files (with "
        "tensorboardX installed) and a training-curve PNG.",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    train = commands.add_parser("train", help="train a model", description="Train a model.")
    models = train.add_subparsers(title="models", required=True, metavar="MODEL")
    _add_mlp(models)
    _add_recommender(models)
    return parser


# zoo's argument names, as each command's flags (see `_in_flags`).
_COMMON_FLAGS = {
    "batch_size": "--batch-size",
    "epochs": "--epochs",
    "learning_rate": "--lr",
    "log_dir": "--out",
}
_MLP_FLAGS = _COMMON_FLAGS | {"root": "--data-dir", "hidden": "--hidden", "dropout": "--dropout"}
_RECOMMENDER_FLAGS = _COMMON_FLAGS | {
    "root": "--data movielens:PATH",
    "dim": "--dim",
    "max_len": "--max-len",
}


def _add_mlp(models) -> None:
    mlp = models.add_parser(
        "mlp",
        help="a multilayer perceptron classifier on digits (shipped, offline) or MNIST",
        description="Train a zoo.MLP classifier with Adam and report test accuracy.",
        formatter_class=_DefaultsHelpFormatter,
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
    mlp.set_defaults(run=_train_mlp, flags=_MLP_FLAGS)


def _train_mlp(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import jax
    import optax

    import zoo

    digits = args.dataset == "digits"
    epochs = args.epochs or (20 if digits else 10)
    batch_size = args.batch_size or (32 if digits else 128)
    train_data, test_data = _load(args)
    out = args.out

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
        log_dir=out,
        tensorboard=_tensorboard(args),
    )
    out.mkdir(parents=True, exist_ok=True)  # zoo.train made it; unless epochs ran none
    (out / "history.json").write_text(json.dumps(history, indent=2))
    zoo.plot_history(history, out / "training_curve.png")
    print(
        f"final test accuracy {history['eval']['accuracy'][-1]:.4f}; "
        f"wrote {out / 'history.json'} and {out / 'training_curve.png'}"
    )
    return 0


def _add_recommender(models) -> None:
    from . import _recipes as recipes

    recommender = models.add_parser(
        "recommender",
        help="a recommender (matrix factorisation, two-tower, DLRM, SASRec) on interaction data",
        description="Train a recommender on implicit feedback, split leave-last-out, and "
        "report HR@10 and NDCG@10 over the whole catalogue beside the popularity and random "
        "baselines.",
        formatter_class=_DefaultsHelpFormatter,
    )
    recommender.add_argument("--model", choices=recipes.MODELS, required=True, help="the model")
    recommender.add_argument(
        "--data",
        type=_interaction_data,
        default="synthetic",
        help="synthetic (2000 users x 1000 items, planted structure; planted order for "
        "sasrec), synthetic:USERSxITEMS, "
        "or movielens:PATH (a folder with u.data, ratings.dat or ratings.csv; ratings >= 4 "
        "are the positives)",
    )
    recommender.add_argument(
        "--loss",
        choices=recipes.LOSSES,
        default=None,
        help="bpr, bce (sampled negatives) or softmax (in-batch, with log-q correction; not "
        "for dlrm); for sasrec: softmax (full catalogue), bce or sampled-softmax; default: bpr "
        "for mf, softmax for two-tower and sasrec, bce for dlrm",
    )
    recommender.add_argument(
        "--optimizer",
        choices=recipes.OPTIMIZERS,
        default="adam",
        help="adam, or sparse-adagrad: row-wise Adagrad on the embedding tables in O(batch) "
        "per step (zoo.sparse) and Adagrad on the rest",
    )
    recommender.add_argument(
        "--epochs", type=_positive_int, default=20, help="passes over the data"
    )
    recommender.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="examples per step: interactions (default 512), or sequences for sasrec (128)",
    )
    recommender.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help="learning rate (default: 0.01 for adam, 0.003 for adam on sasrec, 0.1 for "
        "sparse-adagrad)",
    )
    recommender.add_argument("--dim", type=_positive_int, default=32, help="embedding size")
    recommender.add_argument(
        "--max-len", type=_positive_int, default=50, help="sasrec: the latest items it reads"
    )
    recommender.add_argument(
        "--seed", type=int, default=0, help="seed of the data, init and training keys"
    )
    recommender.add_argument(
        "--out", type=pathlib.Path, default=None, help="run folder (default: runs/<timestamp>)"
    )
    recommender.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    recommender.set_defaults(run=_train_recommender, flags=_RECOMMENDER_FLAGS)


def _interaction_data(text: str):
    from . import _recipes as recipes

    source, _, location = text.partition(":")
    if source == "synthetic":
        if not location:
            return source, recipes.SYNTHETIC_SIZE
        users, _, items = location.partition("x")
        if users.isdigit() and items.isdigit() and int(users) > 0 and int(items) >= 20:
            return source, (int(users), int(items))
    elif source == "movielens" and location:
        return source, pathlib.Path(location).expanduser()
    raise argparse.ArgumentTypeError(
        f"expected synthetic, synthetic:USERSxITEMS (at least 20 items) or movielens:PATH; "
        f"got {text!r}"
    )


def _train_recommender(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import zoo

    from . import _recipes as recipes

    loss_name = args.loss or recipes.DEFAULT_LOSS[args.model]
    if args.model == "dlrm" and loss_name == "softmax":
        parser.error("--loss softmax needs a factorised model (mf, two-tower); use bce or bpr")
    sequential = args.model == "sasrec"
    if sequential and loss_name == "bpr":
        parser.error("--loss bpr is not a sasrec loss; use softmax, bce or sampled-softmax")
    if not sequential and loss_name == "sampled-softmax":
        parser.error("--loss sampled-softmax is for sasrec; use bpr, bce or softmax")
    learning_rate = args.lr or recipes.learning_rate(args.model, args.optimizer)
    batch_size = args.batch_size or recipes.DEFAULT_BATCH_SIZE.get(args.model, 512)
    out = args.out
    data_key, init_key, train_key = recipes.split_keys(args.seed)
    train, test = recipes.load(*args.data, data_key, sequential=sequential)
    training = recipes.training_data(args.model, train, args.max_len)
    examples = len(next(iter(training.values())))
    if batch_size > examples:
        # The last, partial batch is dropped (see zoo.train below): no step would run.
        raise _UsageError(
            f"--batch-size {batch_size}{'' if args.batch_size else ' (the default)'} exceeds "
            f"the {examples} training examples of "
            f"{args.data[0]}; use at most {examples}"
        )
    model = recipes.build_model(args.model, train, args.dim, init_key, max_len=args.max_len)
    _say(
        args,
        f"zoo: {args.model} (dim {args.dim}, {loss_name} loss, {args.optimizer} {learning_rate:g}) "
        f"on {args.data[0]}: {train.num_users} users, {train.num_items} items, "
        f"{len(train['user'])} training / {len(test['user'])} held-out interactions",
    )
    if args.optimizer.startswith("sparse"):
        _say(args, f"zoo: sparse steps on {zoo.sparse.kernels().reason}")
    baselines = zoo.recsys.evaluate_ranking(model, train, test, key=data_key)
    del baselines["model"]
    for name, figures in baselines.items():
        _say(
            args,
            f"{name:>10} baseline  HR@10 {figures['hr@10']:.4f}  NDCG@10 {figures['ndcg@10']:.4f}",
        )

    def report(history):
        evaluation = history["eval"]
        _say(
            args,
            f"epoch {history['epoch'][-1]:3d}  loss {history['train']['loss'][-1]:.4f}  "
            f"HR@10 {evaluation['hr@10'][-1]:.4f}  NDCG@10 {evaluation['ndcg@10'][-1]:.4f}  "
            f"({history['time'][-1]:.2f}s)",
        )

    model, history = zoo.train(
        model,
        training,
        loss=recipes.build_loss(loss_name, train, model=args.model),
        optimizer=recipes.build_optimizer(args.optimizer, learning_rate),
        epochs=args.epochs,
        batch_size=batch_size,
        key=train_key,
        # A small last batch would be a weak in-batch softmax, and one more program to compile.
        last_batch="drop",
        progress=None if not args.quiet else False,
        eval_fn=lambda m: zoo.recsys.evaluate_ranking(m, train, test, baselines=False)["model"],
        on_epoch=report,
        log_dir=out,
        tensorboard=_tensorboard(args),
    )
    history["baselines"] = baselines
    out.mkdir(parents=True, exist_ok=True)  # zoo.train made it; unless epochs ran none
    (out / "history.json").write_text(json.dumps(history, indent=2))
    zoo.plot_history(history, out / "training_curve.png")
    final = {"model": {name: values[-1] for name, values in history["eval"].items()}}
    print(zoo.recsys.format_report(final | baselines))
    print(f"wrote {out / 'history.json'} and {out / 'training_curve.png'}")
    return 0


def _run_folder(args) -> pathlib.Path:
    """Where the run writes; made by the run itself (`zoo.train`'s `log_dir`), not here, so that
    a run that fails early leaves nothing."""
    out = args.out or pathlib.Path("runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise _UsageError(f"--out {out}: {existing} is a file, not a folder; name a folder")
    return out


def _tensorboard(args) -> bool:
    """TensorBoard event files go into the run folder when tensorboardX is installed."""
    import importlib.util

    if importlib.util.find_spec("tensorboardX") is not None:
        return True
    _say(
        args,
        "zoo: no TensorBoard event files: install them with "
        "`pip install 'equinox-zoo[tensorboard]'`",
    )
    return False


def _load(args):
    import zoo

    if args.dataset == "digits":
        return zoo.data.digits("train"), zoo.data.digits("test")
    return zoo.data.mnist("train", root=args.data_dir), zoo.data.mnist("test", root=args.data_dir)


def _say(args, line: str) -> None:
    if not args.quiet:
        print(line, flush=True)


def _checked(parse, accept, expected: str):
    """An argparse `type=` that parses with `parse` and accepts what `accept` approves."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return convert


_positive_int = _checked(int, lambda value: value >= 1, "a positive integer")
_positive_float = _checked(float, lambda value: 0 < value < float("inf"), "a positive number")
_probability = _checked(float, lambda value: 0 <= value < 1, "a number in [0, 1)")


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
