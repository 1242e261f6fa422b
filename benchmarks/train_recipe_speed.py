"""Where a CPU training step of the default recipe goes, and what the two speed settings buy.

On synth (cpu preset: 56x48 grey, ``cpunet-s``, batch 128, one torch thread per training as a
sweep runs them), side by side:

* augmentation alone: albumentations image by image (``augment_backend="albumentations"``)
  vs the batched kornia path (``"torch"``), img/s;
* the network step alone (forward + SM head + backward + SGD) in contiguous and channels-last
  layout, img/s;
* whole training steps through ``lowres.train.train`` (``--steps`` steps, no validation), for
  the old recipe (albumentations, contiguous), each setting alone, and the new default (both),
  img/s and the ratio to the old recipe.

Machines are shared: check the load average and rerun when the numbers look off; run it with
nothing else busy for figures you quote.

    python benchmarks/train_recipe_speed.py [--steps 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from lowres.methods import build_loss
from lowres.models import create
from lowres.train import (
    TrainConfig,
    augment_batch,
    augment_batch_torch,
    build_augmentation,
    load_split,
    train,
)

BATCH = 128


def _rate(step, images: int, repeats: int) -> float:
    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return images * repeats / (time.perf_counter() - start)


def augmentation(images: torch.Tensor, repeats: int) -> tuple[float, float]:
    pipeline = build_augmentation()
    per_image = _rate(lambda: augment_batch(images, pipeline, 1), len(images), repeats)
    batched = _rate(lambda: augment_batch_torch(images, 1), len(images), repeats)
    return per_image, batched


def network(shape: tuple[int, ...], channels_last: bool, repeats: int) -> float:
    model = create("cpunet-s", seed=0, in_channels=shape[0], input_size=shape[1:])
    loss_fn = build_loss("SM", model.embed_dim, 1900, seed=0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, *shape, generator=g).contiguous(memory_format=fmt)
    y = torch.randint(0, 1900, (BATCH,), generator=g)
    params = [{"params": list(model.parameters())}, *loss_fn.param_groups(0.1, 5e-4)]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).loss.backward()
        opt.step()

    return _rate(step, BATCH, repeats)


def whole_steps(steps: int, threads: int, **recipe) -> float:
    config = TrainConfig(
        method="SM", data="synth", device="cpu", num_threads=threads, epochs=1, **recipe
    )
    with tempfile.TemporaryDirectory() as out:
        train(config, out, progress=False, max_steps=2)  # loads the split and warms up
        start = time.perf_counter()
        train(config, out, resume=True, progress=False, max_steps=2 + steps)
        return BATCH * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps per recipe")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train_set, _ = load_split(TrainConfig(method="SM", data="synth"))
    images = train_set.images[:BATCH]
    shape = tuple(images.shape[1:])
    print(f"synth cpu preset, {shape[0]}x{shape[1]}x{shape[2]}, batch {BATCH}, "
          f"{args.threads} thread(s), torch {torch.__version__}")  # fmt: skip

    per_image, batched = augmentation(images, 20)
    print(f"augmentation   albumentations {per_image:7.0f} img/s   batched torch "
          f"{batched:7.0f} img/s   x{batched / per_image:.2f}")  # fmt: skip
    contiguous, last = network(shape, False, 10), network(shape, True, 10)
    print(f"network step   contiguous     {contiguous:7.0f} img/s   channels_last "
          f"{last:7.0f} img/s   x{last / contiguous:.2f}")  # fmt: skip

    recipes = {
        "old: albumentations, contiguous": dict(augment_backend="albumentations",
                                                channels_last=False),
        "albumentations, channels_last": dict(augment_backend="albumentations"),
        "batched torch, contiguous": dict(channels_last=False),
        "new default: batched torch, channels_last": {},
    }  # fmt: skip
    base = None
    for name, recipe in recipes.items():
        rate = whole_steps(args.steps, args.threads, **recipe)
        base = base or rate
        print(f"training step  {name:44s} {rate:7.0f} img/s   x{rate / base:.2f}")


if __name__ == "__main__":
    main()
