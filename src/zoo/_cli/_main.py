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
    Ctrl-C is one line too, with exit status 130: during training, after the run folder gets
    the history, the plot and the last good epoch's model.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "run", None) is not _recommend:
            args.out = _run_folder(args)
    except _UsageError as error:
        return _fail(args, str(error), 2)
    made = [args.out, getattr(args, "data_dir", None)]  # what a failed run must not leave
    try:
        with _removed_on_failure(*[folder for folder in made if folder is not None]):
            return args.run(args, parser)
    except _UsageError as error:
        return _fail(args, str(error), 2)
    except KeyboardInterrupt:  # before training began (Ctrl-C in training is `_interrupted`)
        print("zoo: interrupted before training began; nothing written", file=sys.stderr)
        return 130
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
    _add_recommend(commands)
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
    "source": "--data csv:PATH",
    "patience": "--patience",
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

    def line(history):
        return (
            f"epoch {history['epoch'][-1]:3d}  loss {history['train']['loss'][-1]:.4f}  "
            f"test accuracy {history['eval']['accuracy'][-1]:.4f}  "
            f"({history['time'][-1]:.2f}s)"
        )

    model, history, interrupted = _trained(
        args,
        line,
        model,
        train_data,
        optimizer=optax.adam(args.lr),
        epochs=epochs,
        batch_size=batch_size,
        eval_data=test_data,
        key=train_key,
    )
    _write_run(out, history, model)
    if interrupted:
        return _interrupted(out, history)
    print(
        f"final test accuracy {history['eval']['accuracy'][-1]:.4f}; "
        f"wrote {out / 'history.json'}, {out / 'training_curve.png'} and {out / 'model'}"
    )
    return 0


def _trained(args, line, model, data, **options):
    """`zoo.train` with the CLI's callbacks (`_callbacks`); `(model, history, interrupted)`,
    where Ctrl-C gives the last good epoch's model and history and `interrupted=True`."""
    import zoo

    try:
        model, history = zoo.train(model, data, callbacks=_callbacks(args, line), **options)
    except zoo.TrainingInterrupted as stop:
        return stop.model, stop.history, True
    return model, history, False


def _callbacks(args, line) -> list:
    """The CLI's callbacks: the run folder's logs, and a line per epoch on stdout made by
    `line(history)` (a bar on a terminal), unless `--quiet`."""
    import zoo

    callbacks = [zoo.Logger(args.out, tensorboard=_tensorboard(args))]
    if not args.quiet:
        # A bar on a terminal, giving way to the epoch's line; one line per epoch in a pipe.
        callbacks.append(zoo.ProgressBar(file=sys.stdout, line=line))
    return callbacks


def _write_run(out: pathlib.Path, history: dict, model) -> None:
    """The run folder's history, training curve and model."""
    import zoo

    out.mkdir(parents=True, exist_ok=True)  # the logger made it, unless no epoch completed
    (out / "history.json").write_text(json.dumps(history, indent=2))
    if history["epoch"]:
        zoo.plot_history(history, out / "training_curve.png")
    zoo.save(out / "model", model, overwrite=True)


def _interrupted(out: pathlib.Path, history: dict) -> int:
    print(
        f"zoo: interrupted after {len(history['epoch'])} epochs; wrote the last good model, "
        f"history and plot to {out}",
        file=sys.stderr,
    )
    return 130


def _add_recommender(models) -> None:
    from . import _recipes as recipes

    recommender = models.add_parser(
        "recommender",
        help="a recommender (matrix factorisation, two-tower, DLRM, SASRec) on interaction data",
        description="Train a recommender on implicit feedback: split leave-one-out by time "
        "(train, validation, test), train until validation NDCG@10 stops improving, report "
        "test HR@10 and NDCG@10 over the whole catalogue beside the popularity and random "
        "baselines, and save the best model with the id mapping (for `zoo recommend`).",
        formatter_class=_DefaultsHelpFormatter,
    )
    recommender.add_argument("--model", choices=recipes.MODELS, required=True, help="the model")
    recommender.add_argument(
        "--data",
        type=_interaction_data,
        default="synthetic",
        help="synthetic (a stand-in of MovieLens-100K's shape: 943 users, 1682 items, ~100k "
        "ratings with planted taste and order), synthetic:USERSxITEMS (a small planted set), "
        "movielens:PATH (a folder with u.data, ratings.dat or ratings.csv) or csv:PATH (a CSV "
        "or TSV file with a header; see --columns)",
    )
    recommender.add_argument(
        "--columns",
        type=_columns,
        default="user,item,timestamp",  # argparse passes a default given as text through type
        help="csv: the names of the user, item and time columns, and optionally a rating "
        "column, comma-separated",
    )
    recommender.add_argument(
        "--min-rating",
        type=float,
        default=None,
        help="ratings at least this are the positives, the others dropped (default: 4)",
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
        "--epochs",
        type=_positive_int,
        default=recipes.EPOCHS,
        help="the most passes over the data; training stops earlier once validation NDCG@10 "
        "has not improved for --patience epochs",
    )
    recommender.add_argument(
        "--patience",
        type=_positive_int,
        default=recipes.PATIENCE,
        help="epochs without a better validation NDCG@10 before stopping",
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
    recommender.add_argument(
        "--dim",
        type=_positive_int,
        default=None,
        help="embedding size (default: 64 for sasrec, 32 for the others)",
    )
    recommender.add_argument(
        "--max-len",
        type=_positive_int,
        default=recipes.DEFAULT_MAX_LEN,
        help="sasrec: the latest items it reads",
    )
    recommender.add_argument(
        "--seed", type=int, default=0, help="seed of the data, init and training keys"
    )
    recommender.add_argument(
        "--out", type=pathlib.Path, default=None, help="run folder (default: runs/<timestamp>)"
    )
    recommender.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    recommender.set_defaults(run=_train_recommender, flags=_RECOMMENDER_FLAGS)


def _add_recommend(commands) -> None:
    recommend = commands.add_parser(
        "recommend",
        help="top-k items of a user from a trained recommender",
        description="Print a user's top-k items (raw ids and scores) from the model a "
        "`zoo train recommender` run saved, leaving out the items the user already has.",
        formatter_class=_DefaultsHelpFormatter,
    )
    recommend.add_argument("run_folder", type=pathlib.Path, metavar="RUN", help="the run folder")
    recommend.add_argument(
        "--user", action="append", required=True, help="a raw user id (repeat for several)"
    )
    recommend.add_argument("-k", type=_positive_int, default=10, help="items per user")
    recommend.set_defaults(run=_recommend, flags={"users": "--user", "k": "-k"}, out=None)


def _columns(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(","))
    if len(names) not in (3, 4) or not all(names):
        raise argparse.ArgumentTypeError(
            f"expected USER,ITEM,TIME or USER,ITEM,TIME,RATING column names; got {text!r}"
        )
    return names


def _interaction_data(text: str):
    from . import _recipes as recipes

    del recipes
    source, _, location = text.partition(":")
    if source == "synthetic":
        if not location:
            return source, None
        users, _, items = location.partition("x")
        if users.isdigit() and items.isdigit() and int(users) > 0 and int(items) >= 20:
            return source, (int(users), int(items))
    elif source in ("movielens", "csv") and location:
        return source, pathlib.Path(location).expanduser()
    raise argparse.ArgumentTypeError(
        f"expected synthetic, synthetic:USERSxITEMS (at least 20 items), movielens:PATH or "
        f"csv:PATH; got {text!r}"
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
    dim = args.dim or recipes.DEFAULT_DIM.get(args.model, 32)
    out = args.out
    data_key, init_key, train_key = recipes.split_keys(args.seed)
    data, notes = recipes.load(
        *args.data, data_key, sequential=sequential, columns=args.columns,
        min_rating=args.min_rating,
    )  # fmt: skip
    for note in notes:
        _say(args, f"zoo: {note}")
    train, valid, test = recipes.splits(data)
    known = recipes.history_of_test(train, valid)
    for split, history_of in ((valid, train), (test, known)):
        recipes.check_evaluable(history_of, split)  # before training, not after it
    training = recipes.training_data(args.model, train, args.max_len, batch_size)
    examples = len(next(iter(training.values())))
    if batch_size > examples:
        # The last, partial batch is dropped (see recipes.fit): no step would run.
        raise _UsageError(
            f"--batch-size {batch_size}{'' if args.batch_size else ' (the default)'} exceeds "
            f"the {examples} training examples of "
            f"{args.data[0]}; use at most {examples}"
        )
    model = recipes.build_model(args.model, train, dim, init_key, max_len=args.max_len)
    _say(
        args,
        f"zoo: {args.model} (dim {dim}, {loss_name} loss, {args.optimizer} {learning_rate:g}) "
        f"on {args.data[0]}: {train.num_users} users, {train.num_items} items, "
        f"{len(train['user'])} training / {len(valid['user'])} validation / "
        f"{len(test['user'])} test interactions (leave-one-out by time)",
    )
    if args.optimizer.startswith("sparse"):
        _say(args, f"zoo: sparse steps on {zoo.sparse.kernels().reason}")

    def line(history):
        evaluation = history["eval"]
        return (
            f"epoch {history['epoch'][-1]:3d}  loss {history['train']['loss'][-1]:.4f}  "
            f"valid HR@10 {evaluation['hr@10'][-1]:.4f}  NDCG@10 {evaluation['ndcg@10'][-1]:.4f}"
            f"  ({history['time'][-1]:.2f}s)"
        )

    model, history, interrupted = recipes.fit(
        model,
        training,
        loss=recipes.build_loss(loss_name, train, model=args.model),
        optimizer=recipes.build_optimizer(args.optimizer, learning_rate),
        epochs=args.epochs,
        batch_size=batch_size,
        key=train_key,
        evaluate=recipes.validation(train, valid),
        patience=args.patience,
        callbacks=_callbacks(args, line),
        best_model=out / "model",
    )
    config = {"model": args.model, "dim": dim, "max_len": args.max_len, "loss": loss_name}
    saved = recipes.save_run(out, model, data, config)
    final = zoo.recsys.evaluate_ranking(model, known, test, key=data_key)
    history["test"] = dict(final)
    history["protocol"] = f"leave-one-out test split: {final.describe()}"
    history["baselines"] = {name: final[name] for name in ("popularity", "random")}
    (out / "history.json").write_text(json.dumps(history, indent=2))
    if history["epoch"]:
        zoo.plot_history(history, out / "training_curve.png")
    best = history.get("best_epoch", len(history["epoch"]))
    print(f"test split, best validation epoch {best}: {history['protocol']}")
    print(zoo.recsys.format_report(final).split("\n\n", 1)[-1])
    print(f"wrote {saved} (the model), {out / 'history.json'}; try: zoo recommend {out} --user "
          f"{data.user_ids[0]}")  # fmt: skip
    if interrupted:
        return _interrupted(out, history)
    return 0


def _recommend(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import zoo

    from . import _recipes as recipes

    model, data = recipes.load_run(args.run_folder)
    top = zoo.recsys.recommend(model, data, _raw_users(args.user, data.user_ids), k=args.k)
    for user, items, scores in zip(args.user, top.items, top.scores, strict=True):
        print(f"user {user}:")
        for rank, (item, score) in enumerate(zip(items, scores, strict=True), start=1):
            print(f"  {rank:3d}. item {item}  score {score:.4f}")
    return 0


def _raw_users(texts: list[str], user_ids):
    """The typed ids: integers where the run's raw ids are integers."""
    if user_ids.dtype.kind in "iu":
        return [int(text) if text.lstrip("-").isdigit() else text for text in texts]
    return texts


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
