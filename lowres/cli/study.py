"""``lowres run``: a study file from ``experiments/``."""

from __future__ import annotations

import click

from lowres.cli.group import cli


@cli.command("run")
@click.argument("study_file", required=False, type=click.Path(dir_okay=False))
@click.option("--list", "list_only", is_flag=True, help="List the studies in experiments/.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Output folder (default: the study's, runs/NAME).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Models trained in parallel, one torch thread each (default: the study's).",
)
@click.option("--force", is_flag=True, help="Replace a sweep folder made with other settings.")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a setting of the study file (repeatable), e.g. --set train.data=my_faces "
    "--set sweep.folds=[0].",
)
def run_cmd(study_file, list_only, out, jobs, force, settings) -> None:
    """Run a study (experiments/NAME.toml): train what it needs, evaluate, draw its figures."""
    from lowres.study import list_studies, load_study, run_study

    if list_only:
        for s in list_studies():
            if s["error"]:
                click.echo(f"{s['path']:<36} INVALID: {s['error']}")
            else:
                click.echo(f"{s['path']:<36} {s['kind']:<10} {', '.join(s['models'])}")
        return
    if study_file is None:
        raise click.UsageError("give a study file (experiments/NAME.toml) or --list")
    study = load_study(study_file, overrides=settings)
    result = run_study(study, out=out, jobs=jobs, force=force)
    click.echo(result.summary)
    report = result.out / "report.html"
    click.echo(
        f"wrote {result.out} in {result.timings['total']:.1f} s "
        f"({len(result.figures)} figure files"
        + (f", the report in {report}" if report.is_file() else "")
        + ")"
    )
