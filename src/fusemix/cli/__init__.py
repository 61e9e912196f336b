"""The ``fusemix`` command line: ``fusemix extract | train | evaluate | embed`` (also ``python -m fusemix``).

- ``fusemix extract`` encodes a dataset once with a frozen encoder into a
  latent store (:func:`fusemix.extract.extract_latents`), resumably, and
  writes ``items.jsonl`` next to it: line ``i`` is the item (text, or file
  path) of row ``i``.
- ``fusemix train`` trains fusion adapters on stored latents
  (:func:`fusemix.train.fit`); every :class:`~fusemix.train.TrainConfig`
  field is a flag, and a TOML/YAML ``--config`` file can hold them all.
- ``fusemix evaluate`` scores cross-modal retrieval with a trained model and
  prints a Markdown table (optionally a JSON file).
- ``fusemix embed`` embeds a dataset into a trained model's shared space
  (the modality's frozen encoder, rebuilt from the model's ``encoders.json``,
  then its adapter) with :func:`fusemix.aligned.embed_store`, into a store
  to search, with ``items.jsonl`` next to it.

Results go to stdout, progress bars and notes to stderr. Exit status: 0 on
success; 2 on a user error (bad flag, missing file, mismatched data...), with
one line ``fusemix <command>: error: ...`` on stderr; 1 when training
diverges; 130 when interrupted (rerun the same command to resume). Other
exceptions are bugs and keep their traceback.

The package holds the parser and :func:`main` (``parser``), one module per
command (``extract``, ``train``, ``evaluate``, ``embed``), what they share
(``common``: errors, the library's errors reworded in the command's flags,
argument types, opening latents and pairs), the dataclass-to-flags code
(``config_flags``), reading ``--input`` (``inputs``), building ``--encoder``
(``encoder_setup``) and the store ``extract`` and ``embed`` write with its
``items.jsonl`` (``store_output``).
"""

from fusemix.cli.common import ITEMS_FILE, LATENTS_FILE, CommandError, metrics_table
from fusemix.cli.parser import build_parser, main

__all__ = ["ITEMS_FILE", "LATENTS_FILE", "CommandError", "build_parser", "main", "metrics_table"]
