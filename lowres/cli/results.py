"""``lowres plot`` (redraw a sweep's figures) and ``lowres check`` (the regression check)."""

from __future__ import annotations

import sys

import click

from lowres.cli.group import cli


@cli.command("plot")
@click.argument("run_dir", type=click.Path(file_okay=False))
def plot_cmd(run_dir) -> None:
    """Draw the figures of sweep folder RUN_DIR into RUN_DIR/figures (PNG + PDF)."""
    from lowres.plots import plot_run

    for path in plot_run(run_dir, force=True):
        click.echo(str(path))


@cli.command("check")
@click.argument("run_dir", type=click.Path())
@click.option(
    "--baseline",
    required=True,
    type=click.Path(dir_okay=False),
    help="Baseline CSV written by `lowres sweep --save-baseline`.",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=0.02,
    show_default=True,
    help="Absolute slack per metric before a cell counts as regressed.",
)
def check_cmd(run_dir, baseline, tolerance) -> None:
    """Compare RUN_DIR/results.csv with a baseline; exit 1 if any cell regressed."""
    from lowres.check import check_run

    result = check_run(run_dir, baseline, tolerance=tolerance)
    click.echo(result.report())
    if not result.ok:
        sys.exit(1)
