"""On-disk latent store: ``.npy`` shards plus a JSON manifest, read through memory maps.

FuseMix encodes every example once with a frozen encoder and trains on the
stored latents only. Stores can be far larger than RAM (5M rows x 1536 dims in
float16 is 15 GB), so :class:`LatentStore` memory-maps its shards and reads
only the rows that are asked for.

Layout of a store directory::

    <store>/manifest.json        written last, atomically; its presence marks a complete store
    <store>/shards/00000.npy     (rows_0, dim) float16 or float32, plain .npy (no pickle)
    <store>/shards/00001.npy     (rows_1, dim) ...

``manifest.json``::

    {"format": "fusemix.latents", "version": 1, "modality": "image", "dim": 1536,
     "dtype": "float16", "count": 5000000,
     "encoder": {...JSON identity of the encoder...}, "metadata": {...free JSON...},
     "shards": [{"file": "shards/00000.npy", "rows": 65536, "sha256": "<hex>", "bytes": 201326720}, ...],
     "created": "2024-01-01T00:00:00+00:00"}

``sha256`` and ``bytes`` are those of the whole ``.npy`` file, header included.
A shard written by :func:`~fusemix.extract.extract_latents` also records
``"items"``, the fingerprint of the items its rows were computed from
(``"sha256:<hex>"`` of their content, or ``"id:<items_id>"``), which a rerun
checks its items against; readers ignore it.

While a store is being written (by :class:`LatentStoreWriter`), every file is
written atomically: to a temporary file ``shards/.<name>.<random>.tmp`` in the
same directory, fsync'ed, then renamed into place. A shard file on disk is
therefore always complete. Right after a shard, its manifest entry is written
to a sidecar ``shards/<index>.json``, so finalizing need not re-read the
shards to hash them; a shard whose sidecar is missing (the writer was killed
between the two renames) is hashed again from disk. :meth:`LatentStoreWriter.finalize`
writes ``manifest.json`` last and then deletes the sidecars and any temporary
files a killed writer left behind.

Verification when opening (:meth:`LatentStore.open`):

- ``verify="quick"`` (default, costs a ``stat`` and a header read per shard)
  checks the manifest schema, that every shard exists with exactly the
  recorded byte size, and that its header says shape ``(rows, dim)`` and the
  store's dtype. It catches missing, truncated, extended and mismatched
  shards, but not a change of content that keeps the size.
- ``verify="full"`` also recomputes the sha256 of every shard (reads the
  whole store), which catches any change of content.

The format (names, manifest, shard checks), the reader and the writer live in
the private modules ``_store_format``, ``_store_reader`` and ``_store_writer``;
import them from here.
"""

from fusemix._store_format import (
    DTYPES,
    FORMAT,
    MANIFEST,
    SHARD_DIR,
    VERSION,
    StoreError,
    shard_file,
    shard_indices,
)
from fusemix._store_reader import LatentStore
from fusemix._store_writer import LatentStoreWriter, write_store

__all__ = [
    "DTYPES",
    "FORMAT",
    "MANIFEST",
    "SHARD_DIR",
    "VERSION",
    "LatentStore",
    "LatentStoreWriter",
    "StoreError",
    "shard_file",
    "shard_indices",
    "write_store",
]
