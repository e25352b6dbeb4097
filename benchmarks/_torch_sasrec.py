"""PyTorch eager baseline for sasrec.py: run by the .bench-venv Python 3.11 interpreter.

    python _torch_sasrec.py DATA.npz CONFIG_JSON EPOCHS  ->  prints {"epoch_seconds": [...]}
    python _torch_sasrec.py DATA.npz CONFIG_JSON EPOCHS PATIENCE  ->  prints {"marks": [...]}

The second form trains to the validation plateau: after each epoch, NDCG@10 of each user's
validation item ranked over the whole catalogue (the user's training items excluded) from the
model's state after the user's latest training items (`histories`), as
`zoo.recsys.evaluate_ranking` computes it; it stops after PATIENCE epochs without a better
figure and prints `[seconds since training began, NDCG@10, HR@10, seconds of the validation,
seconds of the epoch's training]` after each epoch.

The same model as `zoo.SASRec` (item embedding with a padding row, learned positions counted
from the end, pre-norm blocks of causal self-attention that never attends to padding and a
ReLU feed-forward layer, dropout on each output, a final layer norm, tied item scores), the
same full-softmax next-item loss over real positions, Adam, a new shuffle each epoch and
full batches only.
"""

import json
import sys
import time

import numpy as np
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attention_norm, self.feedforward_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.query_key_value, self.attention_output = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.hidden, self.output = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.dropout, self.heads = nn.Dropout(dropout), heads

    def forward(self, x, mask):
        b, length, dim = x.shape
        qkv = self.query_key_value(self.attention_norm(x))
        q, k, v = qkv.view(b, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        y = self.attention_output(y.transpose(1, 2).reshape(b, length, dim))
        x = x + self.dropout(y)
        y = self.dropout(torch.relu(self.hidden(self.feedforward_norm(x))))
        return x + self.dropout(self.output(y))


class SASRec(nn.Module):
    def __init__(self, num_items, dim, blocks, heads, max_len, dropout):
        super().__init__()
        self.items = nn.Embedding(num_items + 1, dim, padding_idx=num_items)
        with torch.no_grad():  # zoo.Embedding's initialisation: N(0, 1/dim), padding row zero
            self.items.weight.normal_(0.0, dim**-0.5)
            self.items.weight[num_items].zero_()
        self.positions = nn.Parameter(torch.randn(max_len, dim) / dim**0.5)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(blocks))
        self.final_norm, self.dropout, self.num_items = (
            nn.LayerNorm(dim),
            nn.Dropout(dropout),
            num_items,
        )

    def forward(self, sequences):
        length = sequences.shape[1]
        real = sequences != self.num_items
        x = self.dropout(self.items(sequences) + self.positions[-length:])
        eye = torch.eye(length, dtype=torch.bool)
        mask = torch.tril(torch.ones(length, length, dtype=torch.bool)) & (real[:, None, :] | eye)
        for block in self.blocks:
            x = block(x, mask) * real[..., None]
        return self.final_norm(x) * real[..., None]


@torch.no_grad()
def validation_figures(model, arrays, num_items: int) -> tuple[float, float]:
    """Mean NDCG@10 and HR@10 of the validation items under full ranking, training items
    excluded."""
    model.eval()
    histories = torch.from_numpy(arrays["histories"]).long()
    users = torch.from_numpy(arrays["valid_user"]).long()
    items = torch.from_numpy(arrays["valid_item"]).long()
    hidden = torch.cat([model(chunk)[:, -1] for chunk in histories[users].split(256)])
    scores = hidden @ model.items.weight[:num_items].T
    target = scores[torch.arange(len(users)), items]
    seen = torch.zeros(len(histories), num_items, dtype=torch.bool)
    seen[
        torch.from_numpy(arrays["seen_user"]).long(), torch.from_numpy(arrays["seen_item"]).long()
    ] = True
    scores = scores.masked_fill(seen[users], -torch.inf)
    rank = (scores > target[:, None]).sum(1)
    model.train()
    ndcg = torch.where(rank < 10, 1 / torch.log2(rank + 2.0), 0.0).mean()
    return float(ndcg), float((rank < 10).float().mean())


def main() -> None:
    path, config, epochs = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    patience = int(sys.argv[4]) if len(sys.argv) > 4 else None
    arrays = np.load(path)
    inputs, targets = (
        torch.from_numpy(arrays["input"]).long(),
        torch.from_numpy(arrays["target"]).long(),
    )
    torch.manual_seed(0)
    model = SASRec(
        config["num_items"],
        config["dim"],
        config["num_blocks"],
        config["num_heads"],
        config["max_len"],
        config["dropout"],
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    loss_fn = nn.CrossEntropyLoss(ignore_index=config["num_items"])
    batch_size = config["batch_size"]
    seconds, marks, began = [], [], time.perf_counter()
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(inputs))
        for first in range(0, len(inputs) - batch_size + 1, batch_size):
            indices = order[first : first + batch_size]
            optimizer.zero_grad(set_to_none=True)
            hidden = model(inputs[indices])
            logits = hidden @ model.items.weight[: config["num_items"]].T
            loss = loss_fn(logits.reshape(-1, config["num_items"]), targets[indices].reshape(-1))
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - start)
        if patience is not None:
            validated = time.perf_counter()
            ndcg, hr = validation_figures(model, arrays, config["num_items"])
            end = time.perf_counter()
            marks.append([end - began, ndcg, hr, end - validated, seconds[-1]])
            best = max(range(len(marks)), key=lambda epoch: (marks[epoch][1], -epoch))
            if len(marks) - 1 - best >= patience:
                break
    threads = torch.get_num_threads()
    print(json.dumps({"epoch_seconds": seconds, "marks": marks, "threads": threads}))


if __name__ == "__main__":
    main()
