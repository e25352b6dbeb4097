"""Matrix factorisation on MovieLens: BPR, sparse row-wise Adagrad, full and sampled ranking.

    uv run python examples/movielens.py PATH [--epochs 20] [--dim 64]
    uv run python examples/movielens.py --smoke   # seconds, on small synthetic interactions

PATH is an unzipped MovieLens release (ml-100k, ml-1m, ml-latest-small, ...): zoo does not
download MovieLens, whose licence does not allow redistribution. Ratings of 4 and 5 are the
positives; each user's latest one is held out. Without PATH the example runs on zoo's
synthetic interactions instead. Prints HR@10 and NDCG@10 per epoch, then the full-ranking and
the NCF paper's sampled (1 + 100 items) reports, each beside the popularity and random
baselines.
"""

import argparse
import pathlib

import jax
import optax

import zoo


def load(path: pathlib.Path | None, key, *, smoke: bool = False):
    if smoke:
        data = zoo.data.synthetic_interactions(200, 100, key=key)
    elif path is None:
        print("no PATH given: using zoo.data.synthetic_interactions(2000, 1000)")
        data = zoo.data.synthetic_interactions(2000, 1000, key=key)
    else:
        data = zoo.data.implicit(zoo.data.movielens(path), threshold=4.0)
    return zoo.data.leave_last_out(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=pathlib.Path, nargs="?", default=None)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="1 epoch on synthetic interactions of 200 users and 100 items: a quick check",
    )
    args = parser.parse_args()
    if args.smoke:
        args.epochs = 1

    data_key, init_key, train_key, eval_key = jax.random.split(jax.random.key(0), 4)
    train, test = load(args.path, data_key, smoke=args.smoke)
    print(f"{train.num_users} users, {train.num_items} items, {len(train['user'])} training and "
          f"{len(test['user'])} held-out interactions")  # fmt: skip

    model = zoo.MatrixFactorization(train.num_users, train.num_items, args.dim, key=init_key)
    # Negatives skip each user's training positives; every step draws them from its own key.
    sampler = zoo.recsys.NegativeSampler(
        train.num_items, interactions=train, exclude_positives=True
    )
    optimizer = zoo.sparse.partition(  # O(batch) updates of the embedding tables
        dense=optax.adagrad(0.1), embeddings=zoo.sparse.rowwise_adagrad(0.1)
    )
    model, _ = zoo.train(
        model,
        train,
        loss=zoo.recsys.bpr_loss(sampler, num_negatives=4),
        optimizer=optimizer,
        epochs=args.epochs,
        batch_size=1024,
        key=train_key,
        eval_fn=lambda m: zoo.recsys.evaluate_ranking(m, train, test, baselines=False)["model"],
        callbacks=[zoo.ProgressBar(bar=False)],
    )
    print("\nfull ranking (every item but the user's training positives):")
    print(zoo.recsys.format_report(zoo.recsys.evaluate_ranking(model, train, test, key=eval_key)))
    # NCF samples 100 negatives; the smoke data's 100 items leave each user only 80 to sample.
    negatives = 50 if args.smoke else 100
    print(f"\nsampled protocol (the held-out item among {negatives} sampled negatives, as in NCF):")
    report = zoo.recsys.evaluate_sampled(model, train, test, num_negatives=negatives, key=eval_key)
    print(zoo.recsys.format_report(report))


if __name__ == "__main__":
    main()
