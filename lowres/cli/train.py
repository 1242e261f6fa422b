"""``lowres train`` (one method, one checkpoint folder) and ``lowres export`` (a checkpoint
to TorchScript)."""

from __future__ import annotations

import click

from lowres.cli.group import cli
from lowres.distributed import process_rank
from lowres.external import export_torchscript


@cli.command("train")
@click.option("--method", required=True, help="Paper notation, e.g. 'SF+R(0.01)', 'l2-SM(30)'.")
@click.option(
    "--data",
    default="synth",
    show_default=True,
    help="orl, synth, a manifest, or an InsightFace pack (train.rec or its folder).",
)
@click.option("--fold", type=int, default=0, show_default=True, help="Held-out identity fold.")
@click.option(
    "--epochs", type=int, default=None, help="Epochs (default: ~2,100 steps, 12-40 epochs)."
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Checkpoint folder."
)
@click.option("--model", default=None, help="Model registry name (default cpunet-s).")
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Images per step (default 128, halved for small sets).",
)
@click.option(
    "--lr",
    type=float,
    default=None,
    help="Base learning rate (default 0.05 x batch/32; sphere nets 0.1 x batch/256).",
)
@click.option("--seed", type=int, default=None, help="Training seed (default 0).")
@click.option("--preset", default=None, help="Dataset preset, e.g. 'cpu' for synth.")
@click.option(
    "--augment-resolution",
    is_flag=True,
    help="Also degrade half the training images at a random scale in [1/16, 1].",
)
@click.option("--no-augment", is_flag=True, help="No flip/shift/brightness augmentation.")
@click.option(
    "--augment-backend",
    type=click.Choice(["torch", "albumentations"]),
    default=None,
    help="Batched on the training device (default) or per image on the CPU (older models).",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out where it stopped.")
@click.option("--device", default=None, help="auto (default), cpu, cuda, cuda:1, ...")
@click.option("--num-threads", type=int, default=None, help="torch CPU threads.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--val-identities",
    type=click.IntRange(min=0),
    default=None,
    help="Training identities held out for a per-epoch verification figure (val_tar in log.csv).",
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many steps in all (resumable with --resume).",
)
@click.option(
    "--loader-workers",
    type=click.IntRange(min=0),
    default=None,
    help="Processes reading (and on a CPU augmenting) batches ahead of the step (default: none "
    "for sets held in memory, half the cores up to 4 for streamed ones).",
)
@click.option(
    "--compile",
    "compile_step",
    is_flag=True,
    help="Run the training step under torch.compile (off by default: not measured faster here).",
)
def train_cmd(
    method,
    data,
    fold,
    epochs,
    out_dir,
    model,
    batch_size,
    lr,
    seed,
    preset,
    augment_resolution,
    no_augment,
    augment_backend,
    resume,
    device,
    num_threads,
    no_progress,
    val_identities,
    max_steps,
    loader_workers,
    compile_step,
) -> None:
    """Train one method (paper notation) and write a checkpoint folder.

    Data parallel: torchrun --nproc_per_node=N -m lowres train ... (--batch-size is the
    global batch over the N processes; rank 0 writes the checkpoint).
    """
    from lowres.train import TrainConfig, load_checkpoint, train

    given = {
        "epochs": epochs,
        "model": model,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "preset": preset,
        "device": device,
        "num_threads": num_threads,
        "val_identities": val_identities,
        "augment_backend": augment_backend,
        "loader_workers": loader_workers,
        "compile": compile_step or None,
    }
    config = TrainConfig(
        method=method,
        data=data,
        fold=fold,
        augment=not no_augment,
        augment_resolution=augment_resolution,
        **{k: v for k, v in given.items() if v is not None},
    )
    path = train(config, out_dir, resume=resume, progress=not no_progress, max_steps=max_steps)
    if process_rank() != 0:
        return
    side = load_checkpoint(path).sidecar
    metrics = side.get("metrics", {})

    def num(key: str) -> str:
        value = metrics.get(key)
        return "n/a" if value is None else f"{value:.4f}"

    click.echo(
        f"trained {side['method']} on {side['data']['name']} fold {side['data']['fold']}: "
        f"train acc {num('train_acc')}, wall {metrics.get('wall_seconds', 0.0):.1f} s, "
        f"norm CV train {num('train_norm_cv')} / held-out {num('test_norm_cv')}, "
        + (f"val TAR@1e-2 {num('val_tar')}, " if "val_tar" in metrics else "")
        + f"checkpoint {path}"
    )


@cli.command("export")
@click.argument("ckpt_dir", type=click.Path())
@click.argument("out", type=click.Path())
def export_cmd(ckpt_dir, out) -> None:
    """Export checkpoint CKPT_DIR to TorchScript OUT (e.g. model.pt) + OUT's adapter sidecar.

    The archive and OUT.adapter.json (suffix replaced) go into `lowres sweep --models` as an
    external model, next to the checkpoint itself.
    """
    archive, sidecar = export_torchscript(ckpt_dir, out)
    click.echo(f"wrote {archive} and {sidecar}")
