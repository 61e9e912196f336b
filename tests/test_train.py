import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fusemix import FusionAdapter, FusionModel, IdentityAdapter, LinearAdapter, SigLIPLoss
from fusemix.checkpoint import (
    atomic_directory,
    load_model,
    load_training_checkpoint,
    recover_directory,
    save_model,
)
from fusemix.data import PairedLatents
from fusemix.train import TrainConfig, TrainState, alpha_at, fit, lr_at, plot_curves, weight_decay_groups

TESTS = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("_train_resume", TESTS / "_train_resume.py")
resume_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(resume_run)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest; the resume tests also need the helper's thread count


def _planted(n, seed, dims=(32, 24), concept_dim=8):
    g = torch.Generator().manual_seed(seed)
    projections = [
        torch.randn(concept_dim, d, generator=torch.Generator().manual_seed(100 + i)) for i, d in enumerate(dims)
    ]
    concepts = torch.randn(n, concept_dim, generator=g)
    views = [torch.tanh(concepts @ p) + 0.1 * torch.randn(n, p.shape[1], generator=g) for p in projections]
    return PairedLatents({"image": views[0].numpy(), "text": views[1].numpy()})


# -- schedule, groups, config ----------------------------------------------------------------------------------------


def test_lr_at_follows_warmup_then_per_epoch_cosine():
    config = TrainConfig(epochs=4, lr=1e-3, warmup_steps=3, warmup_start_lr=1e-6, min_lr=1e-6)
    # Hand-computed: warm-up 1e-6 + 999e-6 * s / 3; then 1e-6 + 999e-6 * (1 + cos(pi * e / 4)) / 2, flat per epoch.
    table = [
        (0, 0, 1.0e-6),
        (1, 0, 3.34e-4),
        (2, 0, 6.67e-4),
        (3, 0, 1.0e-3),
        (4, 0, 1.0e-3),
        (5, 1, 8.536998e-4),
        (9, 1, 8.536998e-4),
        (10, 2, 5.005e-4),
        (14, 2, 5.005e-4),
        (15, 3, 1.473002e-4),
        (19, 3, 1.473002e-4),
    ]
    for step, epoch, expected in table:
        assert lr_at(step, epoch, 5, config) == pytest.approx(expected, rel=1e-6), (step, epoch)
    # A warm-up longer than an epoch continues by step, capped by the epoch's cosine.
    long = TrainConfig(epochs=4, lr=1e-3, warmup_steps=8, warmup_start_lr=1e-6, min_lr=1e-6)
    assert lr_at(5, 1, 5, long) == pytest.approx(1e-6 + 999e-6 * 5 / 8)
    assert lr_at(7, 1, 5, long) == pytest.approx(8.536998e-4, rel=1e-6)
    with pytest.raises(ValueError, match="step: 5 does not belong to epoch 0"):
        lr_at(5, 0, 5, config)
    with pytest.raises(ValueError, match="epoch"):
        lr_at(20, 4, 5, config)


def test_alpha_schedule_is_per_epoch():
    assert alpha_at(7, TrainConfig()) == 1.0
    cosine = TrainConfig(epochs=10, alpha=0.1, alpha_schedule="cosine", alpha_end=1.0)
    assert [round(alpha_at(e, cosine), 6) for e in (0, 5, 10)] == [0.1, 0.55, 1.0]
    exponential = TrainConfig(epochs=10, alpha=0.1, alpha_schedule="exponential", alpha_end=1.0)
    assert alpha_at(5, exponential) == pytest.approx(0.1 * 10**0.5)


def test_weight_decay_only_on_linear_weights():
    model = FusionModel.from_dims({"image": 6, "text": 4}, shared_dim=3, depth=2)
    groups = weight_decay_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = sorted(names[id(p)] for p in groups[0]["params"])
    no_decay = sorted(names[id(p)] for p in groups[1]["params"])
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert decay == sorted(n for n in names.values() if n.endswith(("fc1.weight", "fc2.weight", "proj.weight")))
    assert "loss.temperature" in no_decay and "adapters.image.norm.weight" in no_decay
    assert all(n.endswith("bias") or "norm" in n or n.startswith("loss.") for n in no_decay)
    assert len(decay) + len(no_decay) == len(names)
    siglip = FusionModel.from_dims({"a": 3, "b": 3}, shared_dim=2, depth=0, loss=SigLIPLoss())
    frozen_names = {id(p): n for n, p in siglip.named_parameters()}
    assert {frozen_names[id(p)] for p in weight_decay_groups(siglip, 0.1)[1]["params"]} >= {
        "loss.logit_scale",
        "loss.logit_bias",
    }
    siglip.adapters["a"].proj.weight.requires_grad_(False)
    assert all(p.requires_grad for g in weight_decay_groups(siglip, 0.1) for p in g["params"])


def test_config_defaults_are_the_papers_recipe_and_round_trip():
    c = TrainConfig()
    assert (c.epochs, c.batch_size, c.lr, c.warmup_steps, c.warmup_start_lr, c.min_lr) == (
        500,
        40960,
        1e-3,
        100,
        1e-6,
        1e-6,
    )
    assert (c.weight_decay, c.betas, c.shared_dim, c.depth, c.expansion, c.dropout) == (
        0.1,
        (0.9, 0.999),
        512,
        4,
        4,
        0.6,
    )
    assert (c.augmentation, c.alpha, c.pairing, c.loss, c.temperature_init) == (
        "fusemix",
        1.0,
        "halves",
        "contrastive",
        0.07,
    )
    custom = TrainConfig(
        epochs=3, betas=(0.8, 0.99), alpha_schedule="cosine", alpha_end=0.5, grad_clip=1.0, preload=False
    )
    text = json.dumps(custom.to_dict())
    assert TrainConfig.from_dict(json.loads(text)) == custom


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 33}, ValueError, r"batch_size: must be even with pairing='halves'"),
        ({"epochs": 0}, ValueError, "epochs"),
        ({"epochs": 2.0}, TypeError, "epochs"),
        ({"lr": -1.0}, ValueError, "lr"),
        ({"warmup_start_lr": 1.0}, ValueError, "warmup_start_lr: must not exceed lr"),
        ({"min_lr": 1.0}, ValueError, "min_lr"),
        ({"warmup_steps": -1}, ValueError, "warmup_steps"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay"),
        ({"betas": (0.9,)}, ValueError, "betas"),
        ({"betas": (0.9, 1.0)}, ValueError, "betas"),
        ({"adapter": "mlp"}, ValueError, "adapter"),
        ({"dropout": 1.0}, ValueError, "dropout"),
        ({"augmentation": "mixup"}, ValueError, "augmentation"),
        ({"alpha": 0.0}, ValueError, "alpha"),
        ({"alpha_schedule": "cosine"}, ValueError, "alpha_end: alpha_schedule='cosine' needs"),
        ({"alpha_end": 0.5}, ValueError, "alpha_end: only used with alpha_schedule"),
        ({"pairing": "random"}, ValueError, "pairing"),
        ({"per_sample_lambda": 1}, TypeError, "per_sample_lambda"),
        ({"loss": "triplet"}, ValueError, "loss"),
        ({"temperature_init": 0.9}, ValueError, "temperature_init"),
        ({"temperature_parameterization": "scale"}, ValueError, "temperature_parameterization"),
        ({"grad_clip": 0.0}, ValueError, "grad_clip"),
        ({"device": "gpu0"}, ValueError, "device"),
        ({"amp": "fp8"}, ValueError, "amp"),
        ({"preload": "yes"}, ValueError, "preload"),
        ({"seed": -1}, ValueError, "seed"),
        ({"eval_every": -1}, ValueError, "eval_every"),
        ({"checkpoint_every": -2}, ValueError, "checkpoint_every"),
        ({"log_every": 0}, ValueError, "log_every"),
        ({"eval_chunk_size": 0}, ValueError, "eval_chunk_size"),
    ],
)
def test_config_validation_names_the_field(kwargs, error, match):
    with pytest.raises(error, match=match):
        TrainConfig(**kwargs)


def test_config_from_dict_refuses_unknown_keys_and_odd_batches_are_fine_without_halves():
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys \['learning_rate'\]"):
        TrainConfig.from_dict({"learning_rate": 1.0})
    assert TrainConfig(batch_size=33, pairing="permute").batch_size == 33
    assert TrainConfig(batch_size=33, augmentation="none").batch_size == 33


# -- a real fit ------------------------------------------------------------------------------------------------------


def test_fit_aligns_planted_pairs_and_writes_its_outputs(tmp_path):
    train, val = _planted(480, seed=1), _planted(200, seed=2)
    config = TrainConfig(epochs=20, batch_size=64, lr=3e-3, warmup_steps=10, shared_dim=16, depth=1, dropout=0.1)
    config = TrainConfig.from_dict(
        {**config.to_dict(), "eval_every": 5, "checkpoint_every": 5, "log_every": 20, "device": "cpu"}
    )
    steps = []
    result = fit(train, config, val=val, out_dir=tmp_path, progress=True, callbacks=[steps.append])
    assert result.metrics["i2t_R@1"] > 30 and result.metrics["t2i_R@1"] > 30  # chance: 0.5%
    epoch_records = [r for r in result.history if r["kind"] == "epoch"]
    assert len(epoch_records) == 20 and [r["epoch"] for r in epoch_records] == list(range(20))
    assert epoch_records[-1]["loss"] < epoch_records[0]["loss"]
    assert [r["epoch"] for r in epoch_records if "metrics" in r] == [4, 9, 14, 19]
    assert [s.step for s in steps] == list(range(1, 141)) and isinstance(steps[0], TrainState)
    assert steps[0].lr == pytest.approx(1e-6) and steps[-1].epoch == 19
    assert [r["step"] for r in result.history if r["kind"] == "step"] == list(range(20, 141, 20))
    assert result.out_dir == tmp_path and not result.model.training
    # Logs mirror the history.
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == result.history
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(result.history) and "i2t_R@1" in rows[0]
    assert float(rows[-1]["i2t_R@1"]) == pytest.approx(result.metrics["i2t_R@1"])
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Checkpoint files load without pickle; the final model directory rebuilds the same model.
    ckpt = tmp_path / "checkpoint"
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "optimizer.pt", "rng.pt", "state.json"]
    (tmp_path / "probe").touch()
    usual_mode = (tmp_path / "probe").stat().st_mode  # files follow the umask (safetensors alone would write 0600)
    written = [*ckpt.iterdir(), *(tmp_path / "model").iterdir(), tmp_path / "log.jsonl", tmp_path / "log.csv"]
    assert all(p.stat().st_mode == usual_mode for p in written)
    (tmp_path / "probe").unlink()
    optimizer = torch.load(ckpt / "optimizer.pt", weights_only=True)
    rng = torch.load(ckpt / "rng.pt", weights_only=True)
    assert set(optimizer) == {"optimizer", "grad_scaler"} and len(optimizer["optimizer"]["param_groups"]) == 2
    assert rng["torch_cpu"].dtype == torch.uint8 and rng["augmentation"].dtype == torch.uint8
    state = json.loads((ckpt / "state.json").read_text())
    assert state["epoch"] == 20 and state["step"] == 140 and state["config"] == config.to_dict()
    assert state["batcher"]["epoch"] == 20 and state["history"] == result.history
    loaded = load_model(tmp_path / "model")
    x = torch.from_numpy(val.latents["text"][:50])
    assert torch.equal(loaded.embed("text", x), result.model.embed("text", x))
    assert json.loads((tmp_path / "model" / "fusemix.json").read_text())["train_config"] == config.to_dict()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "overrides",
    [
        {"augmentation": "noise"},
        {"augmentation": "fusemix-independent", "per_sample_lambda": True},
        {"augmentation": "none", "loss": "siglip", "grad_clip": 1.0},
        {"pairing": "permute", "amp": "bf16", "alpha_schedule": "cosine", "alpha_end": 0.5},
        {"adapter": "linear", "temperature_parameterization": "logit_scale", "preload": False},
    ],
)
def test_every_augmentation_and_loss_trains(overrides):
    data = _planted(96, seed=3, dims=(6, 5))
    config = TrainConfig(epochs=2, batch_size=32, shared_dim=4, depth=1, warmup_steps=1, device="cpu", **overrides)
    result = fit(data, config, val=data, progress=False)
    assert all(math.isfinite(r["loss"]) for r in result.history)
    assert result.history[-1]["temperature"] > 0
    expected_alpha = alpha_at(1, config) if config.augmentation.startswith("fusemix") else None
    assert result.history[-1]["alpha"] == expected_alpha


def test_fit_leaves_the_callers_random_state_alone_and_is_seeded():
    data = _planted(64, seed=4, dims=(5, 4))
    config = TrainConfig(epochs=1, batch_size=32, shared_dim=3, depth=1, warmup_steps=1, device="cpu")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = fit(data, config, progress=False)
    assert torch.equal(torch.rand(3), expected)
    b = fit(data, config, progress=False)
    c = fit(data, TrainConfig.from_dict({**config.to_dict(), "seed": 1}), progress=False)
    sa, sb, sc = (r.model.state_dict() for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_fit_refuses_bad_arguments(tmp_path):
    data = _planted(64, seed=5, dims=(5, 4))
    small = TrainConfig(epochs=1, batch_size=32, shared_dim=3, depth=1, device="cpu")
    with pytest.warns(UserWarning, match="batch_size: 128 exceeds the 64 training pairs; training full batches of 64"):
        fit(data, TrainConfig.from_dict({**small.to_dict(), "batch_size": 128}), progress=False)  # cut, not refused
    with pytest.raises(ValueError, match="amp: 'fp16' needs a CUDA device"):
        fit(data, TrainConfig.from_dict({**small.to_dict(), "amp": "fp16"}), progress=False)
    with pytest.raises(ValueError, match="val_pair"):
        fit(data, small, val=data, val_pair=("image", "audio"), progress=False)
    with pytest.raises(ValueError, match=r"model: has no adapter for the training modalities \['text'\]"):
        fit(
            data, small, model=FusionModel({"image": LinearAdapter(5, 3), "audio": LinearAdapter(2, 3)}), progress=False
        )
    with pytest.raises(TypeError, match="train"):
        fit({"image": np.zeros((4, 2))}, small)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config"):
        fit(data, {"epochs": 1}, progress=False)  # type: ignore[arg-type]


def test_optional_dependencies_are_imported_lazily():
    import ast

    import fusemix.checkpoint
    import fusemix.data
    import fusemix.train

    for module in (fusemix.train, fusemix.checkpoint, fusemix.data):
        tree = ast.parse(Path(module.__file__).read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in top if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] in ("safetensors", "tqdm", "matplotlib")], module


def test_missing_optional_dependencies(tmp_path, monkeypatch):
    for name in ("safetensors", "safetensors.torch", "tqdm", "tqdm.auto", "matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)
    data = _planted(64, seed=6, dims=(5, 4))
    config = TrainConfig(epochs=1, batch_size=32, shared_dim=3, depth=1, device="cpu")
    with pytest.warns(UserWarning, match="tqdm is not installed"):
        fit(data, config, progress=True)
    with pytest.warns(UserWarning, match="matplotlib is not installed"):
        assert plot_curves([], tmp_path / "c.png") is False
    with pytest.raises(ImportError, match=r'pip install "fusemix\[train\]"'):
        fit(data, config, out_dir=tmp_path, progress=False)
    with pytest.raises(ImportError, match="safetensors"):
        load_model(tmp_path)


# -- model directories and checkpoints -------------------------------------------------------------------------------


def test_model_directory_round_trip_for_every_builtin_part(tmp_path):
    adapters = {
        "audio": FusionAdapter(6, 4, depth=2, expansion=3, dropout=0.2),
        "text": IdentityAdapter(4),
        "x": LinearAdapter(2, 4, bias=False),
    }
    model = FusionModel(adapters, loss=SigLIPLoss(chunk_size=3))
    save_model(model, tmp_path / "m", config={"note": "anything JSON"})
    loaded = load_model(tmp_path / "m")
    assert not loaded.training and loaded.modalities == model.modalities
    model.eval()
    for name, dim in (("audio", 6), ("text", 4), ("x", 2)):
        x = torch.randn(5, dim)
        assert torch.equal(loaded.embed(name, x), model.embed(name, x))
    assert loaded.loss.chunk_size == 3 and loaded.adapters["x"].proj.bias is None
    description = json.loads((tmp_path / "m" / "fusemix.json").read_text())
    assert description["dims"] == {"audio": 6, "text": 4, "x": 2} and description["shared_dim"] == 4


def test_model_directory_errors(tmp_path):
    class Custom(nn.Module):
        out_dim = 2

        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="model: adapter 'a' is a Custom"):
        save_model(FusionModel({"a": Custom(), "b": LinearAdapter(3, 2)}), tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="fusemix.json"):
        load_model(tmp_path / "nothing")
    good = FusionModel.from_dims({"a": 3, "b": 2}, shared_dim=2, depth=1)
    save_model(good, tmp_path / "m")
    description = json.loads((tmp_path / "m" / "fusemix.json").read_text())
    description["adapters"]["a"]["depth"] = 2
    (tmp_path / "m" / "fusemix.json").write_text(json.dumps(description))
    with pytest.raises(ValueError, match="weights do not fit"):
        load_model(tmp_path / "m")


def test_atomic_directory_keeps_old_or_new_whole(tmp_path):
    target = tmp_path / "d"
    with atomic_directory(target) as tmp:
        (tmp / "f").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "f").write_text("half")
        raise RuntimeError
    assert (target / "f").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    # Killed after the new version was complete but before the swap: the new version wins.
    (tmp_path / ".d.ready").mkdir()
    (tmp_path / ".d.ready" / "f").write_text("new")
    recover_directory(target)
    assert (target / "f").read_text() == "new"
    # Killed between moving the old version aside and moving the new one in.
    target.rename(tmp_path / ".d.old")
    (tmp_path / ".d.new").mkdir()  # a partial write, discarded
    recover_directory(target)
    assert (target / "f").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert load_training_checkpoint(tmp_path / "none") is None


# -- exact resume ----------------------------------------------------------------------------------------------------


def _killed_run(out_dir, step):
    proc = subprocess.run(
        [sys.executable, str(TESTS / "_train_resume.py"), str(out_dir), str(step)], capture_output=True, timeout=300
    )
    assert proc.returncode == -9, proc.stderr.decode()


def _state(out_dir):
    return load_training_checkpoint(out_dir / "checkpoint")


def _assert_same_run(resumed, reference, out_dir):
    a, b = resumed.model.state_dict(), reference.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in resumed.history]
    assert strip == [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in reference.history]
    assert resumed.metrics == reference.metrics
    assert [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()] == resumed.history


def test_killed_runs_resume_to_the_uninterrupted_weights(tmp_path):
    reference = resume_run.run(tmp_path / "reference")
    ref_ckpt = _state(tmp_path / "reference")
    steps = resume_run.STEPS_PER_EPOCH

    # Killed in the middle of epoch 2, after the checkpoints of epochs 0 and 1.
    mid = tmp_path / "mid"
    _killed_run(mid, 2 * steps + 3)
    state = _state(mid).state
    assert state["epoch"] == 2 and state["step"] == 2 * steps
    assert len((mid / "log.jsonl").read_text().splitlines()) > len(state["history"])  # lines past the checkpoint
    resumed = resume_run.run(mid)
    _assert_same_run(resumed, reference, mid)
    ckpt = _state(mid)
    a, b = ckpt.optimizer_state["optimizer"]["state"], ref_ckpt.optimizer_state["optimizer"]["state"]
    assert all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i])

    # Killed in epoch 0, before any checkpoint exists: the resume starts afresh.
    early = tmp_path / "early"
    _killed_run(early, 2)
    assert _state(early) is None and (early / "log.jsonl").exists()
    _assert_same_run(resume_run.run(early), reference, early)

    # Resuming a finished run trains nothing and returns the same model.
    again = resume_run.run(mid)
    _assert_same_run(again, reference, mid)


def test_a_second_run_in_a_busy_out_dir_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path):
    reference = resume_run.run(tmp_path / "reference")
    out = tmp_path / "busy"
    steps = resume_run.STEPS_PER_EPOCH
    command = [sys.executable, str(TESTS / "_train_resume.py"), str(out), str(steps + 3), "pause"]
    holder = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "paused", holder.stderr.read()
        log = (out / "log.jsonl").read_text()
        refused = rf"out_dir: \S*busy is in use by another training run \(pid {holder.pid} "
        with pytest.raises(FileExistsError, match=refused):
            resume_run.run(out)
        assert _state(out).state["step"] == steps and (out / "log.jsonl").read_text() == log  # untouched
    finally:
        holder.kill()
        holder.wait()
    _assert_same_run(resume_run.run(out), reference, out)  # the kernel dropped the killed holder's lock


def test_resume_refuses_another_config_or_other_data(tmp_path):
    config = TrainConfig.from_dict({**resume_run.CONFIG.to_dict(), "epochs": 1})
    resume_run.run(tmp_path, config=config)
    with pytest.raises(ValueError, match=r"config: differs from the checkpoint .*lr=0.002 \(checkpoint: 0.003\)"):
        resume_run.run(tmp_path, config=TrainConfig.from_dict({**config.to_dict(), "lr": 2e-3}))
    with pytest.raises(ValueError, match=r"epochs=2 \(checkpoint: 1\)"):
        resume_run.run(tmp_path, config=TrainConfig.from_dict({**config.to_dict(), "epochs": 2}))
    # Fields that do not change the weights may differ.
    resume_run.run(tmp_path, config=TrainConfig.from_dict({**config.to_dict(), "eval_every": 3, "log_every": 1}))
    train, _ = resume_run.make_data(num_train=160)
    with pytest.raises(ValueError, match="train: has 160 pairs"):
        fit(train, config, out_dir=tmp_path, progress=False)
    same_size = resume_run.make_data()[0]
    shuffled = same_size.subset(np.roll(np.arange(len(same_size)), 1))  # same pairs count and dims, other rows
    with pytest.raises(ValueError, match="train: pairs its rows differently"):
        fit(shuffled, config, out_dir=tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="resume=True"):
        fit(resume_run.make_data()[0], config, out_dir=tmp_path, resume=False, progress=False)


def test_resume_refuses_other_latents_of_the_same_shape_naming_the_modality(tmp_path):
    import shutil

    from fusemix.store import LatentStore, write_store

    config = TrainConfig.from_dict({**resume_run.CONFIG.to_dict(), "epochs": 1})
    train, _ = resume_run.make_data()
    image, text = train.latents["image"], train.latents["text"]
    fit(train, config, out_dir=tmp_path / "arrays", progress=False)
    shuffled = PairedLatents({"image": image[::-1].copy(), "text": text})  # same shape, dims and pairing
    with pytest.raises(ValueError, match=r"train: its 'image' latents differ from those the checkpoint in \S*arrays"):
        fit(shuffled, config, out_dir=tmp_path / "arrays", progress=False)

    def stored(rows):  # a store re-extracted in place: same path, encoder identity and shape
        shutil.rmtree(tmp_path / "image", ignore_errors=True)
        write_store(tmp_path / "image", rows, modality="image", encoder={"name": "toy"})
        return PairedLatents({"image": LatentStore.open(tmp_path / "image"), "text": text})

    fit(stored(image), config, out_dir=tmp_path / "store", progress=False)
    fit(stored(image), config, out_dir=tmp_path / "store", progress=False)  # the same store content resumes
    other_store = r"'image' latents differ .*\(latent store \w{12} now, latent store \w{12} there"
    with pytest.raises(ValueError, match=other_store):
        fit(stored(image[::-1].copy()), config, out_dir=tmp_path / "store", progress=False)

    state_file = tmp_path / "arrays" / "checkpoint" / "state.json"  # a checkpoint from before the field was recorded
    state = json.loads(state_file.read_text())
    del state["train"]["latents"]
    state_file.write_text(json.dumps(state))
    assert fit(shuffled, config, out_dir=tmp_path / "arrays", progress=False).steps == resume_run.STEPS_PER_EPOCH


def test_a_nan_in_a_store_stops_fit_naming_the_store_modality_and_row(tmp_path):
    from fusemix.store import LatentStore, write_store

    train, val = resume_run.make_data()
    write_store(tmp_path / "image", train.latents["image"], modality="image", encoder={"name": "toy"}, shard_size=64)
    shard = np.load(tmp_path / "image" / "shards" / "00002.npy", mmap_mode="r+")  # rows 128..191
    shard[5, 0] = np.nan  # the quick check of LatentStore.open does not read values
    shard.flush()
    del shard
    stored = PairedLatents({"image": LatentStore.open(tmp_path / "image"), "text": train.latents["text"]})
    config = TrainConfig.from_dict({**resume_run.CONFIG.to_dict(), "epochs": 1})
    refused = rf"latents\['image'\]: row 133 of the latent store {tmp_path / 'image'} holds NaN or Inf"
    with pytest.raises(ValueError, match=refused):
        fit(stored, config, progress=False)
    with pytest.raises(ValueError, match=refused):  # the validation task reads it too
        fit(train, config, val=stored, progress=False)


# -- beyond the paper: hidden width, structure term, warm start -------------------------------------------------------


def test_hidden_dim_structure_and_warm_start_come_from_the_config(tmp_path):
    from fusemix import CCAAligner, StructureLoss, aligner_input_norm
    from fusemix.train import model_from_config, warm_start_from_config

    data = _planted(120, 0)
    config = TrainConfig(shared_dim=8, depth=2, hidden_dim=5, structure_weight=0.5, warm_start="cca", seed=3)
    model = model_from_config(data.dims, config)
    assert all(block.fc1.out_features == 5 for a in model.adapters.values() for block in a.blocks)
    assert isinstance(model.structure, StructureLoss) and model.structure_weight == 0.5
    warm_start_from_config(model, data, config)
    latents = data.gather(np.arange(len(data)))
    aligner = CCAAligner(8, regularization=0.1, input_norm=aligner_input_norm(model)).fit(latents)
    for m in ("image", "text"):
        torch.testing.assert_close(model.eval().embed(m, latents[m]), aligner.embed(m, latents[m]), atol=1e-5, rtol=0)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded.structure, StructureLoss) and loaded.structure_weight == 0.5
    torch.testing.assert_close(loaded.embed("text", latents["text"]), model.embed("text", latents["text"]))


def test_warm_started_training_starts_at_the_aligner_and_stays_above_chance():
    train, val = _planted(400, 0), _planted(100, 1)
    config = TrainConfig(epochs=3, batch_size=64, warmup_steps=2, lr=1e-4, shared_dim=8, depth=1, expansion=1,
                         dropout=0.0, warm_start="cca", structure_weight=1.0, eval_every=1, device="cpu")  # fmt: skip
    result = fit(train, config, val=val, progress=False)
    assert result.metrics["i2t_R@1"] > 20 and result.metrics["t2i_R@1"] > 20  # chance is 1%
    # 6 pairs: CCA finds 5 directions; the model's other 3 outputs start (and stay) at zero
    few = pytest.warns(UserWarning, match=r"dim: 8 is larger than the 5 directions .* N - 1\) = min\(32, 24, 5\)")
    with few, pytest.warns(UserWarning, match="shared_dim: the model's shared dimension is 8 but the aligner has 5"):
        fit(_planted(6, 0), TrainConfig(epochs=1, batch_size=4, shared_dim=8, warm_start="cca"), progress=False)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("hidden_dim", 0, "hidden_dim"),
        ("structure_weight", -1.0, "structure_weight"),
        ("structure_divergence", "l2", "structure_divergence"),
        ("warm_start", "pca", "warm_start"),
        ("warm_start_max_pairs", 1, "warm_start_max_pairs"),
    ],
)
def test_new_fields_are_validated(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value})
