"""Training loop, checkpoints and `lowres train`: determinism, exact resume, NaN guard, safety.

Runs on ORL fold 0 (300 training images) with cpunet at a 28x24 input and a 16-d embedding, so
an epoch takes about a second.
"""

from __future__ import annotations

import csv
import json
import os
import pickle

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from lowres import checkpoint as ckpt
from lowres.cli import cli
from lowres.errors import CheckpointError, ConfigError, TrainingError
from lowres.files import sha256_file
from lowres.losses import MethodLoss
from lowres.train import (
    TrainConfig,
    augment_batch,
    build_augmentation,
    load_checkpoint,
    random_resolution,
    resolve_milestones,
    train,
)

TINY = {
    "model": "cpunet",
    "data": "orl",
    "input_size": (28, 24),
    "embed_dim": 16,
    "batch_size": 32,
    "lr": 0.05,
    "num_threads": 1,
    "device": "cpu",
}

RECIPE2 = {"augment_backend": "albumentations", "channels_last": False, "auto_steps": 1000}
"""The settings that reproduce models trained before these two existed (training format 2)."""


def tiny(method: str = "SF+R(0.01)", **overrides) -> TrainConfig:
    return TrainConfig(method=method, **{**TINY, **overrides})


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / ckpt.WEIGHTS_FILE))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished 2-epoch SM+CL run shared by the read-only tests."""
    out = tmp_path_factory.mktemp("trained")
    train(tiny("SM+CL", epochs=2), out, progress=False)
    return out


# --------------------------------------------------------------------------------------------
# config


def test_config_hash_is_stable_and_ignores_execution_fields():
    a = tiny(epochs=3)
    assert a.hash() == tiny(epochs=3).hash()
    assert a.hash() == tiny(epochs=3, device="cuda", num_threads=4, amp=False).hash()
    assert a.hash() == tiny(epochs=3, loader_workers=2, compile=True).hash()
    assert a.hash() != tiny(epochs=4).hash()
    assert a.hash() != tiny(epochs=3, seed=1).hash()
    assert TrainConfig.from_dict(json.loads(json.dumps(a.to_dict()))).hash() == a.hash()
    assert tiny(augment_resolution=True).augment_resolution == [1 / 16, 1.0, 0.5]


def test_schedule_fields_keep_old_hashes_and_change_new_ones():
    # The previous defaults (cpunet, batch 32, lr 0.05, step schedule) written out: the hash
    # the code before these fields existed gave this config (a cached model keeps its key).
    old = TrainConfig(
        method="SM",
        model="cpunet",
        batch_size=32,
        schedule="step",
        warmup=0.0,
        **RECIPE2,
    )
    assert old.lr == 0.05
    assert old.hash() == "d6c89b44eca1b883"
    # The 12-epoch recipe before the batched augmentation and CPU channels_last (the
    # training-length study's models): the hash the code of that time gave.
    assert TrainConfig(method="SM", val_identities=100, **RECIPE2).hash() == "7a60446ec8d2891e"
    assert TrainConfig(method="SM", val_identities=100).hash() != "7a60446ec8d2891e"
    assert tiny(channels_last=False).hash() != tiny().hash()
    assert tiny(augment_backend="albumentations").hash() != tiny().hash()
    # Settings a config does not use leave its hash alone: auto_steps beside explicit epochs,
    # the augmentation backend without augmentation.
    assert tiny(epochs=3, auto_steps=5).hash() == tiny(epochs=3).hash()
    assert tiny(auto_steps=5).hash() != tiny().hash()
    no_aug = tiny(augment=False)
    assert tiny(augment=False, augment_backend="albumentations").hash() == no_aug.hash()
    step = tiny(schedule="step", warmup=0.0)
    assert step.hash() != tiny(schedule="cosine", warmup=0.0).hash()
    assert step.hash() != tiny(schedule="step", warmup=0.1).hash()


def test_lr_schedule_per_step_matches_the_formula():
    """The lr the optimizer used at each step against the closed form, written out here."""
    import math

    from lowres.train import lr_factor

    total, warm = 40, 4
    for step in range(total):
        want = (
            (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / 36))
        )
        assert lr_factor(step, total, schedule="cosine", warmup=0.1) == pytest.approx(want)
    assert [lr_factor(s, 40, milestones=(20, 30)) for s in (19, 20, 29, 30)] == pytest.approx(
        [1, 0.1, 0.1, 0.01]
    )
    assert lr_factor(0, 40, milestones=(20,), warmup=0.25) == pytest.approx(0.1)


def test_cosine_run_logs_the_scheduled_lr(tmp_path):
    import math

    train(tiny("SM", epochs=3, schedule="cosine", warmup=0.1), tmp_path, progress=False)
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    steps = 300 // 32
    total, warm = 3 * steps, round(0.1 * 3 * steps)
    for row in rows:
        done = int(row["epoch"]) * steps  # the lr after the epoch's last step
        want = 0.05 * 0.5 * (1 + math.cos(math.pi * (done - warm) / (total - warm)))
        assert float(row["lr"]) == pytest.approx(want, abs=1e-12)


def test_validation_figure_equals_a_naive_recount(tmp_path):
    """val_tar in log.csv against a brute-force TAR at FAR 1e-2 over the held-out identities'
    clean all-vs-all pairs, recomputed from the saved model."""
    import numpy as np

    from lowres.train import VAL_FAR, clean_features, hold_out_identities, load_split

    config = tiny("SM", epochs=2, val_identities=6)
    train(config, tmp_path, progress=False)
    with open(tmp_path / "log.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    train_set, _ = load_split(config)
    kept, val = hold_out_identities(train_set, 6, config.split_seed)
    assert val.num_identities == 6 and kept.num_identities == train_set.num_identities - 6

    # Labels are renumbered in each part: disjointness is checked on the faces themselves.
    def faces(part):
        return {bytes(img.numpy().tobytes()) for img in part.images}

    assert len(faces(val)) == 60 and not faces(val) & faces(kept)
    loaded = load_checkpoint(tmp_path)
    feats = clean_features(loaded.model, val.images, loaded.adapter, torch.device("cpu"))
    feats = torch.nn.functional.normalize(feats.double(), dim=1).numpy()
    labels = val.labels.numpy()
    gen, imp = [], []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            (gen if labels[i] == labels[j] else imp).append(float(feats[i] @ feats[j]))
    imp_sorted = sorted(imp, reverse=True)
    k = int(np.floor(VAL_FAR * len(imp)))  # at most k impostors may pass
    # Accept iff score > the (k+1)-th highest impostor score (ties pessimistic).
    cut = imp_sorted[k]
    want = sum(g > cut for g in gen) / len(gen)
    assert float(last["val_tar"]) == pytest.approx(want, abs=1.5 / len(gen))


def test_milestones_fractions_and_epochs():
    assert resolve_milestones((0.5, 0.75), 40, 9) == [180, 270]
    assert resolve_milestones((10, 15), 20, 9) == [90, 135]
    with pytest.raises(ConfigError):
        resolve_milestones((0.5, 3), 10, 9)


@pytest.mark.parametrize(
    "bad",
    [
        {"epochs": 0},
        {"lr": -1.0},
        {"batch_size": 1},
        {"augment_resolution": [0.5, 0.1]},
        {"channels": 2},
        {"milestones": (0.5, 2.5)},
        {"schedule": "linear"},
        {"warmup": 0.6},
        {"warmup": True},
    ],
)
def test_bad_config_is_config_error(bad):
    with pytest.raises(ConfigError):
        tiny(**bad)


# --------------------------------------------------------------------------------------------
# augmentation


def test_augmentation_is_seeded_per_batch():
    images = torch.randint(0, 256, (6, 1, 28, 24), dtype=torch.uint8)
    pipe = build_augmentation()
    a = augment_batch(images, pipe, 11)
    assert a.dtype == torch.uint8 and a.shape == images.shape
    assert torch.equal(a, augment_batch(images, build_augmentation(), 11))
    assert not torch.equal(a, augment_batch(images, pipe, 12))


def test_random_resolution_equals_per_image_degrade():
    from lowres.degrade import DEFAULT, degrade

    images = torch.rand(16, 1, 32, 28)
    out = random_resolution(images, 1 / 16, 1.0, 0.7, DEFAULT, torch.Generator().manual_seed(3))
    # Replay the draws and degrade image by image: the grouped path must equal it.
    gen = torch.Generator().manual_seed(3)
    chosen = torch.rand(16, generator=gen) < 0.7
    u = torch.rand(16, generator=gen, dtype=torch.float64)
    scales = torch.exp(torch.log(torch.tensor(1 / 16)) * (1 - u))
    widths = torch.clamp(torch.round(scales * 28), min=1).long()
    for i in range(16):
        expect = images[i : i + 1]
        if chosen[i]:
            expect = degrade(expect, None, DEFAULT, size_px=int(widths[i]))
        torch.testing.assert_close(out[i : i + 1], expect, rtol=0, atol=1e-6)
    assert chosen.any() and not chosen.all()


# --------------------------------------------------------------------------------------------
# determinism and resume


def test_same_seed_gives_bit_identical_weights(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    train(tiny("SM+R(0.01)", epochs=1), a, progress=False, max_steps=5)
    train(tiny("SM+R(0.01)", epochs=1), b, progress=False, max_steps=5)
    train(tiny("SM+R(0.01)", epochs=1, seed=1), c, progress=False, max_steps=5)
    assert (a / ckpt.WEIGHTS_FILE).read_bytes() == (b / ckpt.WEIGHTS_FILE).read_bytes()
    assert (a / ckpt.WEIGHTS_FILE).read_bytes() != (c / ckpt.WEIGHTS_FILE).read_bytes()


def test_num_threads_is_restored_after_training(tmp_path):
    """A sweep embeds right after training in the same process: a leaked thread count would
    change float reduction order, and so the bits of its results, depending on what ran before."""
    before = torch.get_num_threads()
    train(
        tiny("SM", epochs=1, num_threads=max(1, before - 1) if before > 1 else 2),
        tmp_path,
        progress=False,
        max_steps=1,
    )
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("method", "epochs", "stop_epochs", "extra"),
    [
        ("SF+R(0.01)", 4, 2, {}),
        ("SM+CL", 3, 1.5, {}),
        ("SM+R(0.01)", 3, 1.5, {"schedule": "cosine", "warmup": 0.1}),
    ],
)
def test_resume_equals_uninterrupted_run(tmp_path, method, epochs, stop_epochs, extra):
    """2 epochs + resume for 2 == 4 epochs in one go, bit for bit (SF annealing, R, momentum,
    lr schedule, step or cosine with warm-up); also when stopped mid-epoch (centers, partial
    epoch statistics)."""
    config = tiny(method, epochs=epochs, milestones=(0.4, 0.8), **extra)
    straight, parted = tmp_path / "straight", tmp_path / "parted"
    train(config, straight, progress=False)
    steps_per_epoch = 300 // 32
    train(config, parted, progress=False, max_steps=int(stop_epochs * steps_per_epoch))
    side = json.loads((parted / ckpt.SIDECAR_FILE).read_text())
    assert side["complete"] is False
    train(config, parted, resume=True, progress=False)
    a, b = weights(straight), weights(parted)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bit-identical, not just close
    sa = torch.load(straight / ckpt.STATE_FILE, weights_only=True)
    sb = torch.load(parted / ckpt.STATE_FILE, weights_only=True)
    assert sa["iteration"] == sb["iteration"] == epochs * steps_per_epoch
    assert [r["loss"] for r in sa["rows"]] == [r["loss"] for r in sb["rows"]]
    # A finished run resumes to itself without training.
    before = (parted / ckpt.WEIGHTS_FILE).read_bytes()
    train(config, parted, resume=True, progress=False)
    assert (parted / ckpt.WEIGHTS_FILE).read_bytes() == before


def test_resume_with_other_settings_is_refused(trained):
    with pytest.raises(ConfigError, match="other settings"):
        train(tiny("SM+CL", epochs=3), trained, resume=True, progress=False)
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        train(tiny("SM+CL", epochs=2), trained, progress=False)


# --------------------------------------------------------------------------------------------
# checkpoint contents


def test_checkpoint_files(trained):
    loaded = load_checkpoint(trained)
    side = loaded.sidecar
    assert side["method"] == "SM+CL" and side["model"] == "cpunet"
    assert side["input_size"] == [28, 24] and side["channels"] == 1
    assert side["data"]["name"] == "orl" and side["data"]["fold"] == 0
    assert side["config_hash"] == tiny("SM+CL", epochs=2).hash()
    assert side["weights_sha256"] == sha256_file(trained / ckpt.WEIGHTS_FILE)
    assert {"torch", "numpy", "albumentations", "lowres"} <= set(side["versions"])
    assert 0 < side["metrics"]["test_norm_cv"] < 10
    assert not loaded.model.training
    assert tuple(loaded.adapter.size) == (28, 24)
    assert loaded.loss.center.centers.abs().sum() > 0  # trained centers came back
    state = torch.load(trained / ckpt.STATE_FILE, weights_only=True)
    assert state["epoch"] == 2 and state["finished"] is True
    with open(trained / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    expected = {
        "loss",
        "loss_head",
        "loss_center",
        "train_acc",
        "norm_mean",
        "norm_std",
        "R",
        "lambda_sf",
        "lr",
        "seconds",
        "iter",
    }
    assert expected <= set(rows[0])
    # Same features as the training-time model fed through the same adapter.
    from lowres.embed import adapt

    x = adapt(torch.rand(2, 1, 112, 92), loaded.adapter)
    assert loaded.model(x).shape == (2, 16)


class _Payload:
    """Pickles to ``os.system('touch MARKER')``: unpickling it would run a shell command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused_without_running(trained, tmp_path):
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(_Payload(live)))  # the payload is real: plain unpickling runs it
    assert live.exists()

    bad = tmp_path / "bad"
    bad.mkdir()
    for name in (ckpt.WEIGHTS_FILE, ckpt.SIDECAR_FILE):
        (bad / name).write_bytes((trained / name).read_bytes())
    marker = tmp_path / "pwned"
    torch.save({"epoch": 1, "evil": _Payload(marker)}, bad / ckpt.STATE_FILE)
    with pytest.raises(CheckpointError, match="refusing to load"):
        ckpt.read_state(bad / ckpt.STATE_FILE)
    with pytest.raises(CheckpointError, match="refusing to load"):
        train(tiny("SM+CL", epochs=2), bad, resume=True, progress=False)
    assert not marker.exists()


def _copy(src, dst):
    dst.mkdir()
    for name in (ckpt.WEIGHTS_FILE, ckpt.SIDECAR_FILE, ckpt.STATE_FILE):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_sidecar_mismatch_is_refused(trained, tmp_path):
    tensors = weights(trained)
    # 1) other weights under the old sidecar: sha256 differs.
    swapped = _copy(trained, tmp_path / "swapped")
    changed = dict(tensors)
    changed["loss.head.bias"] = changed["loss.head.bias"] + 1
    save_file(changed, str(swapped / ckpt.WEIGHTS_FILE))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(swapped)

    def resign(folder):
        side = json.loads((folder / ckpt.SIDECAR_FILE).read_text())
        side["weights_sha256"] = sha256_file(folder / ckpt.WEIGHTS_FILE)
        (folder / ckpt.SIDECAR_FILE).write_text(json.dumps(side))

    # 2) consistent sha, but a key is missing.
    missing = _copy(trained, tmp_path / "missing")
    save_file(
        {k: v for k, v in tensors.items() if k != "model.fc.weight"},
        str(missing / ckpt.WEIGHTS_FILE),
    )
    resign(missing)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(missing)
    # 3) consistent sha, but the sidecar describes another number of classes.
    shape = _copy(trained, tmp_path / "shape")
    side = json.loads((shape / ckpt.SIDECAR_FILE).read_text())
    side["num_classes"] = 31
    (shape / ckpt.SIDECAR_FILE).write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(shape)
    # 4) through the CLI: one line, exit 2.
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--method",
            "SM+CL",
            "--data",
            "orl",
            "--epochs",
            "2",
            "--out",
            str(swapped),
            "--resume",
        ],
    )
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "does not match" in result.output


# --------------------------------------------------------------------------------------------
# NaN guard


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = MethodLoss.forward
    steps_per_epoch = 300 // 32

    def poisoned(self, features, labels):
        out = original(self, features, labels)
        calls["n"] += 1
        if calls["n"] == steps_per_epoch + 3:  # third step of epoch 2
            return out._replace(loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(MethodLoss, "forward", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingError) as info:
        train(tiny("SM", epochs=3), out, progress=False)
    message = str(info.value)
    assert "\n" not in message
    # Read from the device at the end of the epoch: noticed 6 steps late (9 steps per epoch).
    late = steps_per_epoch - 3
    assert f"loss became nan at epoch 2 iter {steps_per_epoch + 3} (noticed {late} steps" in message
    assert f"last good checkpoint kept at {out} (epoch 1" in message and "lower --lr" in message
    loaded = load_checkpoint(out)  # the epoch-1 checkpoint is intact and consistent
    assert loaded.sidecar["epochs_completed"] == 1
    assert all(torch.isfinite(t.float()).all() for t in weights(out).values())


def test_divergent_lr_raises_training_error(tmp_path):
    with pytest.raises(TrainingError, match="lower --lr"):
        train(tiny("SM", epochs=2, lr=1e30), tmp_path / "huge", progress=False)


# --------------------------------------------------------------------------------------------
# CLI


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--method", "XYZ"], "XYZ"),
        (["--method", "SM+R(abc)"], "abc"),
        (["--method", "SM", "--model", "nonet"], "nonet"),
        (["--method", "SM", "--preset", "cpu"], "applies only to the synthetic dataset"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    result = CliRunner().invoke(
        cli, ["train", *args, "--data", "orl", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and needle in result.output
    assert not (tmp_path / "o").exists()


def test_out_is_checked_before_training(tmp_path):
    """A folder holding other files (a sweep, someone's notes) or a path inside a file is
    refused before any step runs; nothing is mixed into the folder."""
    busy = tmp_path / "sweep"
    busy.mkdir()
    (busy / "results.csv").write_text("mine")
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for out, needle in ((busy, "not empty and holds no checkpoint"), (afile / "o", "inside")):
        result = CliRunner().invoke(
            cli, ["train", "--method", "SM", "--data", "orl", "--out", str(out)]
        )
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and needle in result.output
    assert [p.name for p in busy.iterdir()] == ["results.csv"]
    assert afile.read_text() == "mine"


def test_cli_trains_and_prints_summary(tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--method",
            "SM+R(0.01)",
            "--data",
            "orl",
            "--fold",
            "1",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--batch-size",
            "64",
            "--num-threads",
            "1",
            "--no-progress",
            "--augment-resolution",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "train acc" in result.output and "norm CV" in result.output and str(out) in result.output
    side = json.loads((out / ckpt.SIDECAR_FILE).read_text())
    assert side["config"]["augment_resolution"] == [1 / 16, 1.0, 0.5]
    assert side["data"]["fold"] == 1


def test_default_lr_follows_the_model_family():
    # SphereFace nets (no BatchNorm) take SphereFace's 0.1 at batch 256, scaled to the batch.
    assert TrainConfig(method="SM", model="sphere20", batch_size=64).lr == pytest.approx(0.025)
    # BatchNorm nets take 0.05 per 32 images: 0.2 at the default batch of 128.
    assert TrainConfig(method="SM", model="cpunet", batch_size=32).lr == pytest.approx(0.05)
    assert TrainConfig(method="SM", model="cpunet").lr == pytest.approx(0.2)
    # Resolving the default does not change the identity of a config that spelled it out.
    assert TrainConfig(method="SM").hash() == TrainConfig(method="SM", lr=0.2).hash()


def test_train_split_all_keeps_old_hashes_and_trains_on_everything():
    from lowres.train import TrainConfig, load_split

    # Models cached before train_split existed keep their hash (this one is from TRAIN_FORMAT 2,
    # made with the recipe of that time, which a config now spells out).
    old = dict(model="cpunet", batch_size=32, schedule="step", warmup=0.0, **RECIPE2)
    assert TrainConfig(method="SM", data="orl", fold=0, seed=0, **old).hash() == "b4e67a8eb643b579"
    whole = TrainConfig(method="SM", data="orl", train_split="all")
    assert whole.hash() != TrainConfig(method="SM", data="orl").hash()
    train, held_out = load_split(whole)
    assert train.images.shape[0] == 400 and train.num_identities == 40
    assert held_out.images.shape[0] == 0
    with pytest.raises(ConfigError, match="train_split"):
        TrainConfig(method="SM", train_split="some")


def test_an_amp_step_with_inf_gradients_moves_nothing():
    """GradScaler skips a step whose gradients overflowed; optimizer_step says so, and the
    loss then drops its pending center update (SphereFace's annealing does not advance)."""
    from lowres.methods import build_loss
    from lowres.train import optimizer_step

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    loss_fn = build_loss("SF+CL", 4, 3).train()
    opt = torch.optim.SGD([*model.parameters(), *loss_fn.parameters()], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])

    def step(scale_loss: float) -> bool:
        opt.zero_grad()
        scaler.scale(loss_fn(model(x), y).loss * scale_loss).backward()
        stepped = optimizer_step(scaler, opt)
        if stepped:
            loss_fn.after_step()
        else:
            loss_fn.skip_step()
        return stepped

    weights = model.weight.detach().clone()
    centers = loss_fn.center.centers.clone()
    iteration = int(loss_fn.head.iteration)
    assert step(float("inf")) is False
    assert torch.equal(model.weight, weights)
    assert torch.equal(loss_fn.center.centers, centers)
    assert int(loss_fn.head.iteration) == iteration
    assert step(1.0) is True
    assert not torch.equal(model.weight, weights)
    assert not torch.equal(loss_fn.center.centers, centers)
    assert int(loss_fn.head.iteration) == iteration + 1
    # Disabled (CPU training): a plain optimizer step.
    plain = torch.amp.GradScaler("cpu", enabled=False)
    opt.zero_grad()
    loss_fn(model(x), y).loss.backward()
    assert optimizer_step(plain, opt) is True


def test_autocast_dtype_follows_the_gpu(monkeypatch):
    from lowres.train.loop import amp_dtype

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype(cpu, True) is None and amp_dtype(gpu, False) is None
    asked = []

    def native(including_emulation=True):
        asked.append(including_emulation)
        return state["native"]

    state = {"native": True}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", native)
    assert amp_dtype(gpu, True) == torch.bfloat16  # Ampere and later: no GradScaler
    state["native"] = False
    assert amp_dtype(gpu, True) == torch.float16  # older GPUs: float16 + GradScaler
    assert asked == [False, False]  # emulated bfloat16 does not count


def test_compile_runs_the_step_under_torch_compile(tmp_path, monkeypatch):
    """``compile=True`` hands the step to torch.compile (here a recording stand-in: inductor
    needs a compiler and a minute on CPU); the stand-in returns the module, so the weights are
    those of the uncompiled run."""
    compiled = []

    def fake_compile(module, **kwargs):
        compiled.append(type(module).__name__)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    plain = train(tiny(epochs=1), tmp_path / "a", progress=False)
    assert compiled == []
    again = train(tiny(epochs=1, compile=True), tmp_path / "b", progress=False)
    assert compiled == ["_Step"]
    wa = load_file(str(plain / "model.safetensors"))
    wb = load_file(str(again / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
