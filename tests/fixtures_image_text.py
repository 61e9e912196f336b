"""Miniature image-text datasets written in the exact on-disk formats of the real ones.

Each ``make_*`` function writes one dataset under a folder and returns that
folder. The content is fixed and described by the module-level specs, so tests
can compute what a correct reader must return without calling the reader.
Captions name their image (``"coco 391895 caption 2"``) so a wrong
caption-to-image mapping is visible.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

# (split, folder, cocoid, number of raw sentences, pillow mode); in file order.
COCO_SPEC = [
    ("train", "train2014", 9, 5, "RGB"),
    ("val", "val2014", 42, 5, "RGB"),
    ("test", "val2014", 391895, 5, "RGB"),
    ("restval", "val2014", 73, 6, "RGB"),
    ("test", "val2014", 74, 7, "L"),  # COCO has grey images; 7 raw sentences
    ("train", "train2014", 25, 5, "RGB"),
    ("test", "val2014", 133, 6, "RGB"),
]

# (split, flickr id, number of sentences); in file order.
FLICKR_SPEC = [
    ("train", 1000092795, 5),
    ("test", 1000268201, 5),
    ("val", 1000344755, 5),
    ("test", 1000366164, 5),
    ("train", 1000523639, 5),
]

CC3M_ROWS = [
    ("a very typical bus station", "http://example.com/cc3m/0.jpg"),
    ("sierra looked stunning in this top", "http://example.com/cc3m/1.jpg"),
    ("young confused girl standing in front of a wardrobe", "http://example.com/cc3m/2.jpg"),
    ("interior design of modern living room", "http://example.com/cc3m/3.jpg"),
    ("cybernetic scene isolated on white background", "http://example.com/cc3m/4.jpg"),
]

# img2dataset with 3 samples per shard here (keys keep the default 4-digit sample index):
# row 1 failed to download (no files; counted in the shard's stats); row 4 has no .txt (caption only in .json).
CC3M_IMG2DATASET_FAILED_ROWS = (1,)
CC3M_IMG2DATASET_NO_TXT_ROWS = (4,)
CC3M_FLAT_ROWS = (0, 2, 4)  # rows with an image in the flat layout

SBU_ROWS = [
    ("Man sits in a rusty car beside a stream.", "http://static.flickr.com/2723/4385058960_b0f291553e.jpg"),
    ("A little girl on her bike in the park", "http://static.flickr.com/3084/2804963359_a3f5b0d0b9.jpg"),
    ("Wooden chair in the snow", "http://static.flickr.com/1139/1000092795_5bd0e0d6c8.jpg"),  # = a Flickr30K id
    ("Our dog at the lake", "http://static.flickr.com/3020/2855063466_ff3c7c9e0d.jpg"),
]
SBU_FLAT_ROWS = (0, 2, 3)

# Visual Genome: image id -> (folder, width, height, coco_id, flickr_id)
VG_IMAGES = {
    1: ("VG_100K_2", 800, 600, None, None),
    2: ("VG_100K_2", 500, 375, 391895, None),  # also a COCO Karpathy test image
    3: ("VG_100K", 640, 480, None, 1000268201),  # also a Flickr30K test image
    4: ("VG_100K", 300, 200, None, None),
    5: ("VG_100K", 300, 200, None, None),
}
# image id -> regions as (phrase, width, height)
VG_REGIONS = {
    1: [
        ("a man riding a horse", 400, 300),
        ("A man  riding a horse ", 380, 290),  # duplicate after normalisation
        ("tree in the distance", 10, 10),  # 100 / 480000 of the image
        ("", 50, 50),
        ("green grass", 800, 100),
    ],
    2: [("a cat on a bench", 200, 150), ("bench", 100, 50)],
    3: [("people walking", 300, 200)],
    4: [(" ", 30, 30)],  # nothing left: image 4 drops out
    5: [("red brick wall", 300, 200)],
}
VG_LAVIS = [
    ("VG_100K_2/1.jpg", "a man riding a horse"),
    ("VG_100K_2/1.jpg", "green grass"),
    ("VG_100K_2/2.jpg", "a cat on a bench"),
    ("VG_100K/3.jpg", "people walking"),
    ("VG_100K/5.jpg", "red brick wall"),
]


def write_image(path: Path, color: int | tuple[int, ...], *, mode: str = "RGB", size: tuple[int, int] = (8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def _color(seed: int) -> tuple[int, int, int]:
    return (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def coco_filename(folder: str, cocoid: int) -> str:
    return f"COCO_{folder}_{cocoid:012d}.jpg"


def coco_caption(cocoid: int, k: int) -> str:
    return f"coco {cocoid} caption {k}"


def make_coco(root: Path) -> Path:
    """``root/dataset_coco.json`` + ``root/{train2014,val2014}/``; raw sentences carry stray whitespace."""
    images, sentid = [], 0
    for imgid, (split, folder, cocoid, count, mode) in enumerate(COCO_SPEC):
        filename = coco_filename(folder, cocoid)
        sentences = []
        for k in range(count):
            raw = coco_caption(cocoid, k)
            raw = f" {raw}.\n" if k == 0 else raw
            sentences.append({"tokens": raw.strip(" .\n").split(), "raw": raw, "imgid": imgid, "sentid": sentid})
            sentid += 1
        images.append(
            {
                "filepath": folder,
                "sentids": [s["sentid"] for s in sentences],
                "filename": filename,
                "imgid": imgid,
                "split": split,
                "sentences": sentences,
                "cocoid": cocoid,
            }
        )
        write_image(root / folder / filename, cocoid % 256 if mode == "L" else _color(cocoid), mode=mode)
    _write_json(root / "dataset_coco.json", {"images": images, "dataset": "coco"})
    return root


def flickr_caption(flickr_id: int, k: int) -> str:
    return f"flickr {flickr_id} caption {k}"


def make_flickr30k(root: Path) -> Path:
    """``root/dataset_flickr30k.json`` + ``root/flickr30k-images/<flickr id>.jpg`` (no ``filepath`` key)."""
    images, sentid = [], 0
    for imgid, (split, flickr_id, count) in enumerate(FLICKR_SPEC):
        sentences = []
        for k in range(count):
            raw = flickr_caption(flickr_id, k)
            sentences.append({"tokens": raw.split(), "raw": raw, "imgid": imgid, "sentid": sentid})
            sentid += 1
        images.append(
            {
                "sentids": [s["sentid"] for s in sentences],
                "imgid": imgid,
                "sentences": sentences,
                "split": split,
                "filename": f"{flickr_id}.jpg",
            }
        )
        write_image(root / "flickr30k-images" / f"{flickr_id}.jpg", _color(flickr_id))
    _write_json(root / "dataset_flickr30k.json", {"images": images, "dataset": "flickr30k"})
    return root


def img2dataset_key(row: int, per_shard: int = 3) -> tuple[str, str]:
    """(shard folder, key) of a row, img2dataset style: ``{shard:05d}`` and ``{shard:05d}{index:04d}``."""
    shard, index = divmod(row, per_shard)
    return f"{shard:05d}", f"{shard:05d}{index:04d}"


def write_img2dataset(
    folder: Path,
    rows: list[tuple[str, str]],
    *,
    failed: tuple[int, ...] = (),
    no_txt: tuple[int, ...] = (),
    per_shard: int = 3,
) -> Path:
    """An img2dataset ``--output_format files`` folder: shard folders of ``.jpg`` + ``.txt`` + ``.json``."""
    stats: dict[str, dict[str, int]] = {}
    for row, (caption, url) in enumerate(rows):
        shard, key = img2dataset_key(row, per_shard)
        shard_stats = stats.setdefault(shard, {"count": 0, "successes": 0, "failed_to_download": 0})
        shard_stats["count"] += 1
        if row in failed:  # img2dataset writes no file for a failed sample
            shard_stats["failed_to_download"] += 1
            continue
        shard_stats["successes"] += 1
        write_image(folder / shard / f"{key}.jpg", _color(row))
        if row not in no_txt:
            (folder / shard / f"{key}.txt").write_text(caption, encoding="utf-8")
        meta = {
            "url": url,
            "caption": caption,
            "key": key,
            "status": "success",
            "error_message": None,
            "width": 8,
            "height": 6,
            "original_width": 8,
            "original_height": 6,
            "exif": "{}",
            "sha256": "0" * 64,
        }
        _write_json(folder / shard / f"{key}.json", meta)
    for shard, shard_stats in stats.items():
        _write_json(folder / f"{shard}_stats.json", {**shard_stats, "failed_to_resize": 0, "status_dict": {}})
    return folder


def make_cc3m(root: Path, *, layout: str = "img2dataset", header: bool = False) -> Path:
    """``root/Train_GCC-training.tsv`` + ``root/images/`` as img2dataset output or flat by row index."""
    root.mkdir(parents=True, exist_ok=True)
    lines = (["caption\turl"] if header else []) + [f"{caption}\t{url}" for caption, url in CC3M_ROWS]
    (root / "Train_GCC-training.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if layout == "img2dataset":
        write_img2dataset(
            root / "images", CC3M_ROWS, failed=CC3M_IMG2DATASET_FAILED_ROWS, no_txt=CC3M_IMG2DATASET_NO_TXT_ROWS
        )
    else:
        for row in CC3M_FLAT_ROWS:  # plain and zero-padded row names both occur in the wild
            name = f"{row:09d}.jpg" if row == 4 else f"{row}.jpg"
            write_image(root / "images" / name, _color(row))
    return root


def make_sbu(root: Path, *, layout: str = "flat") -> Path:
    """The two line-aligned SBU text files + ``root/images/`` (flat by line index, or img2dataset output)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "SBU_captioned_photo_dataset_captions.txt").write_text(
        "".join(f"{caption}\n" for caption, _ in SBU_ROWS), encoding="utf-8"
    )
    (root / "SBU_captioned_photo_dataset_urls.txt").write_text(
        "".join(f"{url}\n" for _, url in SBU_ROWS), encoding="utf-8"
    )
    if layout == "img2dataset":
        write_img2dataset(root / "images", SBU_ROWS)
    else:
        for row in SBU_FLAT_ROWS:
            write_image(root / "images" / f"{row}.jpg", _color(100 + row))
    return root


def make_vg(root: Path, *, lavis: bool = False) -> Path:
    """Visual Genome v1.2 files (``image_data.json``, ``region_descriptions.json``) + ``VG_100K{,_2}/``.

    With ``lavis=True`` also LAVIS's ``vg_caption.json`` (BLIP-style absolute image paths).
    """
    image_data, descriptions, region_id = [], [], 0
    for image_id, (folder, width, height, coco_id, flickr_id) in VG_IMAGES.items():
        image_data.append(
            {
                "width": width,
                "url": f"https://cs.stanford.edu/people/rak248/{folder}/{image_id}.jpg",
                "height": height,
                "image_id": image_id,
                "coco_id": coco_id,
                "flickr_id": flickr_id,
            }
        )
        regions = []
        for phrase, w, h in VG_REGIONS[image_id]:
            region_id += 1
            regions.append(
                {
                    "region_id": region_id,
                    "width": w,
                    "height": h,
                    "image_id": image_id,
                    "phrase": phrase,
                    "y": 0,
                    "x": 0,
                }
            )
        descriptions.append({"regions": regions, "id": image_id})
        write_image(root / folder / f"{image_id}.jpg", _color(image_id), size=(10, 8))
    _write_json(root / "image_data.json", image_data)
    # The real file is pretty-printed by nobody; one line, like the real one.
    _write_json(root / "region_descriptions.json", descriptions)
    if lavis:
        entries = [
            {"image": f"/export/share/datasets/vision/visual-genome/image/{Path(p).name}", "caption": c, "image_id": i}
            for i, (p, c) in enumerate(VG_LAVIS)
        ]
        _write_json(root / "vg_caption.json", entries)
    return root


def make_data_root(root: Path) -> Path:
    """Every dataset under the ``--data-root`` layout the replication preset expects."""
    make_coco(root / "coco")
    make_flickr30k(root / "flickr30k")
    make_cc3m(root / "cc3m")
    make_sbu(root / "sbu")
    make_vg(root / "vg", lavis=True)
    return root


def jpeg_bytes(color: tuple[int, int, int] = (10, 20, 30), size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_corrupt_images(folder: Path) -> dict[str, Path]:
    """A garbage ``.jpg``, a truncated JPEG, and an empty file."""
    folder.mkdir(parents=True, exist_ok=True)
    garbage, truncated, empty = folder / "garbage.jpg", folder / "truncated.jpg", folder / "empty.jpg"
    garbage.write_bytes(b"this is not an image" * 10)
    data = jpeg_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    empty.write_bytes(b"")
    return {"garbage": garbage, "truncated": truncated, "empty": empty}
