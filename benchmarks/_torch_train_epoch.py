"""PyTorch eager baseline for train_epoch.py: run by the .bench-venv Python 3.11 interpreter.

    python _torch_train_epoch.py DATA.npz BATCH EPOCHS  ->  prints {"epoch_seconds": [...]}

The same workload as zoo's: MLP 784-256-128-10 with ReLU, Adam 1e-3, cross-entropy, a new
shuffle each epoch, the last partial batch kept.
"""

import json
import sys
import time

import numpy as np
import torch


def main() -> None:
    path, batch_size, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    arrays = np.load(path)
    x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"]).long()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(x))
        for first in range(0, len(x), batch_size):
            indices = order[first : first + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[indices]), y[indices])
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"epoch_seconds": seconds, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
