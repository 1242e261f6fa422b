"""``lowres plot`` (redraw a sweep's figures), ``lowres check`` (the regression check) and
``lowres report`` (one self-contained HTML page of a sweep or study)."""

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


@cli.command("report")
@click.argument("run_dir", type=click.Path())
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="The HTML file to write (default RUN_DIR/report.html).",
)
@click.option(
    "--baseline",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also show `lowres check` against this baseline CSV, regressed cells highlighted.",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=0.02,
    show_default=True,
    help="Absolute slack per metric for --baseline.",
)
def report_cmd(run_dir, out, baseline, tolerance) -> None:
    """Write one self-contained HTML page of sweep or study folder RUN_DIR (no external
    requests: figures inline; reads offline, prints to PDF)."""
    from lowres.report import write_report

    written = write_report(run_dir, out, baseline=baseline, tolerance=tolerance)
    click.echo(f"wrote {written.path} ({written.size / 1e6:.2f} MB) in {written.seconds:.1f} s")
