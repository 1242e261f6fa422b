"""``lowres data list`` and ``lowres data show``: the datasets found, one inspected."""

from __future__ import annotations

import click

from lowres.cli.group import cli
from lowres.data import list_datasets, load_dataset
from lowres.data.registry import get_split_labels, has_own_split, protocol_summary
from lowres.data.synthetic import write_scale_sheet
from lowres.files import check_writable


@cli.group("data")
def data_group() -> None:
    """Datasets: list what is available, inspect one, draw a contact sheet."""


@data_group.command("list")
def data_list_cmd() -> None:
    """List builtin datasets and manifests (data_manifests/, $LOWRES_MANIFESTS)."""
    rows = list_datasets()
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        state = "available" if r["available"] else "missing  "
        click.echo(f"{r['name']:<{width}}  {r['kind']:<16}  {state}  {r['description']}")


@data_group.command("show")
@click.argument("name")
@click.option(
    "--sheet",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a contact-sheet PNG here (rows = identities).",
)
@click.option(
    "--ids",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Identities (rows) on the sheet.",
)
@click.option(
    "--per-id",
    type=click.IntRange(min=1),
    default=6,
    show_default=True,
    help="Images per identity (columns) on the sheet.",
)
@click.option(
    "--fold",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Fold described in the protocol summary.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Fold shuffle / synth seed.")
@click.option("--preset", default=None, help="Dataset preset (synth).")
def data_show_cmd(name, sheet, ids, per_id, fold, seed, preset) -> None:
    """Describe dataset NAME (builtin, manifest name, path to a .toml, .bin or train.rec)."""
    if sheet:
        check_writable(sheet, "--sheet", is_folder=False)
    ds = load_dataset(name, seed=seed, preset=preset)
    split = None
    if has_own_split(name):
        split = get_split_labels(name, fold=fold, seed=seed, preset=preset)
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
        if ds.name == "synth":
            scales = write_scale_sheet(sheet, seed=seed, fold=fold, preset=preset)
            lines.append(f"scales      {scales} (one identity at scales 1, 1/2, 1/4, 1/8, 1/16)")
    click.echo("\n".join(lines))
