"""fit(): the returned weights chosen on validation, early stopping, their exact resume, the batch cut, threads."""

import importlib.util
import json
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fusemix._run_log import curves_figure
from fusemix.checkpoint import load_model, load_training_checkpoint
from fusemix.cli import main as cli_main
from fusemix.data import PairedLatents
from fusemix.recipe import derived_seed
from fusemix.train import (
    RESULT_NEUTRAL_FIELDS,
    Selection,
    TrainConfig,
    _fit_batch_to_data,
    evaluate_retrieval,
    fit,
    model_from_config,
)

TESTS = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("_selection_run", TESTS / "_selection_run.py")
scenario = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scenario)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest; the exact comparisons need the helper's thread count

BEST = scenario.CONFIG
LAST = replace(BEST, selection="last")
SPE = scenario.STEPS_PER_EPOCH


def _evaluations(history):
    return [r for r in history if r["kind"] == "epoch" and "metrics" in r]


def _first_best(evaluations, metric):
    """The evaluation a correct selection keeps: the highest value, the earliest on a tie."""
    values = [r["metrics"][metric] for r in evaluations]
    return evaluations[values.index(max(values))]


def _stop_epoch(evaluations, metric, patience):
    """The epoch at whose evaluation ``patience`` evaluations in a row have not beaten the best, or None."""
    best, since = None, 0
    for r in evaluations:
        value = r["metrics"][metric]
        if best is None or value > best:
            best, since = value, 0
        else:
            since += 1
            if since == patience:
                return r["epoch"]
    return None


def _without_time(history):
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in history]


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _weights_by_step(model):
    """A callback recording a copy of ``model``'s weights after every optimizer step, and the record."""
    seen = {}

    def record(state):
        seen[state.step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    return record, seen


def _model():
    """The model fit would build for the scenario (same seed), passed in so that a callback can read its weights."""
    torch.manual_seed(derived_seed(BEST.seed, 0))
    train, _ = scenario.make_data()
    return model_from_config(train.dims, BEST)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted ``selection="best"`` run of the scenario, in its own out_dir."""
    return scenario.run(tmp_path_factory.mktemp("reference"))


# -- what is selected ------------------------------------------------------------------------------------------------


def test_best_returns_the_weights_of_the_best_evaluation_and_last_the_final_ones():
    train, val = scenario.make_data()
    runs = {}
    for name, config in (("last", LAST), ("best", BEST)):
        model = _model()
        record, seen = _weights_by_step(model)
        runs[name] = (fit(train, config, val=val, model=model, progress=False, callbacks=[record]), seen)
    (last, last_seen), (best, best_seen) = runs["last"], runs["best"]
    final_step = BEST.epochs * SPE
    # Selection watches training without changing it.
    assert _without_time(best.history[:-1]) == _without_time(last.history)
    assert all(_same_weights(best_seen[s], last_seen[s]) for s in last_seen)
    evaluations = _evaluations(last.history)
    expected = _first_best(evaluations, "i2t_mean")
    assert expected["step"] < final_step and expected["metrics"]["i2t_mean"] > evaluations[-1]["metrics"]["i2t_mean"]
    # "best": exactly the weights after the selected step, and the metrics of those weights.
    assert best.selected == Selection(
        epoch=expected["epoch"],
        step=expected["step"],
        metric="i2t_mean",
        value=expected["metrics"]["i2t_mean"],
        metrics=expected["metrics"],
    )
    assert _same_weights(best.model.state_dict(), best_seen[expected["step"]])
    assert not _same_weights(best.model.state_dict(), best_seen[final_step])
    assert best.metrics == expected["metrics"] == evaluate_retrieval(best.model, val, batch_size=BEST.batch_size)
    assert best.steps == final_step and not best.stopped_early and not best.model.training
    assert best.history[-1] == {
        "kind": "selection",
        "epoch": expected["epoch"],
        "step": expected["step"],
        "metric": "i2t_mean",
        "value": expected["metrics"]["i2t_mean"],
        "stopped_early": False,
        "metrics": expected["metrics"],
    }
    # "last": the final weights, the last evaluation's metrics, no selection record.
    assert _same_weights(last.model.state_dict(), last_seen[final_step])
    assert last.selected is None and last.metrics == evaluations[-1]["metrics"]
    assert last.metrics == evaluate_retrieval(last.model, val, batch_size=BEST.batch_size)
    assert last.steps == final_step and not last.stopped_early


def test_a_tie_keeps_the_earliest_evaluation():
    train, val = scenario.make_data()
    evaluations = _evaluations(fit(train, LAST, val=val, progress=False).history)
    values = [r["metrics"]["i2t_mean"] for r in evaluations]
    tied = [r["epoch"] for r, v in zip(evaluations, values) if v == max(values)]
    assert len(tied) >= 2, f"the scenario must tie its best i2t_mean, got {values}"
    result = fit(train, BEST, val=val, progress=False)
    assert result.selected.epoch == tied[0]


def test_the_metric_can_be_any_key_of_the_validation_pair():
    train, val = scenario.make_data()
    swapped = PairedLatents({"audio": val.latents["image"], "text": val.latents["text"]})
    model = model_from_config({"audio": 12, **train.dims}, BEST)
    config = replace(BEST, epochs=2, selection_metric="t2a_R@1")
    result = fit(train, config, val=swapped, val_pair=("text", "audio"), model=model, progress=False)
    assert result.selected.metric == "t2a_R@1" and "t2a_R@1" in result.metrics


# -- early stopping --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("patience", "eval_every"), [(1, 1), (3, 1), (5, 1), (2, 2)])
def test_patience_stops_after_exactly_that_many_evaluations_without_improvement(patience, eval_every, tmp_path):
    train, val = scenario.make_data()
    full = fit(train, replace(LAST, eval_every=eval_every), val=val, progress=False)
    stop = _stop_epoch(_evaluations(full.history), "i2t_mean", patience)
    assert stop is not None and stop < LAST.epochs - 1, "the scenario must stop early with this patience"
    steps = []
    config = replace(BEST, patience=patience, eval_every=eval_every)
    result = fit(train, config, val=val, out_dir=tmp_path, progress=False, callbacks=[steps.append])
    trained = [r for r in result.history if r["kind"] != "selection"]
    assert trained[-1]["kind"] == "epoch" and trained[-1]["epoch"] == stop
    assert _without_time(trained) == _without_time([r for r in full.history if r["epoch"] <= stop])
    assert result.stopped_early and result.steps == (stop + 1) * SPE == steps[-1].step
    expected = _first_best([r for r in _evaluations(full.history) if r["epoch"] <= stop], "i2t_mean")
    assert result.selected.step == expected["step"] and result.history[-1]["stopped_early"]
    state = load_training_checkpoint(tmp_path / "checkpoint").state
    assert (state["epoch"], state["step"]) == (stop + 1, result.steps)  # checkpointed where it stopped
    assert state["selection"]["stopped_early"] and state["selection"]["evaluations_since_best"] == patience


def test_patience_counts_from_the_latest_improvement_and_may_never_be_reached():
    train, val = scenario.make_data()
    evaluations = _evaluations(fit(train, LAST, val=val, progress=False).history)
    values = [r["metrics"]["i2t_mean"] for r in evaluations]
    misses = sum(v <= max(values[:e]) for e, v in enumerate(values) if e)
    patience = 6
    assert _stop_epoch(evaluations, "i2t_mean", patience) is None and misses >= patience  # streaks broken by gains
    result = fit(train, replace(BEST, patience=patience), val=val, progress=False)
    assert not result.stopped_early and result.steps == BEST.epochs * SPE
    assert not result.history[-1]["stopped_early"]


def test_patience_running_out_at_the_last_epoch_is_not_an_early_stop(tmp_path):
    train, val = scenario.make_data()
    short = replace(BEST, epochs=5)
    evaluations = _evaluations(fit(train, replace(short, selection="last"), val=val, progress=False).history)
    assert _stop_epoch(evaluations, "i2t_mean", 2) == short.epochs - 1  # the scenario: patience 2 runs out at the end
    config = replace(short, patience=2)
    result = fit(train, config, val=val, out_dir=tmp_path, progress=False)
    assert not result.stopped_early and result.steps == short.epochs * SPE  # every epoch ran
    assert result.history[-1]["kind"] == "selection" and not result.history[-1]["stopped_early"]
    state = load_training_checkpoint(tmp_path / "checkpoint").state
    assert state["epoch"] == short.epochs and state["selection"]["evaluations_since_best"] == 2
    again = fit(train, config, val=val, out_dir=tmp_path, progress=False)  # a finished run: nothing trains
    assert not again.stopped_early and again.steps == result.steps and again.history == result.history


# -- checkpoints and exact resume ------------------------------------------------------------------------------------


def _assert_same_run(resumed, reference, out_dir):
    assert _same_weights(resumed.model.state_dict(), reference.model.state_dict())
    assert resumed.selected == reference.selected and resumed.metrics == reference.metrics
    assert (resumed.stopped_early, resumed.steps) == (reference.stopped_early, reference.steps)
    assert _without_time(resumed.history) == _without_time(reference.history)
    assert [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()] == resumed.history
    assert _same_weights(load_model(out_dir / "model").state_dict(), reference.model.state_dict())


def test_the_checkpoint_carries_the_selection(reference):
    ckpt = load_training_checkpoint(reference.out_dir / "checkpoint")
    assert sorted(p.name for p in (reference.out_dir / "checkpoint").iterdir()) == [
        "best.safetensors", "model.safetensors", "optimizer.pt", "rng.pt", "state.json"
    ]  # fmt: skip
    assert _same_weights(ckpt.best_state, reference.model.state_dict())  # returned: the selected weights
    assert not _same_weights(ckpt.model_state, ckpt.best_state)  # the checkpoint goes on from the last ones
    selected = reference.selected
    assert ckpt.state["selection"] == {
        "metric": "i2t_mean",
        "best": {"epoch": selected.epoch, "step": selected.step, "metric": "i2t_mean", "value": selected.value,
                 "metrics": selected.metrics},
        "evaluations_since_best": BEST.epochs - 1 - selected.epoch,
        "stopped_early": False,
    }  # fmt: skip
    train, val = scenario.make_data()
    assert ckpt.state["val"]["num_pairs"] == 40 and ckpt.state["val"]["dims"] == val.dims
    assert ckpt.state["val"]["pair"] == ["image", "text"] and len(ckpt.state["val"]["pairing"]) == 64
    assert ckpt.state["train"]["pairing"] != ckpt.state["val"]["pairing"]
    description = json.loads((reference.out_dir / "model" / "fusemix.json").read_text())
    assert description["train_config"] == BEST.to_dict()


def test_killed_between_an_improvement_and_the_next_checkpoint_resumes_exactly(reference, tmp_path):
    values = [r["metrics"]["i2t_mean"] for r in _evaluations(reference.history)]
    improved = [e for e, v in enumerate(values) if v > max(values[:e], default=-1.0)]
    # Checkpoints follow epochs 2, 5, 8 and 11. The improvement of epoch 7 waits for the checkpoint of epoch 8: a
    # kill in epoch 8 loses it (the checkpoint of epoch 5 still holds epoch 1's), and the resume must find it again.
    assert improved == [0, 1, 7, 8] and reference.selected.epoch == 8 and BEST.checkpoint_every == 3
    kill_at = 8 * SPE + 1
    proc = subprocess.run(
        [sys.executable, str(TESTS / "_selection_run.py"), str(tmp_path), str(kill_at)],
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr.decode()
    saved = load_training_checkpoint(tmp_path / "checkpoint")
    assert saved.state["epoch"] == 6 and saved.state["selection"]["best"]["epoch"] == 1
    _assert_same_run(scenario.run(tmp_path), reference, tmp_path)


def test_interrupted_in_the_middle_of_a_patience_run_it_stops_at_the_same_point(tmp_path):
    config = replace(BEST, patience=3)
    stopped = scenario.run(tmp_path / "reference", config=config)
    assert stopped.stopped_early and stopped.steps < BEST.epochs * SPE

    def interrupt(state):
        if state.step == stopped.steps - 1:  # the stopping epoch, after the checkpoint before it
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scenario.run(tmp_path / "cut", config=config, callbacks=[interrupt])
    assert load_training_checkpoint(tmp_path / "cut" / "checkpoint").state["epoch"] == 3
    _assert_same_run(scenario.run(tmp_path / "cut", config=config), stopped, tmp_path / "cut")


def test_a_run_that_stopped_early_is_finished(tmp_path, monkeypatch):
    config = replace(BEST, patience=3)
    stopped = scenario.run(tmp_path / "reference", config=config)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after the last checkpoint, before the model is saved

    monkeypatch.setattr("fusemix.train.save_model", killed)
    with pytest.raises(KeyboardInterrupt):
        scenario.run(tmp_path / "cut", config=config)
    monkeypatch.undo()
    assert not (tmp_path / "cut" / "model").exists()
    steps = []
    again = scenario.run(tmp_path / "cut", config=config, callbacks=[steps.append])
    assert steps == []  # nothing trained: it had stopped
    _assert_same_run(again, stopped, tmp_path / "cut")
    assert _same_weights(scenario.run(tmp_path / "cut", config=config).model.state_dict(), again.model.state_dict())


def test_resume_refuses_other_validation_data_and_a_changed_eval_every(reference, tmp_path):
    import shutil

    shutil.copytree(reference.out_dir, tmp_path / "run")
    out = tmp_path / "run"
    train, val = scenario.make_data()
    with pytest.raises(ValueError, match=r"val: has 39 pairs with dims .* was made with 40 pairs"):
        fit(train, BEST, val=val.subset(np.arange(39)), out_dir=out, progress=False)
    with pytest.raises(ValueError, match="val: pairs its rows differently"):
        fit(train, BEST, val=val.subset(np.roll(np.arange(40), 1)), out_dir=out, progress=False)
    with pytest.raises(ValueError, match=r"val_pair: \('text', 'image'\) differs from \('image', 'text'\)"):
        fit(train, BEST, val=val, val_pair=("text", "image"), out_dir=out, progress=False)
    with pytest.raises(ValueError, match=r"config: differs .*eval_every=2 \(checkpoint: 1\)"):
        fit(train, replace(BEST, eval_every=2), val=val, out_dir=out, progress=False)
    with pytest.raises(ValueError, match=r"config: differs .*selection_metric='mean' \(checkpoint: 'i2t_mean'\)"):
        fit(train, replace(BEST, selection_metric="mean"), val=val, out_dir=out, progress=False)
    with pytest.raises(ValueError, match=r"config: differs .*patience=2 \(checkpoint: None\)"):
        fit(train, replace(BEST, patience=2), val=val, out_dir=out, progress=False)
    (out / "checkpoint" / "best.safetensors").unlink()
    with pytest.raises(ValueError, match="checkpoint: .* records a best evaluation but has no best.safetensors"):
        fit(train, BEST, val=val, out_dir=out, progress=False)
    # With selection="last", eval_every only changes when the metrics are logged.
    assert "eval_every" in RESULT_NEUTRAL_FIELDS
    fit(train, replace(LAST, epochs=1), val=val, out_dir=tmp_path / "last", progress=False)
    fit(train, replace(LAST, epochs=1, eval_every=3), val=val, out_dir=tmp_path / "last", progress=False)


# -- config checks ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"selection": "first"}, ValueError, r"selection: expected one of \['last', 'best'\]"),
        ({"selection_metric": ""}, ValueError, "selection_metric: expected a validation metric name"),
        ({"selection_metric": 3}, TypeError, "selection_metric: expected a string"),
        ({"patience": 2}, ValueError, "patience: early stopping .* needs selection='best', got selection='last'"),
        ({"patience": 0, "selection": "best"}, ValueError, "patience: expected an int >= 1"),
        ({"patience": 1.5, "selection": "best"}, TypeError, "patience"),
        ({"threads": 0}, ValueError, "threads: expected an int >= 1"),
        ({"threads": True}, TypeError, "threads"),
    ],
)
def test_config_validation_names_the_field(kwargs, error, match):
    with pytest.raises(error, match=match):
        TrainConfig(**kwargs)


def test_fit_refuses_a_selection_it_cannot_make_before_training(tmp_path):
    train, val = scenario.make_data()
    steps = []
    with pytest.raises(ValueError, match="val: selection='best' keeps the weights of the best evaluation"):
        fit(train, BEST, out_dir=tmp_path / "a", progress=False, callbacks=[steps.append])
    audio = PairedLatents({"audio": val.latents["image"], "text": val.latents["text"]})
    expected = "['a2t_R@1', 'a2t_R@5', 'a2t_R@10', 'a2t_mean', 't2a_R@1', 't2a_R@5', 't2a_R@10', 't2a_mean', 'mean']"
    with pytest.raises(ValueError) as err:
        fit(train, BEST, val=audio, out_dir=tmp_path / "b", progress=False, callbacks=[steps.append])
    assert str(err.value) == (
        f"selection_metric: 'i2t_mean' is not a validation metric of val_pair ('audio', 'text'); expected one of "
        f"{expected}"
    )
    assert steps == [] and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    fit(train, replace(LAST, epochs=1, selection_metric="bogus"), val=val, progress=False)  # "last" does not use it


# -- the batch cut to the data ---------------------------------------------------------------------------------------


def test_a_batch_larger_than_the_data_is_cut_to_full_batches(tmp_path):
    train, _ = scenario.make_data(num_train=65)
    config = TrainConfig(epochs=2, shared_dim=8, depth=1, device="cpu")  # the paper's batch: 40,960
    with pytest.warns(UserWarning) as caught:
        result = fit(train, config, out_dir=tmp_path, progress=False)
    cut = [w for w in caught if "batch_size" in str(w.message)]
    assert [str(w.message) for w in cut] == [
        "batch_size: 40960 exceeds the 65 training pairs; training full batches of 64 pairs instead (1 left out of "
        "each epoch, drawn anew every epoch)"
    ]
    assert cut[0].filename == __file__  # the warning points at the caller of fit
    assert result.config == replace(config, batch_size=64) and result.steps == 2
    state = load_training_checkpoint(tmp_path / "checkpoint").state
    assert state["config"]["batch_size"] == 64 and state["batcher"]["batch_size"] == 64
    assert json.loads((tmp_path / "model" / "fusemix.json").read_text())["train_config"]["batch_size"] == 64
    # The same original config resumes (cut the same way), and so does the cut one.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = fit(train, config, out_dir=tmp_path, progress=False)
    assert _same_weights(again.model.state_dict(), result.model.state_dict())
    fit(train, replace(config, batch_size=64), out_dir=tmp_path, progress=False)
    # Without halves any size fits; a batch that fits is not touched.
    with pytest.warns(UserWarning, match="training full batches of 65 pairs instead$"):
        fit(train, replace(config, pairing="permute", epochs=1), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit(train, replace(config, batch_size=64, epochs=1), progress=False).config.batch_size == 64


@pytest.mark.parametrize(
    ("overrides", "world", "expected"),
    [
        ({}, 1, 650),
        ({}, 4, 648),  # even on every rank: a multiple of 8
        ({"pairing": "permute"}, 4, 648),  # a multiple of 4
        ({"pairing": "permute"}, 3, 648),
        ({"augmentation": "none"}, 1, 650),
        ({}, 3, 648),  # a multiple of 6
        ({"batch_size": 650}, 4, 650),  # not larger than the data: left alone
    ],
)
def test_the_cut_batch_splits_over_the_ranks(overrides, world, expected):
    config = TrainConfig(**overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _fit_batch_to_data(config, 650, world).batch_size == expected


def test_too_few_pairs_for_any_batch_are_refused():
    with pytest.raises(ValueError, match=r"batch_size: 40960 exceeds the 7 training pairs, which are too few .*of 8"):
        _fit_batch_to_data(TrainConfig(), 7, 4)


# -- threads ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_threads_apply_during_fit_only_and_are_recorded(two_threads, tmp_path):
    train, val = scenario.make_data()
    seen = []

    def look(state):
        seen.append(torch.get_num_threads())

    config = replace(LAST, epochs=1, threads=1)
    fit(train, config, val=val, out_dir=tmp_path / "one", progress=False, callbacks=[look])
    assert set(seen) == {1} and torch.get_num_threads() == 2
    assert load_training_checkpoint(tmp_path / "one" / "checkpoint").state["threads"] == 1

    def fail(state):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fit(train, config, val=val, progress=False, callbacks=[fail])
    assert torch.get_num_threads() == 2  # restored on error too
    fit(train, replace(config, threads=None), val=val, out_dir=tmp_path / "default", progress=False)
    assert load_training_checkpoint(tmp_path / "default" / "checkpoint").state["threads"] == 2  # what torch used
    # threads is neutral for a resume, like device, but another count changes float rounding: it warns.
    assert "threads" in RESULT_NEUTRAL_FIELDS
    with pytest.warns(UserWarning, match=r"resuming a run saved with 1 torch thread\(s\) on 2"):
        fit(train, replace(config, threads=2), val=val, out_dir=tmp_path / "one", progress=False)


# -- the command line, the plot --------------------------------------------------------------------------------------


def test_the_cli_takes_the_new_fields_as_flags(tmp_path, capsys):
    train, val = scenario.make_data()
    for name, data in (("train", train), ("val", val)):
        for m in data.modalities:
            np.save(tmp_path / f"{name}_{m}.npy", data.latents[m])
    args = ["train", "--latents", f"image={tmp_path / 'train_image.npy'}", "--latents",
            f"text={tmp_path / 'train_text.npy'}", "--out", str(tmp_path / "run"), "--no-progress"]  # fmt: skip
    defaults = TrainConfig().to_dict()
    args += [f"--{k.replace('_', '-')}={v}" for k, v in BEST.to_dict().items() if v != defaults[k] and k != "selection"]
    assert cli_main([*args, "--selection", "best"]) == 2
    assert "--val-latents: --selection best keeps the weights" in capsys.readouterr().err
    validation = ["--val-latents", f"image={tmp_path / 'val_image.npy'}", "--val-latents",
                  f"text={tmp_path / 'val_text.npy'}"]  # fmt: skip
    flags = ["--selection", "best", "--patience", "3", "--threads", "1", "--selection-metric", "i2t_mean"]
    assert "--threads=1" in args and "--selection-metric=i2t_mean" in args  # the flags repeat them: the last wins
    assert cli_main([*args, *validation, *flags]) == 0
    expected = scenario.run(tmp_path / "api", config=replace(BEST, patience=3, threads=1))
    state = load_training_checkpoint(tmp_path / "run" / "checkpoint").state
    assert state["threads"] == 1 and state["config"] == expected.config.to_dict()
    assert state["selection"] == load_training_checkpoint(tmp_path / "api" / "checkpoint").state["selection"]
    assert _same_weights(load_model(tmp_path / "run" / "model").state_dict(), expected.model.state_dict())


def test_the_plot_marks_the_selected_evaluation(reference):
    pytest.importorskip("matplotlib")
    recall = curves_figure(reference.history).axes[1]
    marks = [line for line in recall.get_lines() if line.get_label().startswith("selected")]
    x = reference.selected.epoch + 1
    assert [m.get_label() for m in marks] == [f"selected: i2t_mean at epoch {x}"]
    assert list(marks[0].get_xdata()) == [x] and list(marks[0].get_ydata()) == [reference.selected.value]
    assert any(list(line.get_xdata()) == [x, x] for line in recall.get_lines())  # the dashed line
    assert not [line for line in curves_figure(reference.history[:-1]).axes[1].get_lines() if "selected" in str(
        line.get_label())]  # fmt: skip
    assert (reference.out_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
