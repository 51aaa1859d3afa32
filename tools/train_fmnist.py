"""Train the Fashion-MNIST CNN of ``models/fmnist_cnn.py`` and save ``models/weights/fmnist_cnn.safetensors``.

Deterministic (seeded), CPU only, a few minutes on 2 cores::

    python tools/train_fmnist.py --epochs 6
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.fmnist_cnn import WEIGHTS, FashionCNN, load_split, normalize


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on (x, y), evaluated in batches."""
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(y), 1000):
            correct += int((model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum())
    return correct / len(y)


def main(argv: list[str] | None = None) -> int:
    """Train, report test accuracy, save the weights in safetensors."""
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train_images, train_labels = load_split("train")
    test_images, test_labels = load_split("test")
    x_train = torch.from_numpy(normalize(train_images))
    y_train = torch.from_numpy(train_labels.copy())
    x_test = torch.from_numpy(normalize(test_images))
    y_test = torch.from_numpy(test_labels.copy())

    model = FashionCNN()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params} ({n_params * 4 / 1024:.1f} KiB fp32)")
    steps_per_epoch = (len(y_train) + args.batch_size - 1) // args.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(y_train), generator=gen)
        total = 0.0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i : i + args.batch_size]
            xb = x_train[idx]
            # Light augmentation: random horizontal flips (clothes are left/right symmetric).
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = loss_fn(model(xb), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        acc = accuracy(model, x_test, y_test)
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss {total / len(y_train):.4f} test acc {acc:.4f} "
            f"({time.perf_counter() - start:.0f}s)",
            flush=True,
        )
    model.eval()
    final = accuracy(model, x_test, y_test)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out), metadata={"test_accuracy": f"{final:.4f}", "epochs": str(args.epochs)})
    print(
        f"saved {args.out} ({args.out.stat().st_size / 1024:.1f} KiB); test accuracy {final:.4f}; "
        f"train time {time.perf_counter() - start:.0f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
