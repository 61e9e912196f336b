"""Training on pairs that lack some modalities: ``-1`` rows in PairedLatents, masked batches and ``fit``.

Run as a script under ``torch.distributed.run`` it is also the worker of the two-rank test at the end.
"""

import copy
import math
import os
import subprocess
import sys
from itertools import combinations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from fusemix import FuseMix, FusionModel
from fusemix.checkpoint import load_model
from fusemix.data import LatentBatch, LatentBatcher, PairedLatents
from fusemix.recipe import derived_seed
from fusemix.train import TrainConfig, evaluate_retrieval, fit, warm_start_from_config

HUGE = 1e30
DIMS = {"image": 12, "text": 10, "audio": 8}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run fastest on one thread


def _three_modalities(n=96, seed=0, missing=0.35, constant_column=False):
    """Image, text and audio views of planted concepts; text is in every pair, image or audio lacking in some.

    Every latent matrix has one extra last row of ``HUGE`` values that no pair uses: a ``-1`` read as a
    wrapped-around index would read it. With ``constant_column`` column 0 of every used row is 1.0, so any
    convex mix of present rows keeps it at 1.0, and a mix with a zero (absent) row does not.
    """
    rng = np.random.default_rng(seed)
    projections = np.random.default_rng(100)  # the same encoders for every seed (train and val)
    concepts = rng.standard_normal((n, 4))
    latents = {}
    for m, d in DIMS.items():
        x = np.tanh(concepts @ projections.standard_normal((4, d))) + 0.1 * rng.standard_normal((n, d))
        if constant_column:
            x[:, 0] = 1.0
        latents[m] = np.concatenate([x, np.full((1, d), HUGE)]).astype(np.float32)
    lack = rng.random(n) < missing
    which = rng.integers(0, 2, n)
    rows = {m: np.arange(n) for m in DIMS}
    rows["image"][lack & (which == 0)] = -1
    rows["audio"][lack & (which == 1)] = -1
    rows["text"] = np.arange(n)
    return PairedLatents(latents, rows)


def _by_hand(data, pairs):
    """The batch of ``pairs`` built with NumPy: zeros where a pair lacks a modality, and the presence masks."""
    latents, masks = {}, {}
    for m, source in data.latents.items():
        rows = data.row_index(m)[pairs]
        x = np.zeros((len(pairs), source.shape[1]), np.float32)
        x[rows >= 0] = source[rows[rows >= 0]]
        latents[m], masks[m] = torch.from_numpy(x), torch.from_numpy(rows >= 0)
    return latents, masks


def _config(**overrides):
    base = dict(epochs=2, batch_size=32, lr=3e-3, warmup_steps=2, shared_dim=8, depth=1, expansion=2, dropout=0.0)
    base.update(device="cpu", eval_every=1, checkpoint_every=1, log_every=1)
    return TrainConfig(**{**base, **overrides})


# -- PairedLatents ---------------------------------------------------------------------------------------------------


def test_minus_one_marks_a_missing_modality_and_other_negatives_are_refused():
    img, txt, aud = np.ones((3, 2), np.float32), np.ones((4, 3), np.float32), np.ones((2, 5), np.float32)
    data = PairedLatents(
        {"image": img, "text": txt, "audio": aud}, rows={"image": [0, -1, 2, 1], "audio": [1, 0, -1, 1]}
    )
    assert not data.complete and len(data) == 4
    assert data.row_index("image").tolist() == [0, -1, 2, 1] and data.row_index("text").tolist() == [0, 1, 2, 3]
    masks = data.masks([3, 1, 2])
    assert {m: v.tolist() for m, v in masks.items()} == {
        "image": [True, False, True],
        "text": [True, True, True],  # paired by identity: always present
        "audio": [True, True, False],
    }
    assert masks["image"].dtype == torch.bool and "lacking a modality" in repr(data)
    complete = PairedLatents({"image": img, "text": txt}, rows={"image": [0, 1, 2, 2]})
    assert complete.complete and complete.masks([0, 1]) is None and complete.gather([0]).masks is None
    assert all(next(iter(LatentBatcher(complete, 2, preload=p))).masks is None for p in (True, False))

    with pytest.raises(ValueError, match=r"rows\['image'\]: indices must lie in \[0, 3\).*or be -1.*found \[-2\]$"):
        PairedLatents({"image": img, "text": txt}, rows={"image": [0, -2, 1, 2]})
    with pytest.raises(ValueError, match=r"found \[3, -1\] \(invalid: \[3\]\)"):
        PairedLatents({"image": img, "text": txt, "audio": aud[:1]}, rows={"image": [0, 3, -1, 1], "audio": [0] * 4})
    # Two modalities: a -1 leaves one, which is no pair.
    with pytest.raises(ValueError, match=r"rows: every pair needs at least two modalities, but 1 pair\(s\) have fewer"):
        PairedLatents({"image": img, "text": txt}, rows={"image": [0, 1, -1, 2]})
    with pytest.raises(
        ValueError, match=r"pairs \[1, 3\]\); pair 1 has only \['text'\] \(-1 in rows\['image'\], rows\['audio'\]\)"
    ):
        PairedLatents(
            {"image": img, "text": txt, "audio": aud}, rows={"image": [0, -1, 2, -1], "audio": [1, -1, 0, -1]}
        )
    with pytest.raises(ValueError, match="pair_indices"):
        data.masks([-1])  # -1 is a row marker, never a pair index


def test_subset_keeps_the_gaps_and_retrieval_uses_pairs_with_both_modalities():
    data = _three_modalities(n=40)
    has_image, has_audio = data.row_index("image") >= 0, data.row_index("audio") >= 0
    assert not has_image.all() and not has_audio.all() and (has_image | has_audio).all()
    picked = np.array([5, 0, 33, 17, 2, 21])
    sub = data.subset(picked)
    for m in DIMS:
        np.testing.assert_array_equal(sub.row_index(m), data.row_index(m)[picked])
    assert sub.complete == bool((has_image & has_audio)[picked].all())
    assert data.subset(np.flatnonzero(has_image & has_audio)).complete

    query, key, key_to_query = data.retrieval_task("image", "audio")
    both = np.flatnonzero(has_image & has_audio)
    assert len(query) == len(key) == len(both) and key_to_query.tolist() == list(range(len(both)))
    np.testing.assert_array_equal(query.numpy(), data.latents["image"][both])
    np.testing.assert_array_equal(key.numpy(), data.latents["audio"][both])
    assert len(data.retrieval_task("text", "audio")[1]) == int(has_audio.sum())
    lonely = PairedLatents(
        {"a": np.ones((2, 2)), "b": np.ones((2, 2)), "c": np.ones((2, 2))}, rows={"a": [0, -1], "c": [-1, 1]}
    )
    with pytest.raises(ValueError, match="key: no pair has both 'a' and 'c'"):
        lonely.retrieval_task("a", "c")


class RecordingStore:
    """An on-disk-store stand-in that records every index it is asked for."""

    def __init__(self, array):
        self.array, self.reads = array, []

    shape = property(lambda self: self.array.shape)
    dtype = property(lambda self: self.array.dtype)

    def __getitem__(self, index):
        self.reads.append(np.asarray(index).copy())
        return self.array[index]


@pytest.mark.parametrize("source", ["array", "store", "tensor"])
def test_gather_returns_zeros_for_missing_rows_and_never_reads_another_row(source):
    data = _three_modalities(n=30)
    wrap = {"array": lambda x: x, "store": RecordingStore, "tensor": torch.from_numpy}[source]
    sources = {m: wrap(x) for m, x in data.latents.items()}
    wrapped = PairedLatents(sources, rows={m: data.row_index(m) for m in DIMS})
    pairs = np.arange(30)[::-1]
    batch = wrapped.gather(pairs)
    latents, masks = _by_hand(data, pairs)
    assert isinstance(batch, LatentBatch) and list(batch) == list(DIMS)
    for m in DIMS:
        assert torch.equal(batch[m], latents[m]) and torch.equal(batch.masks[m], masks[m])
        assert batch[m].abs().max() < 10  # the HUGE last row was never read
        assert not batch[m][~masks[m]].any()
        if source == "store":
            read = np.concatenate(sources[m].reads)
            assert read.min() >= 0 and read.max() < 30
    only_missing = np.flatnonzero(data.row_index("audio") < 0)[:2]
    assert not wrapped.gather(only_missing)["audio"].any()  # a batch with no audio row at all


@pytest.mark.parametrize("preload", [True, False])
def test_batcher_batches_equal_gather_with_masks_in_both_paths(preload):
    data = _three_modalities(n=50)
    batcher = LatentBatcher(data, 16, seed=3, preload=preload, dtype=torch.float64)
    assert batcher.preloaded == preload
    for b, batch in enumerate(batcher):
        pairs = batcher.permutation(0)[b * 16 : (b + 1) * 16]
        expected = data.gather(pairs, dtype=torch.float64)
        assert isinstance(batch, LatentBatch) and batch.masks is not None
        for m in DIMS:
            assert torch.equal(batch[m], expected[m]) and torch.equal(batch.masks[m], expected.masks[m])
            assert batch[m].abs().max() < 10


@given(
    num_pairs=st.integers(12, 48),
    per_rank=st.sampled_from([2, 4]),
    world=st.integers(2, 3),
    preload=st.booleans(),
    seed=st.integers(0, 100),
)
def test_masks_are_sliced_per_rank_like_the_latents(num_pairs, per_rank, world, preload, seed):
    batch_size = per_rank * world
    if batch_size > num_pairs:
        return
    data = _three_modalities(n=num_pairs, seed=seed, missing=0.5)
    whole = list(LatentBatcher(data, batch_size, seed=seed, preload=preload))
    ranks = [
        list(LatentBatcher(data, batch_size, seed=seed, preload=preload, num_replicas=world, rank=r))
        for r in range(world)
    ]
    for i, batch in enumerate(whole):
        for m in DIMS:
            assert torch.equal(torch.cat([r[i].masks[m] for r in ranks]), batch.masks[m])
            assert torch.equal(torch.cat([r[i][m] for r in ranks]), batch[m])
        order = LatentBatcher(data, batch_size, seed=seed).permutation(0)
        for r, slices in enumerate(ranks):
            pairs = order[i * batch_size + r * per_rank :][:per_rank]
            assert all(torch.equal(slices[i].masks[m], data.masks(pairs)[m]) for m in DIMS)


# -- fit ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("augmentation", ["none", "fusemix"])
def test_first_step_loss_equals_the_masked_model_on_the_hand_built_batch(augmentation):
    train = _three_modalities(n=96)
    config = _config(epochs=1, augmentation=augmentation, seed=5)
    model = FusionModel.from_dims(train.dims, shared_dim=8, depth=1, expansion=2, dropout=0.0)
    reference = copy.deepcopy(model)
    losses = []
    fit(train, config, model=model, progress=False, callbacks=[lambda s: losses.append(s.loss)])

    pairs = LatentBatcher(train, 32, seed=5).permutation(0)[:32]
    latents, masks = _by_hand(train, pairs)
    if augmentation == "fusemix":
        mix = FuseMix(config.alpha, generator=torch.Generator().manual_seed(derived_seed(config.seed, 1)))
        latents, masks = mix(latents, masks=masks)
    with torch.no_grad():
        expected = reference(latents, masks=masks)
        # The masked loss is the mean, over modality pairs, of the plain loss on the rows that have both.
        features = {m: reference.project(m, x) for m, x in latents.items()}
        parts = []
        for a, b in combinations(DIMS, 2):
            both = masks[a] & masks[b]
            if int(both.sum()) >= 2:
                parts.append(reference.loss(features[a][both], features[b][both]))
        assert len(parts) == 3
    torch.testing.assert_close(losses[0], expected, rtol=0, atol=0)
    torch.testing.assert_close(losses[0], torch.stack(parts).mean(), rtol=1e-6, atol=1e-6)


class RecordingModel(FusionModel):
    """Keeps what each training step feeds the model."""

    seen: list

    def forward(self, batch, **kwargs):
        if self.training:
            self.seen.append(({m: x.detach().clone() for m, x in batch.items()}, kwargs.get("masks")))
        return super().forward(batch, **kwargs)


@pytest.mark.parametrize("pairing", ["halves", "permute"])
def test_present_rows_are_only_ever_mixed_with_present_rows(pairing):
    # Column 0 is 1.0 in every present row, so any convex mix of present rows keeps it; a zero row mixed in would not.
    train = _three_modalities(n=96, missing=0.5, constant_column=True, seed=2)
    adapters = FusionModel.from_dims(train.dims, shared_dim=8, depth=1, expansion=2, dropout=0.0).adapters
    model = RecordingModel(dict(adapters))
    model.seen = []
    fit(train, _config(epochs=2, pairing=pairing), model=model, progress=False)
    assert len(model.seen) == 6
    absent = 0
    for latents, masks in model.seen:
        assert masks is not None and set(masks) == set(DIMS)
        for m, x in latents.items():
            assert x.abs().max() < 10  # the HUGE row never reaches the model
            present = masks[m]
            torch.testing.assert_close(x[present, 0], torch.ones(int(present.sum())), rtol=0, atol=1e-6)
            absent += int((~present).sum())
    assert absent > 0  # some rows lacked a modality, so the check had something to catch


def _loss_decreases(result):
    epochs = [r["loss"] for r in result.history if r["kind"] == "epoch"]
    assert all(math.isfinite(v) for v in epochs) and epochs[-1] < epochs[0]


def test_three_modality_fit_learns_and_validates_on_pairs_with_both():
    train, val = _three_modalities(n=192, seed=0), _three_modalities(n=64, seed=1)
    config = _config(epochs=15, lr=1e-2, eval_every=5)
    result = fit(train, config, val=val, val_pair=("image", "audio"), progress=False)
    _loss_decreases(result)
    assert result.metrics == evaluate_retrieval(result.model, val, ("image", "audio"))
    both = np.flatnonzero((val.row_index("image") >= 0) & (val.row_index("audio") >= 0))
    assert result.metrics == evaluate_retrieval(result.model, val.subset(both), ("image", "audio"))
    assert result.metrics["i2a_R@1"] > 20 and result.metrics["a2i_R@1"] > 20  # chance: 100 / 41 = 2.4


@pytest.mark.parametrize(
    "overrides",
    [
        {"augmentation": "noise"},
        {"augmentation": "fusemix-independent", "per_sample_lambda": True},
        {"loss": "siglip", "structure_weight": 0.5, "preload": False},
        {"pairing": "permute", "alpha_schedule": "cosine", "alpha_end": 0.5, "warm_start": "procrustes"},
    ],
)
def test_every_augmentation_and_loss_takes_masks(overrides):
    train = _three_modalities(n=64)
    result = fit(train, _config(epochs=1, **overrides), val=train, progress=False)
    assert all(math.isfinite(r["loss"]) for r in result.history) and result.metrics is not None


def test_a_loss_without_masks_is_refused_before_training():
    class PlainLoss(nn.Module):
        def forward(self, features, return_dict=False):
            return sum(x.sum() for x in features.values())

    train = _three_modalities(n=64)
    model = FusionModel.from_dims(train.dims, shared_dim=4, depth=0, loss=PlainLoss())
    with pytest.raises(ValueError, match=r"model: its loss \(PlainLoss\) does not take masks"):
        fit(train, _config(epochs=1), model=model, progress=False)
    complete = train.subset(np.flatnonzero((train.row_index("image") >= 0) & (train.row_index("audio") >= 0)))
    fit(complete, _config(epochs=1, batch_size=16), model=model, progress=False)  # complete data needs no masks


def test_warm_start_fits_on_the_pairs_that_have_both_modalities():
    train = _three_modalities(n=96)
    config = _config(warm_start="cca")
    both = np.flatnonzero((train.row_index("image") >= 0) & (train.row_index("text") >= 0))
    model = FusionModel.from_dims(train.dims, shared_dim=8, depth=1, expansion=2, dropout=0.0)
    on_all, on_both = copy.deepcopy(model), copy.deepcopy(model)
    warm_start_from_config(on_all, train, config)
    warm_start_from_config(on_both, train.subset(both), config)
    a, b = on_all.state_dict(), on_both.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_run_with_missing_rows_resumes_to_the_same_weights(tmp_path):
    train, val = _three_modalities(n=96), _three_modalities(n=40, seed=1)
    config = _config(epochs=3, augmentation="fusemix", dropout=0.2)
    reference = fit(train, config, val=val, out_dir=tmp_path / "reference", progress=False)

    class Stop(Exception):
        pass

    def stop(state):
        if state.step == 5:  # inside epoch 1 (3 steps per epoch); the checkpoint of epoch 0 exists
            raise Stop

    with pytest.raises(Stop):
        fit(train, config, val=val, out_dir=tmp_path / "cut", progress=False, callbacks=[stop])
    resumed = fit(train, config, val=val, out_dir=tmp_path / "cut", progress=False)
    a, b = resumed.model.state_dict(), reference.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics == reference.metrics


# -- two ranks (torchrun, Gloo) ----------------------------------------------------------------------------------------

TWO_RANK_PLAIN = _config(epochs=2, augmentation="none", eval_every=0, checkpoint_every=0)
TWO_RANK_MIX = _config(epochs=2, augmentation="fusemix", dropout=0.2)


def test_two_ranks_with_missing_rows_end_at_the_single_process_weights(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv_backend=c10d"]
    cmd += ["--rdzv_endpoint=127.0.0.1:0", __file__, str(tmp_path)]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    # Each rank's half of every batch, masks included: the masked global loss and its gradients are those of one
    # process, so without augmentation or dropout the weights are the single-process weights.
    reference = fit(_three_modalities(n=96), TWO_RANK_PLAIN, progress=False).model.state_dict()
    got = load_model(tmp_path / "plain" / "model").state_dict()
    for name, value in reference.items():
        torch.testing.assert_close(got[name], value, atol=1e-5, rtol=0, msg=name)
    mixed = load_model(tmp_path / "mix" / "model")
    assert all(torch.isfinite(v).all() for v in mixed.state_dict().values())


def _two_rank_worker(work: str) -> None:
    torch.set_num_threads(1)
    train = _three_modalities(n=96)
    fit(train, TWO_RANK_PLAIN, out_dir=os.path.join(work, "plain"), progress=False)
    fit(train, TWO_RANK_MIX, val=train, val_pair=("image", "audio"), out_dir=os.path.join(work, "mix"), progress=False)


if __name__ == "__main__":
    _two_rank_worker(sys.argv[1])
