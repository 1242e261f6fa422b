"""``lowres sweep`` (models x probe widths into a results folder) and ``lowres merge`` (shard
folders into one sweep); options parsed into a SweepConfig, usage errors naming the option."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from lowres.cli.group import cli
from lowres.errors import CheckpointError, ConfigError


def _split_list(ctx, param, value):
    """Comma list option -> list of stripped strings (None when not given)."""
    if value is None:
        return None
    items = [v.strip() for v in _split_top_level(value)]
    if not [v for v in items if v]:
        raise click.BadParameter("is empty; give a comma-separated list", ctx=ctx, param=param)
    if "" in items:
        raise click.BadParameter(
            f"{value!r} has an empty item; remove the extra comma", ctx=ctx, param=param
        )
    return items


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses, so 'CosFace(64,0.35),SM' stays two items."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return out


def _bad(ctx, name: str, exc: Exception):
    param = next(p for p in ctx.command.params if p.name == name)
    return click.BadParameter(str(exc), ctx=ctx, param=param)


@cli.command("sweep")
@click.option(
    "--models",
    callback=_split_list,
    default=None,
    help="Comma list of methods (paper notation, trained on demand and cached) and/or "
    "checkpoint folders and/or external models ([ts:|onnx:]FILE[(channels=..,size=HxW,"
    "mean=..,std=..,flip=..)], adapter from FILE's .adapter.json/.toml sidecar). "
    "Default: SM,SF,l2-SM(30),SM+CL,SM+R(0.01),SF+R(0.01). "
    "Raw pixels are always added as a reference.",
)
@click.option(
    "--scales",
    default=None,
    help="Fractions of the image side, e.g. 1,0.5,0.25 or 1/8 (default 1,1/2,..,1/16).",
)
@click.option("--sizes", default=None, help="Face widths in pixels instead of --scales.")
@click.option(
    "--data", default=None, help="Dataset: synth, orl, a manifest, or an InsightFace .bin path."
)
@click.option("--preset", default=None, help="Dataset preset (synth).")
@click.option(
    "--degrade",
    "degrade_text",
    default=None,
    help="Degradation chain (lowres.degrade form; default bicubic>bicubic).",
)
@click.option(
    "--pairing",
    type=click.Choice(["probe", "both"]),
    default="probe",
    show_default=True,
    help="probe: clean gallery vs degraded probe; both: both images degraded.",
)
@click.option(
    "--protocol",
    default="verification",
    show_default=True,
    help="verification: pairs (TAR@FAR); identification: closed-set search of each identity's "
    "first image as gallery (rank-1/5/10, CMC); open-set: half the identities enrolled, TPIR "
    "at FPIR = each --far; template: 1:1 TAR@FAR between templates (each identity's images cut "
    "into templates of --template-size, features pooled: mean of L2-normalised features).",
)
@click.option(
    "--template-size",
    type=int,
    default=None,
    help="Images (media) per template of --protocol template (default 2): each identity's "
    "images in index order, the remainder joining its last template.",
)
@click.option(
    "--distractors",
    default=None,
    metavar="DATASET",
    help="identification/open-set: faces of people in no gallery added to every search "
    "(synth: synthetic identities seen in no training or test split; a dataset name or "
    "manifest; a folder of images; none). Default: the dataset's own (TinyFace's "
    "Gallery_Distractor), else none.",
)
@click.option(
    "--far",
    "fars",
    default="1e-3,1e-2,1e-1",
    show_default=True,
    help="Target false-accept rates (FPIR targets with --protocol open-set).",
)
@click.option(
    "--folds",
    default=None,
    help="Identity-disjoint test folds, pooled, e.g. 0,1,2,3 for all of ORL (default: 0).",
)
@click.option(
    "--seeds",
    "--seed",
    "seeds",
    default="0",
    show_default=True,
    help="Training / degradation seeds.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Inference batch size.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="runs/default",
    show_default=True,
    help="Output folder.",
)
@click.option("--force", is_flag=True, help="Replace a folder holding a sweep with other settings.")
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Training epochs of on-demand models (default: the training default).",
)
@click.option(
    "--backbone",
    default=None,
    help="Network of on-demand models, e.g. sphere20 (default: cpunet-s).",
)
@click.option(
    "--train-data",
    default=None,
    help="Dataset the on-demand models train on, whole (e.g. casia_webface for an LFW test); "
    "default: the test dataset's other folds.",
)
@click.option(
    "--variant",
    "variants",
    multiple=True,
    metavar="NAME=METHOD[;key=value...]",
    help="A named training variant to list in --models (repeatable), e.g. "
    "'SM+aug=SM;augment_resolution=true'; keys are lowres train settings.",
)
@click.option(
    "--model-cache",
    type=click.Path(file_okay=False),
    default=None,
    help="Trained-model cache (default $LOWRES_CACHE/models or ~/.cache/lowres/models).",
)
@click.option(
    "--critical", default="0.5@1e-2", show_default=True, help="Critical resolution target TAR@FAR."
)
@click.option(
    "--save-baseline",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write a `lowres check` baseline CSV here.",
)
@click.option("--no-plot", is_flag=True, help="Skip the figures and the report.")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Models trained in parallel (default: 2 on a multi-core CPU, 1 on a GPU).",
)
@click.option(
    "--shard",
    default=None,
    metavar="I/N|auto",
    help="Compute only shard I of N (whole models per fold and seed, round robin) into --out; "
    "join the shard folders with `lowres merge`. auto: I/N of this SLURM array task "
    "(SLURM_ARRAY_TASK_ID/COUNT) or torchrun process (RANK/WORLD_SIZE).",
)
@click.pass_context
def sweep_cmd(ctx, **opts) -> None:
    """Evaluate models x probe resolutions into OUT/results.csv, figures and provenance."""
    from lowres import sweep as S

    config = _sweep_config(ctx, opts)
    try:
        result = S.run_sweep(config)
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted: finished cells are kept in {opts['out']}/cells; rerun the same "
            "command to resume",
            err=True,
        )
        sys.exit(130)
    _echo_sweep(result, config, opts["save_baseline"])


def _parsed(ctx, name, fn, *args):
    """``fn(*args)``, a bad value reported as click's usage error naming option ``name``."""
    try:
        return fn(*args)
    except (ConfigError, ValueError) as exc:
        raise _bad(ctx, name, exc) from None


def _sweep_grid(ctx, opts) -> dict:
    """--scales/--sizes, --far, --critical and --shard, parsed and checked."""
    from lowres import shards
    from lowres import sweep as S

    scales, sizes = opts["scales"], opts["sizes"]
    scale_values = (
        _parsed(ctx, "scales", S.parse_float_list, scales, "--scales")
        if scales is not None
        else None
    )
    if scale_values is not None:
        _parsed(ctx, "scales", S.validate_scales, scale_values)
    size_values = None
    if sizes is not None:
        size_values = _parsed(ctx, "sizes", S.parse_int_list, sizes, "--sizes")
    # The library's own checks, reported here as usage errors that name the option.
    _parsed(ctx, "sizes", S.validate_grid_options, scale_values, size_values)
    far_values = _parsed(ctx, "fars", S.parse_float_list, opts["fars"], "--far")
    _parsed(ctx, "fars", S.validate_fars, far_values)
    try:
        crit_tar, crit_far = (float(v) for v in opts["critical"].split("@"))
    except ValueError:
        raise _bad(ctx, "critical", ValueError("use TAR@FAR, e.g. 0.5@1e-2")) from None
    shard = opts["shard"]
    shard_value = _parsed(ctx, "shard", shards.parse_shard, shard) if shard is not None else None
    if shard_value is not None and opts["save_baseline"]:
        raise click.UsageError("--save-baseline needs the whole sweep; give it to lowres merge")
    return {
        "scales": scale_values,
        "sizes": size_values,
        "fars": far_values,
        "critical_tar": crit_tar,
        "critical_far": crit_far,
        "shard": shard_value,
    }


def _sweep_models(ctx, opts) -> dict:
    """--models and --variant, resolved (every model checked before anything runs)."""
    from lowres import sweep as S

    models = opts["models"]
    model_list = tuple(models) if models is not None else S.DEFAULT_MODELS
    variant_pairs = [_parsed(ctx, "variants", S.parse_variant, v) for v in opts["variants"]]
    names = [name for name, _ in variant_pairs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise _bad(ctx, "variants", ValueError(f"variant {twice[0]!r} is defined twice; keep one"))
    variant_map = dict(variant_pairs) or None
    try:
        S.resolve_models(model_list, variant_map)
    except (ConfigError, CheckpointError) as exc:
        raise _bad(ctx, "models", exc) from None
    return {"models": model_list, "variants": variant_map}


def _sweep_config(ctx, opts):
    """The SweepConfig of ``lowres sweep``'s options, every value checked."""
    from lowres import sweep as S

    grid = _sweep_grid(ctx, opts)
    models = _sweep_models(ctx, opts)
    folds = opts["folds"]
    return S.SweepConfig(
        **models,
        **grid,
        data=S.DEFAULT_DATA if opts["data"] is None else opts["data"],
        preset=opts["preset"],
        degrade=opts["degrade_text"],
        pairing=opts["pairing"],
        protocol=opts["protocol"],
        template_size=opts["template_size"],
        distractors=opts["distractors"],
        folds=(
            _parsed(ctx, "folds", S.parse_int_list, folds, "--folds")
            if folds is not None
            else S.DEFAULT_FOLDS
        ),
        seeds=_parsed(ctx, "seeds", S.parse_int_list, opts["seeds"], "--seeds"),
        device=opts["device"],
        batch_size=opts["batch_size"],
        out=Path(opts["out"]),
        force=opts["force"],
        epochs=opts["epochs"],
        backbone=opts["backbone"],
        train_data=opts["train_data"],
        model_cache=Path(opts["model_cache"]) if opts["model_cache"] else None,
        plot=not opts["no_plot"],
        save_baseline=Path(opts["save_baseline"]) if opts["save_baseline"] else None,
        jobs=opts["jobs"],
    )


def _echo_sweep(result, config, save_baseline) -> None:
    """The sweep's summary table and timings (a shard: what it did and how to merge)."""
    from lowres import sweep as S

    t = result.timings
    if config.shard is not None:
        i, n = config.shard
        click.echo(
            f"shard {i}/{n}: {result.computed} cells computed, {result.reused} reused in "
            f"{t['total']:.1f} s into {result.out}; when every shard is done, join them with "
            f"`lowres merge OUT SHARD_DIR...`"
        )
        return
    crit = {"tar": config.critical_tar, "far": config.critical_far}
    click.echo(S.format_summary(result.table, 1e-2, crit))
    click.echo(
        f"\n{result.computed} cells computed, {result.reused} reused in {t['total']:.1f} s "
        f"(train {t['train']:.1f}, embed {t['embed']:.1f}, score {t['score']:.1f}, "
        f"bootstrap {t.get('bootstrap', 0.0):.1f}, plot {t.get('plot', 0.0):.1f}, "
        f"report {t.get('report', 0.0):.1f}); results in {result.out}/results.csv"
        + _report_note(result.out)
    )
    if save_baseline:
        click.echo(f"baseline written to {save_baseline}")


def _report_note(out) -> str:
    """Where the report is, when the run wrote one."""
    from lowres.report import REPORT_FILE

    path = out / REPORT_FILE
    return f", the report in {path}" if path.is_file() else ""


@cli.command("merge")
@click.argument("out", type=click.Path(file_okay=False))
@click.argument("shard_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Replace a folder holding a sweep with other settings.")
@click.option("--no-plot", is_flag=True, help="Skip the figures and the report.")
@click.option(
    "--save-baseline",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write a `lowres check` baseline CSV here.",
)
def merge_cmd(out, shard_dirs, force, no_plot, save_baseline) -> None:
    """Join the folders of `lowres sweep --shard I/N` runs into OUT, as one unsharded sweep."""
    from lowres import sweep as S

    result = S.merge_shards(
        out, shard_dirs, plot=not no_plot, save_baseline=save_baseline, force=force
    )
    crit = json.loads((result.out / "provenance.json").read_text(encoding="utf-8"))["critical"]
    click.echo(S.format_summary(result.table, 1e-2, crit))
    click.echo(
        f"\nmerged {result.reused} cells from {len(shard_dirs)} shard folders in "
        f"{result.timings['total']:.1f} s; results in {result.out}/results.csv"
        + _report_note(result.out)
    )
    if save_baseline:
        click.echo(f"baseline written to {save_baseline}")
