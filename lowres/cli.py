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
    """Click group that turns library errors, and click's own usage errors in a command's
    options, into one clear line and exit code 2 (click would print a usage block first)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LowresError as exc:
            raise BadInput(str(exc)) from None
        except OSError as exc:
            # A path the commands could not check ahead (a read-only disk, a full one, a file
            # removed meanwhile): still one line, not a traceback.
            if exc.filename is None:
                raise
            raise BadInput(
                f"{exc.strerror or exc}: {exc.filename}; check the path, its permissions and the "
                "free disk space"
            ) from None
        except click.UsageError as exc:
            where = ctx.command_path
            if exc.ctx is not None and exc.ctx is not ctx:
                where = exc.ctx.command_path
            elif ctx.invoked_subcommand:
                where = f"{where} {ctx.invoked_subcommand}"
            raise BadInput(f"{exc.format_message()} ({where} -h lists the options)") from None


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
) -> None:
    """Train one method (paper notation) and write a checkpoint folder.

    Data parallel: torchrun --nproc_per_node=N -m lowres train ... (--batch-size is the
    global batch over the N processes; rank 0 writes the checkpoint).
    """
    from lowres.distributed import process_rank
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
    from lowres.data import load_dataset
    from lowres.data.registry import get_split_labels, has_own_split, protocol_summary

    if sheet:
        from lowres.files import check_writable

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
            from lowres.data.synthetic import write_scale_sheet

            scales = write_scale_sheet(sheet, seed=seed, fold=fold, preset=preset)
            lines.append(f"scales      {scales} (one identity at scales 1, 1/2, 1/4, 1/8, 1/16)")
    click.echo("\n".join(lines))


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
    "--far", "fars", default="1e-3,1e-2,1e-1", show_default=True, help="Target false-accept rates."
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
@click.option("--no-plot", is_flag=True, help="Skip the figures.")
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
    from lowres.errors import ConfigError

    try:
        return fn(*args)
    except (ConfigError, ValueError) as exc:
        raise _bad(ctx, name, exc) from None


def _sweep_grid(ctx, opts) -> dict:
    """--scales/--sizes, --far, --critical and --shard, parsed and checked."""
    from lowres import shards
    from lowres import sweep as S

    scales, sizes = opts["scales"], opts["sizes"]
    if scales is not None and sizes is not None:
        raise click.UsageError("give --scales or --sizes, not both")
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
        if 0 in size_values:
            raise _bad(ctx, "sizes", ValueError("sizes must be >= 1 pixel"))
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
    from lowres.errors import CheckpointError, ConfigError

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
    from pathlib import Path

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
        f"bootstrap {t.get('bootstrap', 0.0):.1f}, plot {t.get('plot', 0.0):.1f}); "
        f"results in {result.out}/results.csv"
    )
    if save_baseline:
        click.echo(f"baseline written to {save_baseline}")


@cli.command("merge")
@click.argument("out", type=click.Path(file_okay=False))
@click.argument("shard_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Replace a folder holding a sweep with other settings.")
@click.option("--no-plot", is_flag=True, help="Skip the figures.")
@click.option(
    "--save-baseline",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write a `lowres check` baseline CSV here.",
)
def merge_cmd(out, shard_dirs, force, no_plot, save_baseline) -> None:
    """Join the folders of `lowres sweep --shard I/N` runs into OUT, as one unsharded sweep."""
    import json

    from lowres import sweep as S

    result = S.merge_shards(
        out, shard_dirs, plot=not no_plot, save_baseline=save_baseline, force=force
    )
    crit = json.loads((result.out / "provenance.json").read_text(encoding="utf-8"))["critical"]
    click.echo(S.format_summary(result.table, 1e-2, crit))
    click.echo(
        f"\nmerged {result.reused} cells from {len(shard_dirs)} shard folders in "
        f"{result.timings['total']:.1f} s; results in {result.out}/results.csv"
    )
    if save_baseline:
        click.echo(f"baseline written to {save_baseline}")


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


@cli.command("export")
@click.argument("ckpt_dir", type=click.Path())
@click.argument("out", type=click.Path())
def export_cmd(ckpt_dir, out) -> None:
    """Export checkpoint CKPT_DIR to TorchScript OUT (e.g. model.pt) + OUT's adapter sidecar.

    The archive and OUT.adapter.json (suffix replaced) go into `lowres sweep --models` as an
    external model, next to the checkpoint itself.
    """
    from lowres.external import export_torchscript

    archive, sidecar = export_torchscript(ckpt_dir, out)
    click.echo(f"wrote {archive} and {sidecar}")


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
    click.echo(
        f"wrote {result.out} in {result.timings['total']:.1f} s "
        f"({len(result.figures)} figure files)"
    )


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="lowres")


if __name__ == "__main__":
    main()
