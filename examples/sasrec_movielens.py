"""SASRec on MovieLens (or synthetic data with a planted order), beside MF, two-tower and the
baselines, all judged by full-catalogue ranking of each user's held-out latest item.

    uv run python examples/sasrec_movielens.py PATH [--epochs 20] [--losses softmax,bce]
    uv run python examples/sasrec_movielens.py          # zoo.data.synthetic_sequences instead

PATH is an unzipped MovieLens release (ml-1m, ml-100k, ml-latest-small, ...): zoo does not
download MovieLens, whose licence does not allow redistribution. Ratings of 4 and 5 are the
positives, ordered by time; each user's latest one is held out. Prints one Markdown table:
SASRec trained with each of `--losses`, matrix factorisation (BPR), a two-tower model
(in-batch softmax with log-q correction), and the popularity and random baselines; every
figure of a model is followed by its lift over popularity. docs/recommenders.md shows its
output on the synthetic data.
"""

import argparse
import pathlib
import sys
import time

import jax
import optax

import zoo


def load(path: pathlib.Path | None, key, smoke: bool = False):
    if smoke:
        print("--smoke: zoo.data.synthetic_sequences(200, 100), one epoch")
        data = zoo.data.synthetic_sequences(200, 100, key=key)
    elif path is None:
        print("no PATH given: using zoo.data.synthetic_sequences(2000, 1000)")
        data = zoo.data.synthetic_sequences(2000, 1000, key=key)
    else:
        data = zoo.data.implicit(zoo.data.movielens(path), threshold=4.0)
    return zoo.data.leave_last_out(data)


def sasrec(train, loss: str, args, init_key, train_key):
    model = zoo.SASRec(
        train.num_items,
        dim=args.dim,
        num_blocks=2,
        num_heads=1,
        max_len=args.max_len,
        dropout=0.2,
        key=init_key,
    )
    sampler = None
    if loss != "softmax":
        sampler = zoo.recsys.NegativeSampler(
            train.num_items, interactions=train, exclude_positives=True
        )
    model, _ = zoo.train(
        model,
        zoo.data.sequences(train, max_len=args.max_len),
        loss=zoo.recsys.sequence_loss(loss, sampler=sampler),
        optimizer=optax.adam(args.lr),
        epochs=args.epochs,
        batch_size=128,
        key=train_key,
    )
    return model


def matrix_factorization(train, args, init_key, train_key):
    model = zoo.MatrixFactorization(train.num_users, train.num_items, args.dim, key=init_key)
    sampler = zoo.recsys.NegativeSampler(
        train.num_items, interactions=train, exclude_positives=True
    )
    model, _ = zoo.train(
        model,
        train,
        loss=zoo.recsys.bpr_loss(sampler, num_negatives=4),
        optimizer=optax.adam(1e-2),
        epochs=args.epochs,
        batch_size=512,
        key=train_key,
    )
    return model


def two_tower(train, args, init_key, train_key):
    model = zoo.TwoTower(
        train.num_users,
        train.num_items,
        args.dim,
        similarity="cosine",
        temperature=0.1,
        key=init_key,
    )
    counts = zoo.recsys.item_counts(train, train.num_items)
    model, _ = zoo.train(
        model,
        train,
        loss=zoo.recsys.in_batch_softmax_loss(item_counts=counts),
        optimizer=optax.adam(1e-2),
        epochs=args.epochs,
        batch_size=512,
        loop=zoo.Loop(last_batch="drop"),
        key=train_key,
    )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=pathlib.Path, nargs="?", default=None)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-3, help="SASRec's Adam learning rate")
    parser.add_argument("--losses", default="softmax,sampled_softmax,bce")
    parser.add_argument(
        "--smoke", action="store_true", help="small synthetic data and one epoch, in seconds"
    )
    parser.add_argument(
        "--figure",
        type=pathlib.Path,
        help="also draw HR@10 and NDCG@10 to this PNG, its data beside it as JSON",
    )
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.dim, args.max_len, args.losses = 1, 16, 20, "softmax"

    data_key, init_key, train_key = jax.random.split(jax.random.key(0), 3)
    train, test = load(args.path, data_key, args.smoke)
    print(
        f"{train.num_users} users, {train.num_items} items, {len(train['user'])} training and "
        f"{len(test['user'])} held-out interactions"
    )
    models = {
        f"sasrec ({loss})": lambda loss=loss: sasrec(train, loss, args, init_key, train_key)
        for loss in args.losses.split(",")
    }
    models["mf (bpr)"] = lambda: matrix_factorization(train, args, init_key, train_key)
    models["two-tower (softmax)"] = lambda: two_tower(train, args, init_key, train_key)
    report = {}
    for name, fit in models.items():
        start = time.perf_counter()
        model = fit()
        figures = zoo.recsys.evaluate_ranking(model, train, test)
        report[name] = figures.pop("model")
        baselines = figures
        print(f"{name}: trained and ranked in {time.perf_counter() - start:.0f} s")
    print(zoo.recsys.format_report(report | baselines))
    if args.figure:
        plot(report, baselines, args.figure)


def plot(report: dict, baselines: dict, path: pathlib.Path) -> None:
    """The report as a `ranking` figure of the repository's benchmarks/figures.py."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
    import figures

    data = {
        "title": "Next-item ranking, each user's held-out latest item among all items",
        "metrics": ["hr@10", "ndcg@10"],
        "runs": [
            {"label": name.replace(" (", "\n").rstrip(")"), "figures": figures_}
            for name, figures_ in report.items()
        ],
        "baselines": baselines,
    }
    figures.save(path, "ranking", data, figures.this_command())


if __name__ == "__main__":
    main()
