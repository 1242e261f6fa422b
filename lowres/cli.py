"""Command line interface. The only module that imports click.

Thin by design: each command parses options, calls library functions, and prints. Heavy imports
(torch, pandas, ...) live inside command bodies so ``lowres --help`` is instant. Exit codes:
0 ok, 1 check failed, 2 bad input (any ``LowresError`` becomes one line on stderr, no traceback).
"""

from __future__ import annotations

import logging
import sys

import click

from lowres import __version__
from lowres.errors import LowresError

log = logging.getLogger("lowres")


class BadInput(click.ClickException):
    """A LowresError shown as one line with exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True, file=file)


class LowresGroup(click.Group):
    """Click group that turns library errors into one clear line and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LowresError as exc:
            raise BadInput(str(exc)) from None


@click.group(cls=LowresGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lowres")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def cli(verbose: int, quiet: bool) -> None:
    """lowres: how does a face-recognition model hold up as faces get smaller?"""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    log.setLevel(level)


@cli.command("train")
@click.option("--method", required=True, help="Paper notation, e.g. 'SF+R(0.01)', 'l2-SM(30)'.")
@click.option("--data", default="synth", show_default=True, help="orl, synth, or a manifest.")
@click.option("--fold", type=int, default=0, show_default=True, help="Held-out identity fold.")
@click.option("--epochs", type=int, default=None, help="Epochs (default: ~32k images, 2-40).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Checkpoint folder.")
@click.option("--model", default=None, help="Model registry name (default cpunet).")
@click.option("--batch-size", type=int, default=None, help="Images per step (default 32).")
@click.option("--lr", type=float, default=None, help="Base learning rate (default 0.05).")
@click.option("--seed", type=int, default=None, help="Training seed (default 0).")
@click.option("--preset", default=None, help="Dataset preset, e.g. 'cpu' for synth.")
@click.option("--augment-resolution", is_flag=True,
              help="Also degrade half the training images at a random scale in [1/16, 1].")
@click.option("--no-augment", is_flag=True, help="No flip/shift/brightness augmentation.")
@click.option("--resume", is_flag=True, help="Continue the run in --out where it stopped.")
@click.option("--device", default=None, help="auto (default), cpu, cuda, cuda:1, ...")
@click.option("--num-threads", type=int, default=None, help="torch CPU threads.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train_cmd(method, data, fold, epochs, out_dir, model, batch_size, lr, seed, preset,
              augment_resolution, no_augment, resume, device, num_threads, no_progress) -> None:
    """Train one method (paper notation) and write a checkpoint folder."""
    from lowres.train import TrainConfig, load_checkpoint, train

    given = {
        "epochs": epochs, "model": model, "batch_size": batch_size, "lr": lr, "seed": seed,
        "preset": preset, "device": device, "num_threads": num_threads,
    }
    config = TrainConfig(
        method=method, data=data, fold=fold, augment=not no_augment,
        augment_resolution=augment_resolution,
        **{k: v for k, v in given.items() if v is not None},
    )
    path = train(config, out_dir, resume=resume, progress=not no_progress)
    side = load_checkpoint(path).sidecar
    metrics = side.get("metrics", {})

    def num(key: str) -> str:
        value = metrics.get(key)
        return "n/a" if value is None else f"{value:.4f}"

    click.echo(
        f"trained {side['method']} on {side['data']['name']} fold {side['data']['fold']}: "
        f"train acc {num('train_acc')}, wall {metrics.get('wall_seconds', 0.0):.1f} s, "
        f"norm CV train {num('train_norm_cv')} / held-out {num('test_norm_cv')}, "
        f"checkpoint {path}"
    )


@cli.group("data")
def data_group() -> None:
    """Datasets: list what is available, inspect one, draw a contact sheet."""


@data_group.command("list")
def data_list_cmd() -> None:
    """List builtin datasets and manifests (data_manifests/, $LOWRES_MANIFESTS)."""
    from lowres.data import list_datasets

    rows = list_datasets()
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        state = "available" if r["available"] else "missing  "
        click.echo(f"{r['name']:<{width}}  {r['kind']:<16}  {state}  {r['description']}")


@data_group.command("show")
@click.argument("name")
@click.option("--sheet", type=click.Path(dir_okay=False), default=None,
              help="Write a contact-sheet PNG here (rows = identities).")
@click.option("--ids", type=click.IntRange(min=1), default=8, show_default=True,
              help="Identities (rows) on the sheet.")
@click.option("--per-id", type=click.IntRange(min=1), default=6, show_default=True,
              help="Images per identity (columns) on the sheet.")
@click.option("--fold", type=click.IntRange(min=0), default=0, show_default=True,
              help="Fold described in the protocol summary.")
@click.option("--seed", type=int, default=0, show_default=True, help="Fold shuffle / synth seed.")
@click.option("--preset", default=None, help="Dataset preset (synth).")
def data_show_cmd(name, sheet, ids, per_id, fold, seed, preset) -> None:
    """Describe dataset NAME (builtin, manifest name, or path to a .toml)."""
    from lowres.data import get_split, load_dataset
    from lowres.data.registry import has_own_split, protocol_summary

    ds = load_dataset(name, seed=seed, preset=preset)
    split = get_split(name, fold=fold, seed=seed, preset=preset) if has_own_split(name) else None
    summary = protocol_summary(ds, fold=fold, seed=seed, split=split)
    h, w = ds.image_size
    meta = ds.meta
    lines = [
        f"dataset     {ds.name}",
        f"identities  {ds.num_identities}",
        f"images      {len(ds)}",
        f"image size  {h}x{w} (HxW)",
        f"channels    {ds.channels}",
    ]
    for key in ("alignment", "credit", "licence", "source"):
        if meta.get(key):
            lines.append(f"{key:<11} {meta[key]}")
    lines += [f"protocol    {line}" for line in summary]
    if sheet:
        from lowres.data.sheet import write_contact_sheet

        write_contact_sheet(ds, sheet, ids=ids, per_id=per_id)
        lines.append(f"sheet       {sheet}")
    click.echo("\n".join(lines))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="lowres")


if __name__ == "__main__":
    main()
