"""Readers of the paper's image-text datasets, on miniature copies written in the real on-disk formats."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fixtures_image_text as fx
import fusemix
from _examples import import_example

itd = import_example("replication.image_text_data")


def _captions_of(dataset, image: int) -> list[str]:
    return [c for c, i in zip(dataset.captions, dataset.caption_to_image) if i == image]


# --------------------------------------------------------------------------- COCO / Flickr30K (Karpathy)


def _coco_expected(split_names: set[str], limit: int | None) -> list[tuple[str, list[str]]]:
    """(relative image path, captions) per image, from the fixture spec alone."""
    expected = []
    for split, folder, cocoid, count, _ in fx.COCO_SPEC:
        if split not in split_names:
            continue
        captions = [fx.coco_caption(cocoid, k) + ("." if k == 0 else "") for k in range(count)]
        expected.append((f"{folder}/{fx.coco_filename(folder, cocoid)}", captions[:limit]))
    return expected


@pytest.mark.parametrize(
    ("split", "names", "limit"),
    [("train", {"train", "restval"}, None), ("val", {"val"}, 5), ("test", {"test"}, 5)],
)
def test_coco_split_membership_order_and_caption_mapping(tmp_path, split, names, limit):
    root = fx.make_coco(tmp_path / "coco")
    ds = itd.read_coco(root, split)
    expected = _coco_expected(names, limit)
    assert ds.name == f"coco/{split}"
    assert [p.relative_to(root).as_posix() for p in ds.image_paths] == [path for path, _ in expected]
    assert ds.captions == [c for _, captions in expected for c in captions]
    for image, (_, captions) in enumerate(expected):
        assert _captions_of(ds, image) == captions
    assert ds.caption_to_image.dtype == np.int64
    assert all(p.is_file() for p in ds.image_paths)


def test_coco_train_includes_restval_and_keeps_every_caption(tmp_path):
    ds = itd.read_coco(fx.make_coco(tmp_path), "train")
    assert ds.num_images == 3  # train 9, restval 73, train 25
    assert any("000000000073" in p.name for p in ds.image_paths)
    assert ds.num_captions == 5 + 6 + 5
    assert ds.skipped == {}


def test_coco_test_keeps_first_five_captions_and_counts_the_rest(tmp_path):
    root = fx.make_coco(tmp_path)
    ds = itd.read_coco(root, "test")
    assert ds.num_images == 3
    assert ds.num_captions == 15
    assert np.bincount(ds.caption_to_image).tolist() == [5, 5, 5]
    assert ds.skipped == {"coco/test: captions beyond the first 5 per image": 2 + 1}
    everything = itd.read_coco(root, "test", max_captions_per_image=None)
    assert np.bincount(everything.caption_to_image).tolist() == [5, 7, 6]
    assert everything.skipped == {}
    assert itd.read_coco(root, "train", max_captions_per_image=5).num_captions == 15


def test_karpathy_captions_are_stripped_raw_sentences(tmp_path):
    ds = itd.read_coco(fx.make_coco(tmp_path), "test")
    assert ds.captions[0] == "coco 391895 caption 0."
    assert all(c == c.strip() for c in ds.captions)


def test_flickr30k_test_split(tmp_path):
    root = fx.make_flickr30k(tmp_path / "flickr30k")
    ds = itd.read_flickr30k(root, "test")
    ids = [fid for split, fid, _ in fx.FLICKR_SPEC if split == "test"]
    assert ds.image_paths == [root / "flickr30k-images" / f"{fid}.jpg" for fid in ids]
    assert ds.captions == [fx.flickr_caption(fid, k) for fid in ids for k in range(5)]
    assert ds.caption_to_image.tolist() == [0] * 5 + [1] * 5
    assert itd.read_flickr30k(root, "train").num_images == 2


def test_karpathy_explicit_paths(tmp_path):
    root = fx.make_flickr30k(tmp_path / "somewhere")
    moved = tmp_path / "annotations" / "flickr.json"
    moved.parent.mkdir()
    (root / "dataset_flickr30k.json").rename(moved)
    ds = itd.read_flickr30k(tmp_path / "unused", "val", annotation=moved, image_dir=root / "flickr30k-images")
    assert ds.num_images == 1 and ds.num_captions == 5


def test_karpathy_missing_test_image_raises_or_is_counted(tmp_path):
    root = fx.make_coco(tmp_path)
    lost = root / "val2014" / fx.coco_filename("val2014", 74)
    lost.unlink()
    with pytest.raises(FileNotFoundError, match="1 image.*missing.*000000000074"):
        itd.read_coco(root, "test")
    ds = itd.read_coco(root, "test", missing_images="skip")
    assert ds.num_images == 2
    assert ds.skipped["coco/test: images missing on disk"] == 1


def test_karpathy_bad_arguments_and_files(tmp_path):
    root = fx.make_coco(tmp_path)
    with pytest.raises(ValueError, match="^split"):
        itd.read_coco(root, "restval")
    with pytest.raises(ValueError, match="^max_captions_per_image"):
        itd.read_coco(root, "test", max_captions_per_image=0)
    with pytest.raises(ValueError, match="^max_captions_per_image"):
        itd.read_coco(root, "test", max_captions_per_image="all")
    with pytest.raises(FileNotFoundError, match="dataset_coco.json: Karpathy split file not found"):
        itd.read_coco(tmp_path / "nowhere", "test")
    (root / "dataset_coco.json").write_text('{"images": [', encoding="utf-8")
    with pytest.raises(ValueError, match="dataset_coco.json: not valid JSON"):
        itd.read_coco(root, "test")


def test_karpathy_image_ids(tmp_path):
    coco = fx.make_coco(tmp_path / "coco")
    flickr = fx.make_flickr30k(tmp_path / "flickr30k")
    assert itd.karpathy_image_ids(coco / "dataset_coco.json") == {42, 391895, 74, 133}
    assert itd.karpathy_image_ids(flickr / "dataset_flickr30k.json", ["test"]) == {1000268201, 1000366164}


def test_coco_test_feeds_retrieval_metrics(tmp_path):
    ds = itd.read_coco(fx.make_coco(tmp_path), "test")
    image_emb = torch.eye(ds.num_images)
    text_emb = image_emb[torch.as_tensor(ds.caption_to_image)] + 0.01 * torch.rand(ds.num_captions, ds.num_images)
    metrics = fusemix.retrieval_metrics(image_emb, text_emb, ds.caption_to_image, ks=(1,))
    assert metrics["i2t_R@1"] == 100.0 and metrics["t2i_R@1"] == 100.0


# --------------------------------------------------------------------------- CC3M


def test_cc3m_img2dataset_layout(tmp_path):
    root = fx.make_cc3m(tmp_path / "cc3m")
    ds = itd.read_cc3m(root)
    rows = [r for r in range(len(fx.CC3M_ROWS)) if r not in fx.CC3M_IMG2DATASET_FAILED_ROWS]
    assert ds.captions == [fx.CC3M_ROWS[r][0] for r in rows]  # row 4's caption comes from its .json
    shard_keys = [fx.img2dataset_key(r) for r in rows]
    assert ds.image_paths == [root / "images" / shard / f"{key}.jpg" for shard, key in shard_keys]
    assert ds.caption_to_image.tolist() == list(range(len(rows)))
    assert ds.skipped == {"cc3m: not downloaded (img2dataset stats)": 1}


def test_img2dataset_failed_status_and_orphans_are_skipped_and_counted(tmp_path):
    images = fx.make_cc3m(tmp_path / "cc3m") / "images"
    sidecar = images / "00000" / "000000002.json"
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "status": "failed_to_resize"}))
    (images / "00001" / "000010000.jpg").unlink()  # a caption left without its image
    (images / "00001" / "000010001.json").unlink()  # no .txt and no .json: no caption
    ds = itd.read_img2dataset(images, name="cc3m")
    assert ds.captions == [fx.CC3M_ROWS[0][0]]
    assert ds.skipped == {
        "cc3m: not downloaded (img2dataset stats)": 1,
        "cc3m: sidecar status 'failed_to_resize'": 1,
        "cc3m: sidecar without an image": 1,
        "cc3m: no caption (.txt or 'caption' in .json)": 1,
    }


@pytest.mark.parametrize("header", [False, True])
def test_cc3m_flat_layout_by_tsv_row(tmp_path, header):
    root = fx.make_cc3m(tmp_path / "cc3m", layout="flat", header=header)
    ds = itd.read_cc3m(root)
    assert ds.captions == [fx.CC3M_ROWS[r][0] for r in fx.CC3M_FLAT_ROWS]
    assert [p.name for p in ds.image_paths] == ["0.jpg", "2.jpg", "000000004.jpg"]
    assert ds.skipped == {"cc3m: no image (not downloaded)": 2}


def test_cc3m_flat_layout_errors(tmp_path):
    root = fx.make_cc3m(tmp_path / "cc3m", layout="flat")
    fx.write_image(root / "images" / "4.jpg", (1, 2, 3))  # second image for row 4
    with pytest.raises(ValueError, match="row 4 already has an image"):
        itd.read_cc3m(root)
    (root / "images" / "4.jpg").unlink()
    fx.write_image(root / "images" / "9.jpg", (1, 2, 3))
    with pytest.raises(ValueError, match="row index 9 but the caption file has 5 rows"):
        itd.read_cc3m(root)
    (root / "images" / "9.jpg").unlink()
    (root / "Train_GCC-training.tsv").write_text("only a caption\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1 is not 'caption<TAB>url'"):
        itd.read_cc3m(root)
    (root / "Train_GCC-training.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="Train_GCC-training.tsv: CC3M caption file not found"):
        itd.read_cc3m(root)


# --------------------------------------------------------------------------- SBU


def test_sbu_flat_layout(tmp_path):
    root = fx.make_sbu(tmp_path / "sbu")
    ds = itd.read_sbu(root)
    assert ds.captions == [fx.SBU_ROWS[r][0] for r in fx.SBU_FLAT_ROWS]
    assert ds.skipped == {"sbu: no image (not downloaded)": 1}


def test_sbu_excludes_flickr_ids_in_both_layouts(tmp_path):
    flat = itd.read_sbu(fx.make_sbu(tmp_path / "flat"), exclude_flickr_ids={1000092795})
    assert flat.captions == [fx.SBU_ROWS[0][0], fx.SBU_ROWS[3][0]]
    assert flat.skipped["sbu: excluded (Flickr photo of an evaluation split)"] == 1
    shards = itd.read_sbu(fx.make_sbu(tmp_path / "i2d", layout="img2dataset"), exclude_flickr_ids={1000092795})
    assert shards.captions == [fx.SBU_ROWS[r][0] for r in (0, 1, 3)]
    assert shards.skipped == {"sbu: excluded (Flickr photo of an evaluation split)": 1}


def test_sbu_misaligned_files(tmp_path):
    root = fx.make_sbu(tmp_path / "sbu")
    urls = root / "SBU_captioned_photo_dataset_urls.txt"
    urls.write_text(urls.read_text().split("\n", 1)[1])
    with pytest.raises(ValueError, match="has 3 lines but SBU_captioned_photo_dataset_captions.txt has 4"):
        itd.read_sbu(root)


def test_flickr_id_from_url():
    assert itd._flickr_id("http://static.flickr.com/2723/4385058960_b0f291553e.jpg") == 4385058960
    assert itd._flickr_id("https://farm4.staticflickr.com/3084/2804963359_a3f5b0d0b9_o.jpg") == 2804963359
    assert itd._flickr_id("http://example.com/cat.jpg") is None


# --------------------------------------------------------------------------- Visual Genome


def test_vg_regions_each_phrase_captions_the_whole_image(tmp_path):
    root = fx.make_vg(tmp_path / "vg")
    ds = itd.read_visual_genome(root)  # no vg_caption.json: built from region_descriptions.json
    assert [p.relative_to(root).as_posix() for p in ds.image_paths] == [
        "VG_100K_2/1.jpg",
        "VG_100K_2/2.jpg",
        "VG_100K/3.jpg",
        "VG_100K/5.jpg",
    ]
    assert _captions_of(ds, 0) == ["a man riding a horse", "tree in the distance", "green grass"]
    assert _captions_of(ds, 1) == ["a cat on a bench", "bench"]
    assert ds.skipped == {
        "vg: empty region phrases": 2,
        "vg: duplicate region phrases (same image)": 1,
        "vg: images without a region phrase left": 1,
    }


def test_vg_regions_area_filter_and_overlap_exclusion(tmp_path):
    root = fx.make_vg(tmp_path / "vg")
    ds = itd.read_visual_genome(
        root, min_region_area_fraction=0.01, exclude_coco_ids={391895}, exclude_flickr_ids={1000268201}
    )
    assert [p.name for p in ds.image_paths] == ["1.jpg", "5.jpg"]
    assert _captions_of(ds, 0) == ["a man riding a horse", "green grass"]
    assert ds.skipped["vg: region phrases below min_region_area_fraction"] == 1
    assert ds.skipped["vg: images excluded (overlap with evaluation images)"] == 2


def test_vg_lavis_annotation_is_preferred(tmp_path):
    root = fx.make_vg(tmp_path / "vg", lavis=True)
    ds = itd.read_visual_genome(root)
    assert ds.captions == [caption for _, caption in fx.VG_LAVIS]
    assert ds.caption_to_image.tolist() == [0, 0, 1, 2, 3]
    assert [p.relative_to(root).as_posix() for p in ds.image_paths] == [
        "VG_100K_2/1.jpg",
        "VG_100K_2/2.jpg",
        "VG_100K/3.jpg",
        "VG_100K/5.jpg",
    ]
    excluded = itd.read_visual_genome(root, exclude_coco_ids={391895})
    assert excluded.num_images == 3 and "a cat on a bench" not in excluded.captions
    assert itd.read_visual_genome(root, source="regions").num_captions == 3 + 2 + 1 + 1


def test_vg_missing_image(tmp_path):
    root = fx.make_vg(tmp_path / "vg")
    (root / "VG_100K" / "3.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="1 annotated Visual Genome image.*3.jpg"):
        itd.read_visual_genome(root)
    ds = itd.read_visual_genome(root, missing_images="skip")
    assert ds.num_images == 3 and ds.skipped["vg: images missing on disk"] == 1


@given(
    values=st.lists(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
            lambda children: (
                st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=6,
    ),
    indent=st.sampled_from([None, 0, 2]),
    chunk_chars=st.integers(1, 9),
)
def test_streaming_json_array_matches_json_loads(tmp_path_factory, values, indent, chunk_chars):
    path = tmp_path_factory.mktemp("json") / "array.json"
    path.write_text(json.dumps(values, indent=indent, ensure_ascii=False), encoding="utf-8")
    assert list(itd._iter_json_array(path, chunk_chars=chunk_chars)) == json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("text", ['{"a": 1}', "[1, 2", "[1 2]", "[1,]", "[1] 2", '[{"a": ]'])
def test_streaming_json_array_rejects_bad_input(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad.json"):
        list(itd._iter_json_array(path, chunk_chars=2))


# --------------------------------------------------------------------------- layout check


def test_check_lists_everything_missing_in_one_go(tmp_path):
    lines = itd.check_image_text_data(tmp_path, list(itd.COMPONENTS))
    expected_paths = [
        "coco/dataset_coco.json",
        "coco/train2014/",
        "coco/val2014/",
        "flickr30k/dataset_flickr30k.json",
        "flickr30k/flickr30k-images/",
        "cc3m/images/",
        "cc3m/Train_GCC-training.tsv",
        "sbu/images/",
        "sbu/SBU_captioned_photo_dataset_captions.txt",
        "vg/VG_100K/",
        "vg/VG_100K_2/",
        "vg/vg_caption.json",
    ]
    assert len(lines) == len(expected_paths)
    for line, path in zip(lines, expected_paths):
        assert str(tmp_path / path) in line or f"{tmp_path / path.rstrip('/')}/" in line
        assert line.split(":")[0] == path.split("/")[0]
        assert "get it from" in line or "from http" in line
    assert "region_descriptions.json" in lines[-1] and "image_data.json" in lines[-1]


def test_check_complete_and_partial_roots(tmp_path):
    root = fx.make_data_root(tmp_path)
    assert itd.check_image_text_data(root, list(itd.TRAIN_COMPONENTS + itd.EVAL_COMPONENTS)) == []
    (root / "vg" / "vg_caption.json").unlink()  # region files remain: still complete
    assert itd.check_image_text_data(root, ["vg"]) == []
    for path in (root / "flickr30k" / "flickr30k-images").iterdir():
        path.unlink()
    (root / "coco" / "dataset_coco.json").unlink()
    lines = itd.check_image_text_data(root, ["coco", "flickr30k", "coco"])
    assert len(lines) == 2
    assert "dataset_coco.json" in lines[0] and "is missing" in lines[0]
    assert "flickr30k-images/" in lines[1] and "is empty" in lines[1]


def test_check_flat_web_layout_needs_its_caption_file(tmp_path):
    root = fx.make_cc3m(tmp_path / "cc3m", layout="flat")
    assert itd.check_image_text_data(tmp_path, ["cc3m"]) == []
    (root / "Train_GCC-training.tsv").unlink()
    [line] = itd.check_image_text_data(tmp_path, ["cc3m"])
    assert "Train_GCC-training.tsv" in line
    shards = fx.make_cc3m(tmp_path / "other" / "cc3m")
    (shards / "Train_GCC-training.tsv").unlink()  # img2dataset output carries the captions itself
    assert itd.check_image_text_data(tmp_path / "other", ["cc3m"]) == []


def test_check_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="^needed: expected one of"):
        itd.check_image_text_data(tmp_path, ["coco", "laion"])
    with pytest.raises(TypeError, match="^needed"):
        itd.check_image_text_data(tmp_path, "coco")


def test_full_root_reads_into_the_training_union(tmp_path):
    root = fx.make_data_root(tmp_path)
    parts = [
        itd.read_coco(root / "coco", "train"),
        itd.read_visual_genome(root / "vg"),
        itd.read_sbu(root / "sbu"),
        itd.read_cc3m(root / "cc3m"),
    ]
    union = itd.concat(parts)
    assert union.name == "coco/train+vg+sbu+cc3m"
    assert union.num_images == 3 + 4 + 3 + 4
    assert union.num_captions == 16 + 5 + 3 + 4
    assert union.skipped["sbu: no image (not downloaded)"] == 1
    assert "coco/train+vg+sbu+cc3m: " in union.describe()


# --------------------------------------------------------------------------- data model


def _dataset(name: str, counts: list[int]) -> itd.CaptionDataset:
    return itd.CaptionDataset(
        name,
        [Path(f"{name}/{i}.jpg") for i in range(len(counts))],
        [f"{name} {i} {k}" for i, count in enumerate(counts) for k in range(count)],
        np.repeat(np.arange(len(counts)), counts),
        {f"{name}: x": 1},
    )


@given(st.lists(st.lists(st.integers(1, 4), max_size=5), min_size=1, max_size=4))
def test_concat_offsets_keep_every_pair(counts_per_dataset):
    parts = [_dataset(f"d{k}", counts) for k, counts in enumerate(counts_per_dataset)]
    union = itd.concat(parts)
    pairs = [(c, p) for d in parts for c, p in zip(d.captions, (d.image_paths[i] for i in d.caption_to_image))]
    assert list(zip(union.captions, (union.image_paths[i] for i in union.caption_to_image))) == pairs
    assert union.num_images == sum(d.num_images for d in parts)
    assert union.skipped == {f"d{k}: x": 1 for k in range(len(parts))}


def test_concat_explicit_offsets_and_errors():
    union = itd.concat([_dataset("a", [2, 1]), _dataset("b", [1, 3])], name="both")
    assert union.name == "both"
    assert union.caption_to_image.tolist() == [0, 0, 1, 2, 3, 3, 3]
    with pytest.raises(ValueError, match="^datasets"):
        itd.concat([])
    with pytest.raises(TypeError, match=r"^datasets\[1\]"):
        itd.concat([_dataset("a", [1]), "b"])


def test_caption_dataset_validation():
    with pytest.raises(ValueError, match="^caption_to_image: has 1 entries but there are 2"):
        itd.CaptionDataset("x", ["a.jpg"], ["u", "v"], np.array([0]))
    with pytest.raises(ValueError, match=r"^caption_to_image: indices must lie in \[0, 1\)"):
        itd.CaptionDataset("x", ["a.jpg"], ["u"], np.array([1]))
    with pytest.raises(ValueError, match="^image_paths: 1 image"):
        itd.CaptionDataset("x", ["a.jpg", "b.jpg"], ["u"], np.array([0]))
    with pytest.raises(TypeError, match="^caption_to_image"):
        itd.CaptionDataset("x", ["a.jpg"], ["u"], np.array([0.0]))
    empty = itd.CaptionDataset("x", [], [], np.array([]))
    assert empty.num_images == 0 and empty.caption_to_image.dtype == np.int64


def test_without_images_remaps_and_counts():
    ds = _dataset("a", [2, 1, 3])
    smaller, kept = ds.without_images([1, 1], "unreadable")
    assert kept.tolist() == [0, 2]
    assert smaller.captions == ["a 0 0", "a 0 1", "a 2 0", "a 2 1", "a 2 2"]
    assert smaller.caption_to_image.tolist() == [0, 0, 1, 1, 1]
    assert smaller.image_paths == [Path("a/0.jpg"), Path("a/2.jpg")]
    assert smaller.skipped == {"a: x": 1, "a: unreadable": 1}
    with pytest.raises(ValueError, match="^indices"):
        ds.without_images([3], "unreadable")


# --------------------------------------------------------------------------- images


def test_unreadable_images_are_dropped_consistently(tmp_path):
    root = fx.make_coco(tmp_path)
    ds = itd.read_coco(root, "test")
    ds.image_paths[1].write_bytes(b"broken")
    files = ds.image_files(on_error="skip")
    with pytest.warns(UserWarning, match="cannot decode image"):
        latents = [x for x in files]
    smaller, kept = ds.without_images(sorted(files.failed), "unreadable image")
    assert kept.tolist() == [0, 2] and [latents[i] is not None for i in kept] == [True, True]
    assert smaller.num_images == 2 and smaller.num_captions == 10
    assert smaller.skipped["coco/test: unreadable image"] == 1


def test_module_docstring_examples():
    result = doctest.testmod(itd, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 10


@pytest.mark.parametrize("name", ["replication.captions", "replication.files", "replication.checks"])
def test_shared_reader_modules_docstring_examples(name):
    result = doctest.testmod(import_example(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 1
