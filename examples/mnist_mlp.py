"""MNIST with a 784-256-128-10 MLP, Adam 1e-3, batch 128, 10 epochs: the seed lesson's workload.

    uv run python examples/mnist_mlp.py [--data-dir PATH] [--epochs 10]
    uv run python examples/mnist_mlp.py --smoke   # seconds, on the digits shipped with zoo

Reads the four MNIST IDX files from --data-dir (else $ZOO_DATA_DIR/mnist, else
~/.cache/zoo/mnist, downloading them there with md5 checks when missing). Prints per-epoch
test accuracy; the lesson this follows reports about 97%, zoo reaches 98% or more.
"""

import argparse
import pathlib

import jax
import optax

import zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=pathlib.Path, default=None)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--smoke", action="store_true", help="1 epoch on zoo's shipped digits: a quick check"
    )
    args = parser.parse_args()

    if args.smoke:
        args.epochs = 1
        train, test = zoo.data.digits("train"), zoo.data.digits("test")
    else:
        train = zoo.data.mnist("train", root=args.data_dir)
        test = zoo.data.mnist("test", root=args.data_dir)
    in_size = train["x"].shape[1]
    model = zoo.MLP(in_size=in_size, out_size=10, hidden=(256, 128), key=jax.random.key(0))
    model, history = zoo.train(
        model,
        train,
        loss="cross_entropy",
        optimizer=optax.adam(1e-3),
        epochs=args.epochs,
        batch_size=128,
        eval_data=test,
        key=jax.random.key(1),
        callbacks=[zoo.ProgressBar(bar=False)],
    )
    print(f"final test accuracy: {history['eval']['accuracy'][-1]:.4f}")


if __name__ == "__main__":
    main()
