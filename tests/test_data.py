import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fusemix.data
from fusemix import retrieval_metrics
from fusemix.data import LatentBatcher, PairedLatents


def _coco_like(num_images=4, captions_per_image=5, seed=0):
    """Images and captions whose first column is their own row id (so pairings can be read back)."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((num_images, 6)).astype(np.float32)
    images[:, 0] = np.arange(num_images)
    num_captions = num_images * captions_per_image
    captions = rng.standard_normal((num_captions, 3)).astype(np.float32)
    captions[:, 0] = np.arange(num_captions)
    image_of_caption = rng.permutation(np.repeat(np.arange(num_images), captions_per_image))
    return images, captions, image_of_caption


class FakeStore:
    """A read-only on-disk-store stand-in: shape, numpy dtype, fancy __getitem__, to_tensor."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = array
        self.reads: list[np.ndarray] = []

    @property
    def shape(self):
        return self._array.shape

    @property
    def dtype(self):
        return self._array.dtype

    def __len__(self):
        return len(self._array)

    def __getitem__(self, index):
        index = np.asarray(index)
        assert index.dtype == np.int64 and index.ndim == 1
        self.reads.append(index)
        out = self._array[index]
        out.flags.writeable = False
        return out

    def to_tensor(self, dtype, device):
        return torch.from_numpy(self._array.copy()).to(device=device, dtype=dtype)


class PlainStore(FakeStore):
    """A store without to_tensor: preloading reads it in blocks through __getitem__."""

    to_tensor = None


# -- PairedLatents ---------------------------------------------------------------------------------------------------


def test_validation_errors_name_the_modality():
    img, txt = np.zeros((3, 2), np.float32), np.zeros((10, 4), np.float32)
    with pytest.raises(ValueError, match=r"rows\['image'\]: has 9 entries but rows\['text'\] has 10"):
        PairedLatents({"text": txt, "image": img}, rows={"text": np.arange(10), "image": np.zeros(9, int)})
    with pytest.raises(ValueError, match=r"latents\['text'\]: has 10 rows but no rows mapping and P=5"):
        PairedLatents({"image": img, "text": txt}, rows={"image": np.zeros(5, int)})
    with pytest.raises(ValueError, match=r"latents\['text'\]: has 10 rows but no rows mapping and latents\['image'\]"):
        PairedLatents({"image": img, "text": txt})
    with pytest.raises(ValueError, match=r"rows\['image'\]: indices must lie in \[0, 3\).*found \[3, -1\]"):
        PairedLatents({"image": img, "text": txt}, rows={"image": [0, 3, 1, -1, 0, 0, 0, 0, 0, 0]})
    with pytest.raises(TypeError, match=r"rows\['image'\]: expected integer"):
        PairedLatents({"image": img, "text": txt}, rows={"image": np.zeros(10)})
    with pytest.raises(TypeError, match=r"rows\['image'\]: expected integer"):
        PairedLatents({"image": img, "text": txt}, rows={"image": np.zeros(10, bool)})
    with pytest.raises(ValueError, match=r"rows\['image'\]: expected a 1-D"):
        PairedLatents({"image": img, "text": txt}, rows={"image": np.zeros((10, 1), int)})
    with pytest.raises(ValueError, match=r"rows: modalities \['audio'\] are not in latents"):
        PairedLatents({"image": img, "text": txt}, rows={"audio": np.zeros(10, int)})
    with pytest.raises(ValueError, match=r"latents\['image'\]: expected shape \(N, D\)"):
        PairedLatents({"image": np.zeros(3, np.float32), "text": txt})
    with pytest.raises(TypeError, match=r"latents\['image'\]: expected floating-point"):
        PairedLatents({"image": np.zeros((10, 2), np.int32), "text": txt})
    with pytest.raises(TypeError, match=r"latents\['image'\]: expected an array-like"):
        PairedLatents({"image": [[0.0]], "text": txt})
    with pytest.raises(ValueError, match="at least 2 modalities"):
        PairedLatents({"text": txt})
    with pytest.raises(ValueError, match="at least one pair"):
        PairedLatents({"image": img, "text": txt}, rows={"image": [], "text": []})


def test_properties_and_identity_pairing():
    a, b = np.ones((5, 3), np.float16), torch.zeros(5, 7, dtype=torch.float64)
    data = PairedLatents({"a": a, "b": b})
    assert data.modalities == ["a", "b"] and data.dims == {"a": 3, "b": 7} and len(data) == 5
    np.testing.assert_array_equal(data.row_index("a"), np.arange(5))
    out = data.gather(np.array([4, 0]))
    assert out["a"].dtype == torch.float32 and out["b"].dtype == torch.float32
    assert out["a"].shape == (2, 3) and out["b"].shape == (2, 7)
    assert data.gather([1], dtype=torch.float64)["a"].dtype == torch.float64
    with pytest.raises(ValueError, match="pair_indices"):
        data.gather([5])
    with pytest.raises(KeyError, match="modality"):
        data.row_index("c")


def test_gather_one_to_many_matches_a_hand_reference():
    images, captions, image_of_caption = _coco_like()
    data = PairedLatents({"image": images, "text": captions}, rows={"image": image_of_caption})
    pairs = np.array([7, 7, 0, 19, 3, 12])
    out = data.gather(pairs)
    expected_img = np.stack([images[image_of_caption[p]] for p in pairs])
    expected_txt = np.stack([captions[p] for p in pairs])
    np.testing.assert_array_equal(out["image"].numpy(), expected_img)
    np.testing.assert_array_equal(out["text"].numpy(), expected_txt)
    # Tensor and store sources give the same rows; the store is read at sorted, unique rows.
    store = FakeStore(images)
    same = PairedLatents({"image": store, "text": torch.from_numpy(captions)}, rows={"image": image_of_caption})
    out2 = same.gather(pairs)
    assert torch.equal(out2["image"], out["image"]) and torch.equal(out2["text"], out["text"])
    read = store.reads[-1]
    assert np.all(np.diff(read) > 0)


def test_subset_composes_and_shares_the_sources():
    images, captions, image_of_caption = _coco_like()
    store = FakeStore(captions)
    data = PairedLatents({"image": images, "text": store}, rows={"image": image_of_caption})
    sub = data.subset([5, 2, 9])
    assert len(sub) == 3 and sub.latents["text"] is store and sub.latents["image"] is images
    inner = sub.subset(np.array([2, 0]))
    for m in ("image", "text"):
        assert torch.equal(inner.gather([0, 1])[m], data.gather([9, 5])[m])


def test_retrieval_task_on_coco_like_data_equals_the_reference():
    images, captions, image_of_caption = _coco_like(num_images=6)
    # Pairs are shuffled and image 5 is never used: it must not appear among the queries.
    keep = np.flatnonzero(image_of_caption != 5)
    order = np.random.default_rng(1).permutation(keep)
    data = PairedLatents({"image": images, "text": captions[order]}, rows={"image": image_of_caption[order]})
    q, k, k2q = data.retrieval_task("image", "text")
    np.testing.assert_array_equal(q.numpy(), images[:5])
    np.testing.assert_array_equal(k.numpy(), captions[order])
    np.testing.assert_array_equal(k2q.numpy(), image_of_caption[order])
    # It plugs straight into retrieval_metrics; perfect embeddings give 100%.
    img_emb = torch.eye(5)
    txt_emb = img_emb[k2q]
    assert retrieval_metrics(img_emb, txt_emb, k2q)["mean"] == 100.0


def test_retrieval_task_with_rows_on_both_sides_and_conflicts():
    a = np.arange(8, dtype=np.float32).reshape(4, 2)
    b = np.arange(12, dtype=np.float32).reshape(6, 2)
    data = PairedLatents({"a": a, "b": b}, rows={"a": [3, 1, 3, 3], "b": [5, 0, 2, 5]})
    q, k, k2q = data.retrieval_task("a", "b")
    np.testing.assert_array_equal(q.numpy(), a[[1, 3]])
    np.testing.assert_array_equal(k.numpy(), b[[0, 2, 5]])
    assert k2q.tolist() == [0, 1, 1]
    bad = PairedLatents({"a": a, "b": b}, rows={"a": [3, 1, 3, 0], "b": [5, 0, 2, 5]})
    with pytest.raises(ValueError, match=r"key: row 5 of 'b' is paired with several rows of 'a' \(\[0, 3\]\)"):
        bad.retrieval_task("a", "b")
    with pytest.raises(ValueError, match="key: must differ"):
        data.retrieval_task("a", "a")
    with pytest.raises(KeyError, match="query"):
        data.retrieval_task("c", "a")


def test_a_caption_shared_by_several_images_is_refused_with_the_way_out():
    data = PairedLatents({"image": np.eye(3), "text": np.eye(2)}, rows={"text": [0, 1, 0]})
    with pytest.raises(ValueError, match=r"key: row 0 of 'text' is paired with several .* key_groups='row'"):
        data.retrieval_task("image", "text")


def test_key_groups_row_repeats_a_shared_caption_once_per_image_and_groups_its_copies():
    images = np.eye(4, dtype=np.float32)
    captions = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=np.float32)
    audio = np.ones((6, 2), dtype=np.float32)
    # pairs: image 0 - caption 0, image 1 - caption 1, image 2 - caption 0 (image 0's caption, stored once),
    # image 3 - caption 2, image 1 - caption 2, and a pair without an image (left out)
    rows = {"image": [0, 1, 2, 3, 1, -1], "text": [0, 1, 0, 2, 2, 1]}
    data = PairedLatents({"image": images, "text": captions, "audio": audio}, rows=rows)
    q, k, k2q, groups = data.retrieval_task("image", "text", key_groups="row")
    np.testing.assert_array_equal(q.numpy(), images)
    # items sorted by caption row, then image: (0, 0), (0, 2), (1, 1), (2, 1), (2, 3)
    np.testing.assert_array_equal(k.numpy(), captions[[0, 0, 1, 2, 2]])
    assert k2q.tolist() == [0, 2, 1, 1, 3] and groups.tolist() == [0, 0, 1, 2, 2]
    # Scores (image rows, item columns): [1, 1, 0, .5, .5], [0, 0, 1, .5, .5], [1, 1, 0, .5, .5], [.6] * 5
    img_emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.6]])
    plain = retrieval_metrics(img_emb, k, k2q, ks=(1,))
    grouped = retrieval_metrics(img_emb, k, k2q, ks=(1,), text_groups=groups)
    # plain: images 0 and 2 tie with the other copy of caption 0, image 3 with everything; items 0, 1 tie between
    # images 0 and 2, item 3 (image 1) loses to image 3
    assert plain["i2t_R@1"] == 25.0 and plain["t2i_R@1"] == 40.0
    # grouped: only image 3 still ties (with captions 0 and 1, which are not its own)
    assert grouped["i2t_R@1"] == 75.0 and grouped["t2i_R@1"] == 100.0


@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 30), st.integers(0, 2**31 - 1))
def test_key_groups_row_gives_every_distinct_pair_once(num_images, num_captions, num_pairs, seed):
    rng = np.random.default_rng(seed)
    images = np.arange(num_images, dtype=np.float32)[:, None].repeat(2, 1)  # row id in every column
    captions = np.arange(num_captions, dtype=np.float32)[:, None].repeat(3, 1)
    rows = {"image": rng.integers(0, num_images, num_pairs), "text": rng.integers(0, num_captions, num_pairs)}
    q, k, k2q, groups = PairedLatents({"image": images, "text": captions}, rows=rows).retrieval_task(
        "image", "text", key_groups="row"
    )
    got = {(int(q[i, 0]), int(k[j, 0])) for j, i in enumerate(k2q.tolist())}
    assert got == set(zip(rows["image"].tolist(), rows["text"].tolist())) and len(got) == len(k2q)
    assert groups.tolist() == np.unique(k[:, 0].numpy(), return_inverse=True)[1].tolist()  # one group per caption row


def test_key_groups_value_and_labels_group_identical_captions_stored_once_per_pair():
    images = np.eye(3, dtype=np.float32)
    captions = np.array([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]], dtype=np.float32)  # "dog" encoded twice
    data = PairedLatents({"image": images, "text": captions})
    q, k, k2q = data.retrieval_task("image", "text")
    by_value = data.retrieval_task("image", "text", key_groups="value")
    by_label = data.retrieval_task("image", "text", key_groups=["dog", "cat", "dog"])
    by_row = data.retrieval_task("image", "text", key_groups="row")
    for task in (by_value, by_label, by_row):
        assert all(torch.equal(a, b) for a, b in zip(task[:3], (q, k, k2q)))  # no shared row: the plain task
    assert by_value[3].tolist() == [0, 1, 0] and by_label[3].tolist() == [1, 0, 1] and by_row[3].tolist() == [0, 1, 2]
    labels = np.array(["dog", "cat", "dog", "bird"])  # one per caption row; an unused row is fine
    with pytest.raises(ValueError, match=r"key_groups: expected 'row', 'value' or one label per row .* \(3,\)"):
        data.retrieval_task("image", "text", key_groups=labels)
    with pytest.raises(ValueError, match="key_groups: expected one of"):
        data.retrieval_task("image", "text", key_groups="caption")


# -- LatentBatcher ---------------------------------------------------------------------------------------------------


def _epoch_pairs(batcher):
    """The pair ids of every batch of one epoch, read back from the id column of modality 'text'."""
    return [b["text"][:, 0].to(torch.int64).numpy() for b in batcher]


@given(st.integers(1, 40), st.integers(1, 12), st.booleans(), st.integers(0, 3))
def test_every_pair_exactly_once_per_epoch(num_images, batch_size, shuffle, seed):
    images, captions, image_of_caption = _coco_like(num_images, 2, seed)
    data = PairedLatents({"image": images, "text": captions}, rows={"image": image_of_caption})
    batcher = LatentBatcher(data, batch_size, shuffle=shuffle, drop_last=False, seed=seed, preload=False)
    batches = list(batcher)
    assert len(batches) == len(batcher) == -(-len(data) // batch_size)
    seen = np.concatenate([b["text"][:, 0].numpy() for b in batches]).astype(int)
    np.testing.assert_array_equal(np.sort(seen), np.arange(len(data)))
    if not shuffle:
        np.testing.assert_array_equal(seen, np.arange(len(data)))
    for b in batches:
        assert b["image"].shape[1] == 6 and b["text"].shape[1] == 3 and b["image"].dtype == torch.float32
        # Pairing is kept: the image of each row is the image of its caption.
        np.testing.assert_array_equal(b["image"][:, 0].numpy(), image_of_caption[b["text"][:, 0].numpy().astype(int)])
    assert all(len(b["text"]) == batch_size for b in batches[:-1])


def test_drop_last_batches_are_full_and_too_large_batches_are_refused():
    images, captions, rows = _coco_like(5, 2)
    data = PairedLatents({"image": images, "text": captions}, rows={"image": rows})
    batcher = LatentBatcher(data, 4)
    assert len(batcher) == 2 and [len(b["text"]) for b in batcher] == [4, 4]
    with pytest.raises(ValueError, match="batch_size: 11 exceeds the 10 pairs"):
        LatentBatcher(data, 11)
    assert len(LatentBatcher(data, 11, drop_last=False)) == 1
    with pytest.raises(ValueError, match="preload"):
        LatentBatcher(data, 2, preload="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        LatentBatcher(data, 2, seed=-1)


def test_epochs_are_reproducible_from_seed_and_epoch_alone():
    images, captions, rows = _coco_like(8, 3)
    data = PairedLatents({"image": images, "text": captions}, rows={"image": rows})
    replay = LatentBatcher(data, 5, seed=7)
    epochs = [_epoch_pairs(replay) for _ in range(4)]
    assert replay.epoch == 4 and replay.batch_index == 0
    direct = LatentBatcher(data, 5, seed=7)
    direct.set_epoch(3)
    assert all(np.array_equal(x, y) for x, y in zip(_epoch_pairs(direct), epochs[3]))
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))
    other_seed = LatentBatcher(data, 5, seed=8)
    assert not np.array_equal(np.concatenate(_epoch_pairs(other_seed)), np.concatenate(epochs[0]))
    np.testing.assert_array_equal(direct.permutation(2), replay.permutation(2))


@given(st.integers(2, 30), st.integers(1, 7), st.integers(0, 50), st.booleans())
def test_resume_from_state_dict_mid_epoch_yields_the_remaining_batches(num_pairs, batch_size, cut, drop_last):
    rng = np.random.default_rng(num_pairs)
    text = rng.standard_normal((num_pairs, 2)).astype(np.float32)
    text[:, 0] = np.arange(num_pairs)
    data = PairedLatents({"image": rng.standard_normal((num_pairs, 3)), "text": text})
    batch_size = min(batch_size, num_pairs)
    full = LatentBatcher(data, batch_size, seed=3, drop_last=drop_last)
    reference = [_epoch_pairs(full) for _ in range(3)]
    flat = [b for epoch in reference for b in epoch]
    cut = cut % (len(flat) + 1)
    interrupted = LatentBatcher(data, batch_size, seed=3, drop_last=drop_last)
    it = iter(interrupted)
    consumed = []
    while len(consumed) < cut:
        try:
            consumed.append(next(it)["text"][:, 0].to(torch.int64).numpy())
        except StopIteration:
            it = iter(interrupted)
    state = interrupted.state_dict()
    resumed = LatentBatcher(data, batch_size, seed=3, drop_last=drop_last, preload=False)
    resumed.load_state_dict(state)
    rest = []
    while resumed.epoch < 3:
        rest.extend(_epoch_pairs(resumed))
    assert len(consumed) + len(rest) == len(flat)
    assert all(np.array_equal(x, y) for x, y in zip(consumed + rest, flat))


def test_load_state_dict_refuses_other_settings():
    data = PairedLatents({"a": np.zeros((10, 2)), "b": np.zeros((10, 2))})
    state = LatentBatcher(data, 4, seed=1).state_dict()
    with pytest.raises(ValueError, match=r"seed=1 \(here 2\)"):
        LatentBatcher(data, 4, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size"):
        LatentBatcher(data, 5, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_index"):
        LatentBatcher(data, 4, seed=1).load_state_dict({**state, "batch_index": 9})
    with pytest.raises(KeyError, match="epoch"):
        LatentBatcher(data, 4, seed=1).load_state_dict({"batch_index": 0})


def test_memmap_and_store_paths_equal_the_in_memory_path(tmp_path, monkeypatch):
    images, captions, rows = _coco_like(30, 5, seed=4)
    path = tmp_path / "captions.f16"
    on_disk = np.memmap(path, dtype=np.float16, mode="w+", shape=captions.shape)
    on_disk[:] = captions
    on_disk.flush()
    read_only = np.memmap(path, dtype=np.float16, mode="r", shape=captions.shape)
    in_memory = PairedLatents({"image": images, "text": captions.astype(np.float16)}, rows={"image": rows})
    store = FakeStore(images)
    mapped = PairedLatents({"image": store, "text": read_only}, rows={"image": rows})
    a = LatentBatcher(in_memory, 16, seed=5, drop_last=False)
    b = LatentBatcher(mapped, 16, seed=5, drop_last=False)
    assert a.preloaded and not b.preloaded  # "auto": in-memory preloads on CPU, memmaps/stores stream
    for _ in range(2):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x["image"], y["image"]) and torch.equal(x["text"], y["text"])
            assert x["text"].dtype == torch.float32
    # Preloading a store goes through its to_tensor; a memmap, or a store without to_tensor, is copied in blocks.
    monkeypatch.setattr(fusemix.data, "LOAD_BLOCK_BYTES", 100)
    plain = PlainStore(images)
    for sources in ({"image": store, "text": read_only}, {"image": plain, "text": read_only}):
        c = LatentBatcher(PairedLatents(sources, rows={"image": rows}), 16, seed=5, drop_last=False, preload=True)
        assert c._device_latents["text"].dtype == torch.float16
        a.set_epoch(0)
        for x, y in zip(a, c, strict=True):
            assert torch.equal(x["image"], y["image"]) and torch.equal(x["text"], y["text"])
    assert len(plain.reads) == -(-len(images) // (100 // (6 * 4)))


@given(
    st.integers(1, 12),
    st.integers(1, 4),
    st.integers(1, 9),
    st.booleans(),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_preload_path_equals_streaming_path(num_images, per_image, batch_size, drop_last, dtype):
    images, captions, rows = _coco_like(num_images, per_image, seed=num_images)
    data = PairedLatents({"image": images.astype(np.float64), "text": torch.from_numpy(captions)}, rows={"image": rows})
    batch_size = min(batch_size, len(data))
    pre = LatentBatcher(data, batch_size, seed=2, drop_last=drop_last, dtype=dtype, preload=True)
    stream = LatentBatcher(data, batch_size, seed=2, drop_last=drop_last, dtype=dtype, preload=False)
    for x, y in zip(pre, stream, strict=True):
        assert set(x) == {"image", "text"}
        for m in x:
            assert x[m].dtype == dtype and torch.equal(x[m], y[m])


# -- LatentBatcher(reuse_buffers=True) -------------------------------------------------------------------------------


def _source(kind: str, array: np.ndarray, directory):
    """``array`` as the latent source ``kind``: in-memory array, read-only memmap, store stand-in or tensor."""
    if kind == "array":
        return array
    if kind == "tensor":
        return torch.from_numpy(array.copy())
    if kind == "store":
        return PlainStore(array)
    path = directory / "latents.bin"
    mapped = np.memmap(path, dtype=array.dtype, mode="w+", shape=array.shape)
    mapped[:] = array
    mapped.flush()
    return np.memmap(path, dtype=array.dtype, mode="r", shape=array.shape)


def _assert_same_batch(new, reused):
    assert list(new) == list(reused)
    for m in new:
        assert new[m].dtype == reused[m].dtype and torch.equal(new[m], reused[m]), m
    assert (new.masks is None) == (reused.masks is None)
    for m in new.masks or {}:
        assert torch.equal(new.masks[m], reused.masks[m]), m


@given(st.data())
def test_reused_buffers_give_the_batches_of_new_ones(tmp_path_factory, data):
    draw = data.draw
    num_images, per_image = draw(st.integers(1, 5), label="images"), draw(st.integers(1, 4), label="captions each")
    num_pairs = num_images * per_image
    rng = np.random.default_rng(num_pairs)
    kinds = st.sampled_from(["array", "memmap", "store", "tensor"])
    stored = st.sampled_from([np.float16, np.float32, np.float64])
    arrays = {"image": (num_images, 5), "text": (num_pairs, 3)}
    rows = {"image": rng.permutation(np.repeat(np.arange(num_images), per_image))}  # one image, several captions
    if draw(st.booleans(), label="missing modalities"):
        arrays["audio"] = (num_pairs + 1, 4)
        rows["audio"] = rng.permutation(num_pairs)
        lacking = draw(st.lists(st.sampled_from(["none", "image", "audio"]), min_size=num_pairs, max_size=num_pairs))
        for m in ("image", "audio"):  # text pairs by identity, so every pair keeps at least two modalities
            rows[m][np.array(lacking) == m] = -1
    directory = tmp_path_factory.mktemp("latents")
    latents = {}
    for m, shape in arrays.items():
        (directory / m).mkdir()
        array = rng.standard_normal(shape).astype(draw(stored, label=f"{m} dtype"))
        latents[m] = _source(draw(kinds, label=f"{m} source"), array, directory / m)
    paired = PairedLatents(latents, rows=rows)
    replicas = draw(st.sampled_from([1, 2]) if num_pairs >= 2 else st.just(1), label="num_replicas")
    drop_last = replicas > 1 or draw(st.booleans(), label="drop_last")
    largest = num_pairs // replicas if drop_last else num_pairs + 2
    batch_size = replicas * draw(st.integers(1, largest), label="batch size / replicas")
    settings = dict(
        batch_size=batch_size,
        shuffle=draw(st.booleans(), label="shuffle"),
        drop_last=drop_last,
        seed=draw(st.integers(0, 3), label="seed"),
        dtype=draw(st.sampled_from([torch.float16, torch.float32, torch.float64]), label="dtype"),
        preload=draw(st.booleans(), label="preload"),
        num_replicas=replicas,
        rank=draw(st.integers(0, replicas - 1), label="rank"),
    )
    new = LatentBatcher(paired, **settings)
    reused = LatentBatcher(paired, **settings, reuse_buffers=True)
    assert not new.reuse_buffers and reused.reuse_buffers
    for _ in range(3):  # zip compares each pair of batches before the reused one is overwritten
        for a, b in zip(new, reused, strict=True):
            _assert_same_batch(a, b)
    assert new.state_dict() == reused.state_dict()


@pytest.mark.parametrize("preload", [True, False])
def test_reused_buffers_are_the_same_tensors_and_the_next_batch_overwrites_them(preload):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((4, 6)).astype(np.float16)  # float16 -> float32: gathered, then cast
    audio = rng.standard_normal((11, 2)).astype(np.float32)
    rows = {"image": np.array([0, 1, 2, 3, 0, 1, 2, 3, -1, 0, 1]), "audio": np.array([0, -1, *range(2, 11)])}
    paired = PairedLatents({"image": images, "text": rng.standard_normal((11, 3)), "audio": audio}, rows=rows)
    batcher = LatentBatcher(paired, 4, drop_last=False, preload=preload, reuse_buffers=True, seed=1)
    assert len(batcher) == 3  # 4 + 4 + a last batch of 3 rows
    pointers = set()
    for _ in range(2):
        batches = iter(batcher)
        held = next(batches)
        kept = {m: x.clone() for m, x in held.items()}
        for following in batches:  # each next() writes into the held batch's tensors
            rows_now = len(following["text"])
            for m, x in following.items():
                pointers.add((m, x.data_ptr()))
                assert x.data_ptr() == held[m].data_ptr() and torch.equal(held[m][:rows_now], x)
                assert following.masks[m].data_ptr() == held.masks[m].data_ptr()
            assert not torch.equal(held["text"], kept["text"])  # the batch held from before is gone
        assert rows_now == 3 and len(held["text"]) == 4  # the smaller last batch is a view of the same buffers
    assert len(pointers) == 3  # one buffer per modality for every batch of both epochs
    # Without reuse_buffers a held batch stays as it was.
    batches = iter(LatentBatcher(paired, 4, drop_last=False, preload=preload, seed=1))
    held = next(batches)
    kept = {m: x.clone() for m, x in held.items()}
    for _ in batches:
        assert all(torch.equal(held[m], kept[m]) for m in held)


def test_a_tensor_source_that_requires_grad_gives_detached_batches():
    # Batches are written into tensors with out=, which autograd refuses for inputs that require grad.
    latents = {"image": torch.randn(6, 3, requires_grad=True), "text": torch.randn(6, 2)}
    plain = PairedLatents({m: x.detach().clone() for m, x in latents.items()})
    for preload in (True, False):
        for reuse in (True, False):
            batcher = LatentBatcher(PairedLatents(latents), 3, preload=preload, reuse_buffers=reuse)
            for a, b in zip(batcher, LatentBatcher(plain, 3), strict=True):
                assert not a["image"].requires_grad and torch.equal(a["image"], b["image"])


# -- LatentBatcher(reuse_buffers=True) streaming from a LatentStore ---------------------------------------------------


def test_reused_buffers_from_a_store_equal_new_ones_and_are_read_into_kept_buffers(tmp_path, monkeypatch):
    from fusemix.store import LatentStore, write_store

    rng = np.random.default_rng(3)
    images = write_store(tmp_path / "image", rng.standard_normal((7, 6)), modality="image", encoder={}, shard_size=3)
    texts = write_store(tmp_path / "text", rng.standard_normal((21, 4)), modality="text", encoder={}, shard_size=5)
    rows = {"image": rng.permutation(np.repeat(np.arange(7), 3))}  # one image, three captions: duplicate rows
    paired = PairedLatents({"image": images, "text": texts}, rows=rows)
    outs: list[tuple[str, int]] = []
    read_rows = LatentStore.read_rows

    def spy(self, index, out=None):
        assert out is not None  # with reuse_buffers every store read goes into a kept buffer
        outs.append((self.modality, out.ctypes.data))
        return read_rows(self, index, out=out)

    for dtype in (torch.float16, torch.float32):  # float16 is the store's dtype (no cast), float32 is cast after
        settings = dict(batch_size=4, drop_last=False, preload=False, seed=2, dtype=dtype)
        new = LatentBatcher(paired, **settings)
        reused = LatentBatcher(paired, **settings, reuse_buffers=True)
        monkeypatch.setattr(LatentStore, "read_rows", spy)
        outs.clear()
        pointers = set()
        for _ in range(2):
            for a, b in zip(new, reused, strict=True):  # the default batcher indexes the store (no read_rows)
                _assert_same_batch(a, b)
                pointers.update((m, x.data_ptr()) for m, x in b.items())
        monkeypatch.undo()
        assert len(outs) == 2 * 2 * len(reused)  # both modalities, every batch, two epochs
        first, second = outs[: len(outs) // 2], outs[len(outs) // 2 :]
        # Rows that come sorted are read into the staged buffer, others into the "fetched" one: at most two
        # kept buffers per modality, the same ones in both epochs, and one result tensor per modality.
        assert set(second) <= set(first) and len(set(first)) <= 4 and {m for m, _ in first} == {"image", "text"}
        assert len(pointers) == 2


def test_rows_give_back_the_pairing():
    images, captions = np.random.randn(2, 4).astype(np.float32), np.random.randn(5, 3).astype(np.float32)
    data = PairedLatents({"image": images, "text": captions}, rows={"image": [0, 0, 0, 1, 1]})
    assert list(data.rows) == ["image"] and data.rows["image"].tolist() == [0, 0, 0, 1, 1]
    data.rows["image"][0] = 1  # a copy: the pairing stays as it is
    again = PairedLatents(data.latents, data.rows)
    assert again.row_index("image").tolist() == data.row_index("image").tolist() == [0, 0, 0, 1, 1]
    assert torch.equal(again.gather([0, 4])["image"], data.gather([0, 4])["image"])


# -- finite latents ---------------------------------------------------------------------------------------------------

_SPECIALS = [0.0, -0.0, 1.0, -1.0, 6e-8, -6e-8, 65504.0, -65504.0, 1e30, -1e30, *map(float, ("inf", "-inf", "nan"))]


@given(
    st.sampled_from([torch.float16, torch.float32, torch.float64]),
    st.lists(st.sampled_from(_SPECIALS), min_size=1, max_size=12),
    st.booleans(),
)
def test_all_finite_reads_the_bits_as_isfinite_does(dtype, values, negative_nan):
    from fusemix._batch_reads import all_finite

    tensor = torch.tensor(values, dtype=torch.float64).to(dtype).reshape(1, -1)
    if negative_nan:  # a NaN with its sign bit set
        tensor = torch.cat([tensor, -torch.tensor([[float("nan")]], dtype=dtype).abs().neg()], dim=1)
    assert all_finite(tensor) == bool(torch.isfinite(tensor).all())


def _corrupted_store(path, rows, bad_row):
    """A store of ``rows`` whose shard file gets a NaN at ``bad_row`` afterwards (the quick check does not see it)."""
    from fusemix.store import LatentStore, write_store

    store = write_store(path, rows, modality="image", encoder={"name": "toy"}, shard_size=16)
    shard = np.load(path / "shards" / f"{bad_row // 16:05d}.npy", mmap_mode="r+")
    shard[bad_row % 16, 2] = np.nan
    shard.flush()
    del shard, store
    return LatentStore.open(path)


@pytest.mark.parametrize("preload", [False, True])
def test_a_non_finite_latent_is_refused_naming_the_store_modality_and_row(tmp_path, preload):
    rows = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    store = _corrupted_store(tmp_path / "image", rows, bad_row=21)
    data = PairedLatents({"image": store, "text": rows[:, :3].copy()})
    refused = rf"latents\['image'\]: row 21 of the latent store {tmp_path / 'image'} holds NaN or Inf"
    with pytest.raises(ValueError, match=refused):
        list(LatentBatcher(data, batch_size=8, preload=preload))  # streamed: when the batch with row 21 is read
    with pytest.raises(ValueError, match=refused):
        data.retrieval_task("image", "text")
    with pytest.raises(ValueError, match=refused):
        data.gather(np.arange(18, 25))
    batches = LatentBatcher(data.subset(np.arange(16)), batch_size=8, preload=False)  # rows that are all finite
    assert len(list(batches)) == 2


def test_a_non_finite_latent_in_memory_is_refused_when_preloaded(tmp_path):
    text = np.random.default_rng(0).standard_normal((12, 3)).astype(np.float32)
    text[7, 1] = np.inf
    with pytest.raises(ValueError, match=r"latents\['text'\]: row 7 of the ndarray holds NaN or Inf"):
        LatentBatcher(PairedLatents({"image": np.ones((12, 2), np.float32), "text": text}), batch_size=4, preload=True)
    np.save(tmp_path / "text.npy", text)
    mapped = np.load(tmp_path / "text.npy", mmap_mode="r")
    rows = {"text": np.array([3, 7, 7, 0])}  # pairs 1 and 2 read row 7 of the memory map
    data = PairedLatents({"image": np.ones((4, 2), np.float32), "text": mapped}, rows)
    with pytest.raises(ValueError, match=rf"row 7 of the memory map {tmp_path / 'text.npy'} holds NaN or Inf"):
        next(iter(LatentBatcher(data, batch_size=4, shuffle=False, preload=False)))


def test_streaming_checks_each_row_once(tmp_path, monkeypatch):
    import fusemix._batch_reads as batch_reads

    calls = []
    checked = batch_reads.check_finite_rows
    monkeypatch.setattr(
        batch_reads, "check_finite_rows", lambda values, *rest: calls.append(len(values)) or checked(values, *rest)
    )
    np.save(tmp_path / "a.npy", np.random.default_rng(0).standard_normal((24, 3)).astype(np.float32))
    data = PairedLatents({"a": np.load(tmp_path / "a.npy", mmap_mode="r"), "b": np.zeros((24, 2), np.float32)})
    batcher = LatentBatcher(data, batch_size=8, preload=False, seed=0)
    list(batcher)
    assert calls == [8, 8] * 3  # both modalities of every batch of the first epoch
    list(batcher)
    assert len(calls) == 6  # every row was checked once: the second epoch checks nothing
    assert len(data.gather(np.arange(8))) == 2 and len(calls) == 8  # one-off reads check what they read
