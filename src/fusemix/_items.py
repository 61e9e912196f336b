"""Fingerprints of the items an extraction encodes, so that a store is never reused for other items.

:class:`ItemsDigest` hashes items batch by batch, as :func:`fusemix.extract.extract_latents`
encodes them: a sha256 over a tagged, length-prefixed byte form of every item,
in order, so the result does not depend on how the items are split into
batches, and is the same in every process and on every machine (Python's
``hash()`` is never used). What counts as an item's content:

- ``str`` (its UTF-8), ``bytes``/``bytearray``/``memoryview``, ``None``,
  ``bool``, ``int``, ``float``;
- file paths (``os.PathLike``) by their name only: a file changed in place
  keeps its fingerprint;
- NumPy arrays and scalars (dtype, shape and values; not object arrays),
  torch tensors (dtype, shape and values, copied to the CPU; dense only);
- PIL images (mode, size, pixels, and the palette and transparency of
  palette images);
- lists, tuples and dicts of the above (dicts in their key order), e.g. the
  rows of a Hugging Face dataset or the ``(image, label)`` pairs of a
  torchvision one.

Any other item (an object of your own class, a pandas row...) has no
stable byte form: :class:`UnfingerprintableItem` asks for an ``items_id``.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

Feed = Callable[[Any], None]
"""Takes the next bytes (any buffer: bytes, memoryview, C-contiguous uint8 array), as ``hashlib``'s ``update``."""


class UnfingerprintableItem(TypeError):
    """An item of a type whose content has no stable byte form (see the module docstring)."""


def _sized(feed: Feed, tag: bytes, payload: bytes | memoryview | np.ndarray) -> None:
    """Feed ``tag``, the payload's length in bytes, then the payload: no two items run together."""
    size = payload.nbytes if isinstance(payload, (memoryview, np.ndarray)) else len(payload)
    feed(tag + struct.pack("<Q", size))
    feed(payload)


def _feed_array(feed: Feed, array: np.ndarray) -> None:
    if array.dtype.hasobject:
        raise UnfingerprintableItem("a NumPy array of Python objects")
    _sized(feed, b"a", array.dtype.str.encode())
    _sized(feed, b"S", np.asarray(array.shape, dtype="<i8").tobytes())
    _sized(feed, b"v", np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def _feed_tensor(feed: Feed, tensor: Tensor) -> None:
    if tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type == "meta":
        raise UnfingerprintableItem(f"a {tensor.layout} tensor on {tensor.device}")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    _sized(feed, b"t", str(tensor.dtype).encode())
    _sized(feed, b"S", np.asarray(tensor.shape, dtype="<i8").tobytes())
    _sized(feed, b"v", flat.view(torch.uint8).numpy())


def _pil_image_class() -> type | None:
    """PIL's ``Image`` class if PIL is already imported (an image item implies it is): nothing is imported here."""
    module = sys.modules.get("PIL.Image")
    return getattr(module, "Image", None)


def _feed_image(feed: Feed, image: Any) -> None:
    _sized(feed, b"P", f"{image.mode} {image.size[0]} {image.size[1]}".encode())
    _sized(feed, b"v", image.tobytes())
    if image.mode in ("P", "PA"):
        _feed(feed, [image.getpalette(), image.info.get("transparency")])


def _feed_scalar(feed: Feed, item: object) -> bool:
    """Feed a ``None``, bool, int, float, str, bytes-like or path; ``False`` if ``item`` is none of them."""
    if item is None:
        feed(b"n")
    elif isinstance(item, bool):
        feed(b"T" if item else b"F")
    elif isinstance(item, int):
        _sized(feed, b"i", item.to_bytes(item.bit_length() // 8 + 1, "little", signed=True))
    elif isinstance(item, float):
        feed(b"f" + struct.pack("<d", item))
    elif isinstance(item, str):
        _sized(feed, b"s", item.encode("utf-8", "surrogatepass"))
    elif isinstance(item, (bytes, bytearray, memoryview)):
        _sized(feed, b"b", bytes(item))
    elif isinstance(item, os.PathLike):
        _sized(feed, b"p", os.fsencode(item))
    else:
        return False
    return True


def _feed(feed: Feed, item: object) -> None:
    """Feed the byte form of one item (see the module docstring), or raise :class:`UnfingerprintableItem`."""
    image_class = _pil_image_class()
    if _feed_scalar(feed, item):
        return
    if isinstance(item, (np.ndarray, np.generic)):
        _feed_array(feed, np.asarray(item))
    elif isinstance(item, Tensor):
        _feed_tensor(feed, item)
    elif image_class is not None and isinstance(item, image_class):
        _feed_image(feed, item)
    elif isinstance(item, Mapping):
        feed(b"d" + struct.pack("<Q", len(item)))
        for key, value in item.items():
            _feed(feed, key)
            _feed(feed, value)
    elif isinstance(item, (list, tuple)):
        feed(b"l" + struct.pack("<Q", len(item)))
        for value in item:
            _feed(feed, value)
    else:
        raise UnfingerprintableItem(f"a {type(item).__module__}.{type(item).__qualname__}")


class ItemsDigest:
    """A running sha256 fingerprint of items, fed in order (batch boundaries do not matter).

    Example:
        >>> one, two = ItemsDigest(), ItemsDigest()
        >>> one.update(["a dog", "a cat"], first=0)
        >>> two.update(["a dog"], first=0); two.update(["a cat"], first=1)
        >>> one.value() == two.value(), one.value()[:15]
        (True, 'sha256:c70b48a6')

    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, items: Iterable[Any], *, first: int) -> None:
        """Add ``items``, whose first is item number ``first`` of the whole sequence (for the error message).

        Raises:
            UnfingerprintableItem: If an item has no stable byte form; the
                message names ``items``, the item's number and its type, and
                asks for ``items_id``.

        """
        for number, item in enumerate(items, start=first):
            try:
                _feed(self._hash.update, item)
            except UnfingerprintableItem as err:
                raise UnfingerprintableItem(
                    f"items: item {number} holds {err}, which has no stable byte form to fingerprint (fusemix "
                    "fingerprints str, bytes, paths, numbers, None, NumPy arrays, torch tensors, PIL images, and "
                    "lists, tuples and dicts of them); pass items_id='...', a name for these exact items that you "
                    "change whenever they change"
                ) from None

    def value(self) -> str:
        """The fingerprint so far: ``"sha256:"`` and 64 hex digits."""
        return f"sha256:{self._hash.hexdigest()}"


def named_items(items_id: str) -> str:
    """The fingerprint of items named by the caller instead of hashed: ``"id:"`` and the name."""
    return f"id:{items_id}"


def describe(fingerprint: str | None) -> str:
    """A short rendering of a fingerprint for messages: ``items_id 'x'`` or ``sha256 0a1b2c3d4e5f...``."""
    if fingerprint is None:
        return "no fingerprint"
    kind, _, value = fingerprint.partition(":")
    return f"items_id {value!r}" if kind == "id" else f"content sha256 {value[:12]}..."
