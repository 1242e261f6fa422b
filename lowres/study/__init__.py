"""Studies: one TOML file under ``experiments/`` per paper figure or experiment, run by
``lowres run experiments/NAME.toml`` into ``runs/NAME/``.

A study names the models it needs (paper notation plus training settings), trains them through
:func:`lowres.train.train` into the shared model cache (``<cache>/<TrainConfig.hash()>/``, the
layout the sweep uses, so a study and a sweep share trained models), evaluates them and draws
its figures. Rerunning a study retrains nothing and recomputes no sweep cell that exists, so an
interrupted study resumes where it stopped.

Schema (every key is checked; an unknown section or key is a ConfigError naming the valid ones)::

    [study]
    kind = "features2d"         # features2d | sweep | norms
    title = "..."               # figure title (default: the file stem)
    description = "..."         # free text, copied into provenance.json
    out = "runs/NAME"           # default runs/<file stem>, relative to the working directory
    model_cache = "..."         # default $LOWRES_CACHE/models or ~/.cache/lowres/models
    jobs = 1                    # models trained in parallel (one torch thread each when > 1)
    device = "auto"

    [train]                     # lowres.train.TrainConfig fields shared by every model
    model = "lenetpp"           # kinds sweep/norms: data, preset, model and epochs go to the
    data = "mnist"              # sweep; any other field becomes a training override of every
                                # model (split_seed and train_split are the sweep's)

    [[models]]                  # one table per model; at least one
    method = "SM+R(0.1)"        # paper notation (lowres.methods)
    # or: external = "dlib(size=112x92)"  (kinds sweep/norms: a pretrained model, any
    #     --models entry of lowres.external; its label is the model id the sweep gives it)
    label = "SM+R(0.1)+aug"     # optional model id, default the method
    augment_resolution = true   # any TrainConfig field overriding [train] for this model
                                # (kinds sweep/norms: not data/preset; a model with overrides
                                # is a named sweep variant, see lowres.sweep.SweepConfig)

    [evaluate]                  # kind features2d
    folds = [0]                 # test folds (mnist: 5 fixed folds of 1000 images)
    seeds = [0]                 # training seeds
    max_points = 1000           # test points drawn per scatter panel

    [sweep]                     # kinds sweep/norms: lowres.sweep.SweepConfig fields
    scales = [1, 0.5, 0.25]     # or sizes = [...]; fars, pairing, degrade, folds, seeds,
                                # batch_size, critical_tar, critical_far, n_boot, boot_seed
    data = "lfw_bin"            # the test set when it differs from [train] data: the models
                                # then train on the whole [train] data (train_split = "all")

    [[runs]]                    # kind sweep, optional: one sweep per run into OUT/<name>/
    name = "tex2"               # folder-safe
    description = "..."
    preset = "cpu:texture_cycles=2"   # and/or data = "orl": what the run trains and tests on
    folds = [0, 1, 2, 3]        # any [sweep] key
    external = ["dlib(size=112x92)"]  # optional: external models of this run only, after
                                # the study's [[models]] (a real-face recognizer on ORL, not
                                # on synth)

``lowres run FILE --set SECTION.KEY=VALUE`` (repeatable) changes a setting without editing the
file (VALUE in TOML syntax); the overrides are kept in provenance.json.

Kinds:

- ``features2d`` (paper Figure 1): a 2-d embedding per model; a scatter of the test features
  coloured by class, the learned R drawn as a circle for ``+R`` models; test classification
  accuracy from the head's logits (eval mode) in ``results.csv``; the features in
  ``features.csv``.
- ``sweep``: :func:`lowres.sweep.run_sweep` into ``OUT/`` (its table, figures, provenance),
  plus ``table.md``: the paper's layout, methods x FAR at each probe width with intervals, and
  the Ring margins. With ``[[runs]]``: one sweep per run in ``OUT/<run>/``, the combined
  ``OUT/results.csv`` (a ``run`` column first), ``OUT/table.md`` with a section per run and the
  figure ``runs_overview`` (TAR and Ring margin vs probe width, one column per run).
- ``norms``: the sweep (its per-image norms per scale), plus the angular spread of each
  person's features: the angle between an image's feature at each scale and the direction of
  its identity's *other* clean images (the sum of their unit features: leave-one-out, so an
  image is never compared with itself), against its norm. ``angles.csv`` (per image) and
  ``norm_angle.csv`` (per model x scale) and the figure ``norm_angle``.

Modules: :mod:`~lowres.study.schema` (the file, checked), :mod:`~lowres.study.training` (the
models through the shared cache), one module per kind (:mod:`~lowres.study.features2d`,
:mod:`~lowres.study.sweeps`, :mod:`~lowres.study.norms`) and :mod:`~lowres.study.run`, which
picks the kind's runner from :data:`~lowres.study.run.RUNNERS` and writes the provenance.

Every kind writes ``OUT/provenance.json`` (study file and its sha256, parsed config, versions,
git revision, seeds, timings, model hashes and checkpoints); ``features2d`` and ``norms`` write
their own figures into ``OUT/figures/`` as PNG and PDF.
"""

from lowres.study.norms import angle_to_identity, norm_angle_tables
from lowres.study.run import RUNNERS, run_study
from lowres.study.schema import (
    KINDS,
    ModelItem,
    Study,
    StudyResult,
    apply_overrides,
    list_studies,
    load_study,
)
from lowres.study.training import cached_train

__all__ = [
    "KINDS",
    "RUNNERS",
    "ModelItem",
    "Study",
    "StudyResult",
    "angle_to_identity",
    "apply_overrides",
    "cached_train",
    "list_studies",
    "load_study",
    "norm_angle_tables",
    "run_study",
]
