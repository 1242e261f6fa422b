"""Does training wait on its data? The data pipeline, the model step and full training, side by
side, and the peak memory of a streamed epoch as the training set grows.

Throughput, for ``cpunet-s`` (batch 128, SM head, one torch thread unless ``--threads``):

* synth (cpu preset, in memory: 56x48 grey);
* a generated InsightFace ``.rec`` pack of 112x112 RGB JPEGs, streamed from the decode cache
  (``lowres.data.stream``; the input adapter turns it into the net's 56x48 grey).

For each: the data pipeline alone (reading the batch, the batched augmentation and the input
adapter, img/s; in this process with 0 loader workers, in 1 or 2 workers otherwise, as training
runs it), the model step alone (forward, head,
backward, SGD on a ready batch), full training through ``lowres.train.train`` with 0, 1 (and for
the pack 2) loader workers (reading and the CPU augmentation run in worker processes beside the
step),
and the ratio full / min(data, model): 1.0 means training runs as fast as its slower half
allows. Full training is timed over ``--steps`` steps (start-up included: loading the split,
starting the workers, the final checkpoint) and over twice as many; the difference is the
steady state, which the ratio uses (the start-up is paid once per run, a second or two).

Memory (``--memory 20000,200000``): for each size, a fresh process decodes a generated pack into
an empty cache and trains one epoch streamed from it (``--memory-steps`` caps the steps); the
peak resident set (VmHWM) of the training process and of its largest loader worker are printed
with the ratio to the smallest pack. Packs hold 20 images per identity, so the classifier head
grows with them (7,500 training identities against 750); ``--memory-identities 1000`` holds
the identities fixed, which leaves the images alone to grow. Packs are generated once into
``--work`` and reused.

Machines are shared: check the load average, rerun when the numbers look off.

    python benchmarks/train_pipeline.py [--steps 30] [--rec-images 20000]
        [--memory 20000,200000] [--memory-steps 0] [--memory-identities 0]
        [--work /tmp/lowres_pipeline]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lowres.data.insightface import write_encoded_pack
from lowres.data.stream import batch_stream
from lowres.embed import InputAdapter
from lowres.methods import build_loss
from lowres.models import create
from lowres.train import TrainConfig, load_split, loop, train
from lowres.train.loop import augment_for_net

BATCH = 128
PER_IDENTITY = 20


def make_pack(folder: Path, count: int, seed: int = 0, identities: int = 0) -> Path:
    """``count`` 112x112 RGB JPEGs (smooth random faces-sized blobs, ~3 KB each), 20 per id,
    or split evenly over ``identities``."""
    rec = folder / "train.rec"
    if (folder / "property").is_file():
        return rec
    gen = np.random.default_rng(seed)

    def blobs():
        for _ in range(count):
            small = gen.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((112, 112), Image.BILINEAR)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            yield buf.getvalue()

    labels = np.arange(count) // (count // identities if identities else PER_IDENTITY)
    return write_encoded_pack(folder, blobs(), labels, (112, 112))


def rate(step, images: int, repeats: int) -> float:
    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return images * repeats / (time.perf_counter() - start)


def data_rate(images, adapter, workers: int, steps: int) -> float:
    """Batches read, augmented and adapted as training does it: in this process with 0
    workers, else in the loader workers (in pieces, as in training)."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    batches = list(order[: BATCH * (steps + 2)].split(BATCH))
    kwargs = dict(index_offset=0, adapter=adapter, then_adapt=True)
    transform = functools.partial(augment_for_net, in_pieces=True, **kwargs) if workers else None
    seeds = list(range(len(batches)))
    stream = batch_stream(images, batches, workers=workers, transform=transform, seeds=seeds)
    for i, batch in enumerate(stream):
        if i == 2:  # workers started, first batches read
            start = time.perf_counter()
        x = batch if workers else augment_for_net(batch, i, **kwargs)
        x.contiguous(memory_format=torch.channels_last)
    return BATCH * (len(batches) - 3) / (time.perf_counter() - start)


def model_rate(model_name: str, adapter_shape: tuple[int, ...], classes: int, steps: int) -> float:
    model = create(model_name, seed=0).to(memory_format=torch.channels_last)
    loss_fn = build_loss("SM", model.embed_dim, classes, seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, *adapter_shape, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (BATCH,), generator=g)
    params = [{"params": list(model.parameters())}, *loss_fn.param_groups(0.1, 5e-4)]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).loss.backward()
        opt.step()

    return rate(step, BATCH, steps)


WAITED = [0.0]
"""Seconds the trainer spent waiting for its next batch (see :func:`_timed_stream`)."""


def _timed_stream(*args, **kwargs):
    """``lowres.train.loop.batch_stream``, timing each wait for the next batch in WAITED."""
    batches = iter(batch_stream(*args, **kwargs))
    while True:
        start = time.perf_counter()
        batch = next(batches, None)
        WAITED[0] += time.perf_counter() - start
        if batch is None:
            return
        yield batch


def full_rate(config: TrainConfig, steps: int) -> tuple[float, float, float]:
    """Training img/s through ``lowres.train.train``: (over ``steps`` steps after two warm-up
    steps, start-up included: loading the split, starting the loader workers, the checkpoint
    at the end; steady state: the same for ``2 * steps`` minus it, which cancels the start-up),
    and the share of the steady-state time the trainer waited for its next batch. The run is
    given enough epochs that the steps are taken (an epoch of synth is 74 steps)."""
    config = dataclasses.replace(config, epochs=1000)
    seconds, waited = [], []
    loop.batch_stream = _timed_stream
    try:
        for n in (steps, 2 * steps):
            with tempfile.TemporaryDirectory() as out:
                train(config, out, progress=False, max_steps=2)  # loads the split, warms up
                WAITED[0] = 0.0
                start = time.perf_counter()
                train(config, out, resume=True, progress=False, max_steps=2 + n)
                seconds.append(time.perf_counter() - start)
                waited.append(WAITED[0])
    finally:
        loop.batch_stream = batch_stream
    steady = seconds[1] - seconds[0]
    wait = (waited[1] - waited[0]) / steady
    return BATCH * steps / seconds[0], BATCH * steps / steady, wait


def throughput(name: str, config: TrainConfig, steps: int, workers: list[int]) -> None:
    train_set, _ = load_split(config)
    model = create(config.model, seed=0)
    adapter = InputAdapter.for_model(model)
    shape = (model.in_channels, *model.input_size)
    data = {w: data_rate(train_set.images, adapter, w, steps) for w in workers}
    net = model_rate(config.model, shape, train_set.num_identities, steps)
    full = {
        w: full_rate(dataclasses.replace(config, loader_workers=w), steps)
        for w in sorted({0, 1, *workers})
    }
    best = max(data.values())
    cells = "   ".join(f"data, {w} workers {v:6.0f}" for w, v in data.items())
    fulls = "   ".join(f"full, {w} workers {v[0]:6.0f} / {v[1]:6.0f} (waited {v[2]:4.0%})"
                       for w, v in full.items())  # fmt: skip
    steady = max(v[1] for v in full.values())
    print(f"{name}\n    {cells}   model {net:6.0f} img/s\n    {fulls} img/s (with start-up / "
          f"steady)\n    best steady full / min(data, model) {steady / min(best, net):.2f}   "
          f"(with start-up {max(v[0] for v in full.values()) / min(best, net):.2f})")  # fmt: skip


# ----------------------------------------------------------------------------------------------
# peak memory of one streamed epoch, in a fresh process per pack size
# ----------------------------------------------------------------------------------------------


def memory_child(rec: str, steps: int, threads: int) -> None:
    os.environ["LOWRES_STREAM_MIN_BYTES"] = "0"  # stream every size alike
    config = TrainConfig(method="SM", data=rec, device="cpu", num_threads=threads, epochs=1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        train(config, out, progress=False, max_steps=steps or None)
    status = Path("/proc/self/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"hwm_kib": hwm, "worker_kib": children,
                      "seconds": time.perf_counter() - start}))  # fmt: skip


def memory(sizes: list[int], steps: int, threads: int, work: Path, identities: int) -> None:
    base = None
    for count in sizes:
        t0 = time.perf_counter()
        name = f"pack{count}" + (f"_ids{identities}" if identities else "")
        rec = make_pack(work / name, count, identities=identities)
        made = time.perf_counter() - t0
        with tempfile.TemporaryDirectory(dir=work) as cache:
            env = dict(os.environ, LOWRES_CACHE=cache)
            cmd = [sys.executable, __file__, "--memory-child", str(rec), "--memory-steps",
                   str(steps), "--threads", str(threads)]  # fmt: skip
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        got = json.loads(out.stdout.strip().splitlines()[-1])
        base = base or got["hwm_kib"]
        ids = identities or count // PER_IDENTITY
        print(f"pack {count:7d} images, {ids:6d} ids ({rec.stat().st_size / 2**20:6.0f} MiB, "
              f"made in {made:4.0f} s): decode + epoch {got['seconds']:5.0f} s, peak RSS "
              f"{got['hwm_kib'] / 1024:6.0f} MiB (x{got['hwm_kib'] / base:.3f}), largest "
              f"loader worker {got['worker_kib'] / 1024:5.0f} MiB")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--rec-images", type=int, default=20000, help="pack for throughput")
    parser.add_argument("--memory", default="", help="pack sizes for the memory test, e.g. "
                        "20000,200000 (empty: skip)")  # fmt: skip
    parser.add_argument("--memory-steps", type=int, default=0, help="cap (0: a whole epoch)")
    parser.add_argument("--memory-identities", type=int, default=0,
                        help="identities per memory pack (0: 20 images each)")  # fmt: skip
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lowres_pipe")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.memory_steps, args.threads)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"cpunet-s, batch {BATCH}, {args.threads} torch thread(s), {os.cpu_count()} cores, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    if not args.skip_throughput:
        synth = TrainConfig(method="SM", data="synth", device="cpu", num_threads=args.threads,
                            epochs=1)  # fmt: skip
        throughput("synth (in memory)", synth, args.steps, [0])
        rec = make_pack(args.work / f"pack{args.rec_images}", args.rec_images)
        os.environ["LOWRES_STREAM_MIN_BYTES"] = "0"
        with tempfile.TemporaryDirectory(dir=args.work) as cache:
            os.environ["LOWRES_CACHE"] = cache
            packed = TrainConfig(method="SM", data=str(rec), device="cpu",
                                 num_threads=args.threads, epochs=1)  # fmt: skip
            name = f".rec {args.rec_images // 1000}k 112x112 JPEG (streamed)"
            throughput(name, packed, args.steps, [0, 1, 2])
    if args.memory:
        memory([int(v) for v in args.memory.split(",")], args.memory_steps, args.threads,
               args.work, args.memory_identities)  # fmt: skip


if __name__ == "__main__":
    main()
