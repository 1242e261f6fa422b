"""How to read each figure a sweep or a study draws: the README's explanations, in one place,
as the captions of ``lowres report`` (keyed by the figure's file stem)."""

from __future__ import annotations

FIGURE_CAPTIONS: dict[str, str] = {
    "tar_vs_resolution": (
        "Each panel is one false-accept rate. The x axis is the probe face width in pixels (log "
        "scale); each probe is compared with a clean gallery face of every other test image "
        "(pairing 'probe'; with pairing 'both' both faces are degraded). The y axis is the "
        "true-accept rate at the exact threshold whose FAR is at most the target; bands are 95% "
        "Clopper-Pearson intervals on the genuine pairs (with several seeds: the seed mean and a "
        "bootstrap over identities and seeds). Each loss family has one colour: the base loss "
        "dashed and light, its +R variant solid and dark; grey dots are cosine on raw pixels."
    ),
    "ring_margin": (
        "TAR(X+R) minus TAR(X) per FAR and probe width, with a 95% paired bootstrap band over "
        "test identities (and seeds) and a zero line: a band wholly above zero is a margin for "
        "Ring loss, one that crosses zero is no evidence of one."
    ),
    "roc": (
        "One panel per probe width: TAR against FAR on a log axis, every model; curves that "
        "fall together as the panels go to smaller widths show the loss of resolution."
    ),
    "norms": (
        "Feature-norm distributions per probe width and model, each divided by the model's "
        "mean clean norm (1 = clean level): the paper's motivation asks whether small faces "
        "get small features, and whether Ring loss holds them near R."
    ),
    "genuine_cosine": (
        "Mean cosine of the genuine pairs against the probe width: how far a person's degraded "
        "probe drifts from their clean gallery face."
    ),
    "training": (
        "Each model's held-out TAR at FAR 1e-2, training accuracy and loss per epoch, from the "
        "models' logs (training.csv); a held-out curve still rising at the last epoch says the "
        "model was measured before its plateau."
    ),
    "scores": (
        "Genuine (model colour) and impostor (grey) cosine distributions, one row per model "
        "and one column per probe width (128-bin histograms of every pair), with the threshold "
        "fixed on clean pairs at FAR 1e-2 dashed, d' and the share of genuine pairs that clean "
        "threshold rejects at each width. Shrinking the probe moves the genuine scores down into "
        "the impostors."
    ),
    "quality_edc": (
        "The feature norm as a quality score. For each degraded width, that width's probes are "
        "pooled with the clean probes; with the threshold fixed on clean pairs at FAR 1e-2, the "
        "curve is the FNMR of the genuine pairs left after discarding the lowest-norm fraction "
        "of probes, 0 to 50% (the error-versus-discard characteristic, EDC). Thin dashed lines "
        "discard by the true probe width instead (the oracle). A norm that knows which faces "
        "will fail falls as fast as its oracle; a flat curve means the norm carries no such "
        "signal."
    ),
    "rank1_vs_resolution": (
        "Closed-set identification (--protocol identification): each identity's first test "
        "image is the clean gallery, its other images are degraded probes searched against the "
        "whole gallery. One panel per rank k: the share of probes whose identity is among the "
        "top k, ties counted against the probe; bands are 95% Clopper-Pearson intervals."
    ),
    "cmc": (
        "Cumulative match characteristic, one panel per probe width: the share of probes whose "
        "identity is within the top k gallery identities, against k (log axis)."
    ),
    "tpir_vs_resolution": (
        "Open-set identification (--protocol open-set): half the test identities are enrolled "
        "(first image as gallery); the others' images are non-mated searches. One panel per "
        "FPIR target: the share of mated searches whose mate is at rank 1 above the threshold "
        "that keeps the non-mated alarm rate at most the target; 95% Clopper-Pearson bands."
    ),
    "ring_margin_rank1": (
        "Ring-loss margin on rank-1: rank-1 of each X+R model minus rank-1 of its base X at "
        "every probe width, with a 95% paired bootstrap interval over test identities (and "
        "seeds): an interval that excludes zero is a difference this test set resolves."
    ),
    "template_vs_resolution": (
        "Template 1:1 verification (--protocol template): each test identity's images cut into "
        "templates of --template-size images, a template's feature the mean of its images' "
        "L2-normalised features; every template pair scored, the probe-side template from "
        "degraded images. One panel per FAR: exact template TAR with 95% Clopper-Pearson bands."
    ),
    "ring_margin_template": (
        "Ring-loss margin on template TAR: X+R minus X per FAR and probe width, with a 95% "
        "paired bootstrap interval over test identities (and seeds)."
    ),
    "runs_overview": (
        "One column per run of the study: TAR and the Ring-loss margin against the probe width "
        "at the study's critical FAR, so the runs compare side by side."
    ),
    "budget": (
        "Clean TAR and the Ring-loss margin against the training budget (epochs), per method: "
        "a curve still rising at the largest budget has not reached its plateau."
    ),
    "norm_angle": (
        "Per model and probe width: the angle between an image's feature and the direction of "
        "its identity's other clean images, against its feature norm: does a small norm mean a "
        "feature that has left its identity?"
    ),
    "features2d": (
        "A 2-d embedding per model: the test features coloured by class, the learned R drawn "
        "as a circle for +R models (the paper's Figure 1)."
    ),
}
"""Figure stem -> how to read it (the README's "The other figures" and the studies' text)."""

STUDY_FIGURES = ("runs_overview", "budget", "norm_angle", "features2d")
"""The studies' own figures, shown after a sweep's (:data:`lowres.plots.FIGURE_STEMS`)."""
