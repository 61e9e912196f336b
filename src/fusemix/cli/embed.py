"""``fusemix embed``: embed a dataset into a trained model's shared space and keep the embeddings in a store.

The model (a run, a model directory or a Hub repository) is opened with
:meth:`fusemix.aligned.AlignedModel.from_pretrained`. The frozen encoder of
``--modality`` is rebuilt from the model's ``encoders.json`` (or built by
``--callable``), checked against the identity recorded there, and put in front
of the modality's adapter (:class:`~fusemix.aligned.AlignedEncoder`). The items
of ``--input`` are read as ``fusemix extract`` reads them, and
:func:`fusemix.aligned.embed_store` writes their unit-norm embeddings to
``--out``, resumably, with ``items.jsonl`` next to it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fusemix.aligned import AlignedEncoder, AlignedModel, embed_store
from fusemix.cli.common import (
    ITEMS_FILE,
    CommandError,
    check_output_folder,
    error_message,
    in_flag_terms,
    user_code_errors,
)
from fusemix.cli.encoder_setup import ENCODER_INPUT, python_encoder
from fusemix.cli.inputs import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    INPUT_TYPES,
    add_input_arguments,
    file_reader,
    read_inputs,
)
from fusemix.cli.store_output import LIBRARY_NAMES, StoreOutput, add_output_arguments
from fusemix.encoder_descriptions import build_encoder, identity_differences
from fusemix.extract import encoder_identity_of

SUMMARY = "embed a dataset into a trained model's shared space (a store to search)"

DESCRIPTION = f"""\
Embed every input item into the shared space of a trained model: the modality's
frozen encoder, then its fusion adapter, L2-normalised. The embeddings go to --out,
a fusemix latent store (.npy shards + manifest.json) ready for fusemix.search, with
{ITEMS_FILE} next to it: line i is the item of row i.

The encoder is the one the model directory's encoders.json describes ('fusemix train'
writes it from the stores of 'fusemix extract'; fit(..., encoders=...) and
save_model(..., encoders=...) from Python), rebuilt with the same options and checked
against the identity recorded there. A custom encoder (your own code) is given with
--callable; a local model folder that has moved, with --encoder-path.

--input is read as by 'fusemix extract' (a text file, a folder of image or audio
files, or a CSV/TSV/JSONL manifest with --column). Rerunning the same command
resumes an interrupted run and does nothing on a finished store; a store made with
other items, another encoder or other adapter weights is refused (--overwrite
replaces it)."""

EPILOG = f"""\
examples:
  # the captions of a CSV, with the text encoder the run was trained on
  fusemix embed --model runs/coco --modality text --input captions.csv --column caption \\
      --out gallery/text

  # a folder of images; the image model's folder has moved since training
  fusemix embed --model runs/coco --modality image --input photos/ \\
      --encoder-path /models/dinov2-giant --out gallery/image

  # a modality whose encoder is your own code (as given to 'fusemix extract')
  fusemix embed --model runs/coco --modality image --input photos/ \\
      --callable my_encoders.py:build --out gallery/image

  # then, in Python: the top-5 images of a caption
  #   aligned = fusemix.aligned.AlignedModel.from_pretrained("runs/coco")
  #   scores, rows = fusemix.search.search(aligned["text"].encode(["a red apple"]),
  #                                        fusemix.store.LatentStore.open("gallery/image"), k=5)

folders: image extensions {" ".join(IMAGE_EXTENSIONS)};
  audio extensions {" ".join(AUDIO_EXTENSIONS)}; --extensions replaces them.

--callable MODULE:FUNCTION works as for 'fusemix extract --encoder python': FUNCTION()
  or, with --encoder-path PLACE, FUNCTION(PLACE) (what 'fusemix extract --model' gave)
  returns the encoder, whose identity must be the recorded one."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``fusemix embed`` to its parser."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        required=True,
        metavar="RUN_OR_DIR",
        help="a run folder of 'fusemix train', a model folder, or a Hugging Face Hub model id",
    )
    model.add_argument("--modality", required=True, metavar="NAME", help="the modality of the items, e.g. image")
    model.add_argument(
        "--encoder-path",
        metavar="PLACE",
        help="where the encoder's model is now (a local folder or Hub id), if it moved since training; with "
        "--callable, the argument FUNCTION is called with",
    )
    model.add_argument(
        "--callable",
        metavar="MODULE:FUNCTION",
        help="builds the encoder (as for 'fusemix extract --encoder python'): for an encoder the model cannot "
        "rebuild from its description",
    )
    model.add_argument(
        "--device", help="where the encoder and adapter run, e.g. cpu, cuda:1 (default: CUDA when available)"
    )
    source = parser.add_argument_group("input")
    add_input_arguments(
        source,
        input_type_help="what the items are; implied by the encoder the model describes, else by --modality when "
        "it is text, image or audio",
    )
    out = parser.add_argument_group("output")
    add_output_arguments(out, what="embeddings")


def _open_model(args: argparse.Namespace) -> AlignedModel:
    """The model of ``--model`` with its encoder descriptions, without any encoder yet."""
    try:
        aligned = AlignedModel.from_pretrained(args.model, modalities=[], progress=not args.no_progress)
    except FileNotFoundError as err:
        raise CommandError(f"--model: {err}") from err
    if args.modality not in aligned.modalities:
        raise CommandError(
            f"--modality: {args.modality!r} is not one of the modalities of {args.model}: "
            f"{', '.join(aligned.modalities)}"
        )
    return aligned


def _input_type(args: argparse.Namespace, description: dict[str, Any] | None) -> str:
    """What the items are: implied by the described encoder, else ``--input-type``, else the modality's name."""
    kind = None if description is None else description["kind"]
    implied = None if kind is None else ENCODER_INPUT.get(kind)
    if implied is not None:
        if args.input_type not in (None, implied):
            raise CommandError(
                f"--input-type: the {args.modality} encoder of the model ({kind}) reads {implied}, "
                f"not {args.input_type}"
            )
        return implied
    if args.input_type is not None:
        return str(args.input_type)
    if args.modality in ("text", "image", "audio"):
        return str(args.modality)
    raise CommandError(f"--input-type: say what the {args.modality} items are: one of {', '.join(INPUT_TYPES)}")


def _description_to_rebuild(args: argparse.Namespace, description: dict[str, Any] | None) -> dict[str, Any] | None:
    """The description the encoder is rebuilt from; ``None`` when ``--callable`` builds it.

    Raises:
        CommandError: Before anything is read, if neither ``--callable`` nor the description can give the encoder.

    """
    if args.callable:
        return None
    if description is None:
        raise CommandError(
            f"--callable: {args.model} records no encoder for {args.modality!r} (no entry in its encoders.json); "
            "give the encoder with --callable MODULE:FUNCTION"
        )
    if description["kind"] == "custom":
        raise CommandError(
            f"--callable: the {args.modality} encoder of {args.model} is custom code "
            f"({description.get('class', 'unknown class')}), which cannot be rebuilt from its description; give it "
            "with --callable MODULE:FUNCTION"
        )
    location = description["location"]
    if args.encoder_path is None and description["local"] and not Path(location).is_dir():
        raise CommandError(
            f"--encoder-path: the {args.modality} encoder's model folder {location} is not on this machine; give "
            "its new place with --encoder-path"
        )
    return description


def _encoder(args: argparse.Namespace, to_rebuild: dict[str, Any] | None, input_type: str) -> Any:
    """The frozen encoder: built by ``--callable``, or rebuilt from its description (at ``--encoder-path``)."""
    if to_rebuild is None:
        options = {} if args.device is None else {"device": args.device}
        return python_encoder(args.callable, args.encoder_path, options, input_type, argument_flag="--encoder-path")
    location = args.encoder_path or to_rebuild["location"]
    try:
        return build_encoder(to_rebuild, location=args.encoder_path, device=args.device, progress=not args.no_progress)
    except OSError as err:  # transformers / sentence-transformers: the model cannot be found or loaded
        raise CommandError(f"--encoder-path: cannot load the {args.modality} encoder from {location!r}: {err}") from err


def _encoder_flag(args: argparse.Namespace) -> str:
    """The flag that chose the encoder, for errors about it."""
    if args.callable:
        return f"--callable {args.callable}"
    return f"--encoder-path {args.encoder_path}" if args.encoder_path else f"--model {args.model}"


def _check_identity(args: argparse.Namespace, description: dict[str, Any] | None, encoder: Any) -> None:
    """Refuse an encoder whose identity differs from the one the model records."""
    if description is None:
        return
    problems = identity_differences(description["identity"], encoder_identity_of(encoder))
    if problems:
        raise CommandError(
            f"{_encoder_flag(args)}: not the {args.modality} encoder the model was trained on ({'; '.join(problems)})"
        )


def _reader(base: Path | None, input_type: str, encoder: Any) -> Callable[[str], Any] | None:
    """What turns an item into the encoder's input: ``None`` for texts, else a reader of the file at ``base / item``."""
    if base is None:
        return None
    read_file = file_reader(input_type, encoder)

    def read(item: str) -> Any:
        return read_file(base / item)

    return read


def run(args: argparse.Namespace) -> int:
    """Run ``fusemix embed``; the exit status."""
    model = _open_model(args)
    description = model.encoder_descriptions.get(args.modality)
    to_rebuild = _description_to_rebuild(args, description)
    input_type = _input_type(args, description)
    inputs = read_inputs(args.input, input_type, column=args.column, extensions=args.extensions)
    output = StoreOutput.start(
        check_output_folder("--out", args.out), inputs.items, overwrite=args.overwrite, write_items=True
    )
    encoder = _encoder(args, to_rebuild, input_type)
    _check_identity(args, description, encoder)
    adapter = model.model.adapters[args.modality]
    aligned = AlignedEncoder(encoder, adapter, modality=args.modality, batch_size=args.batch_size)
    try:
        with user_code_errors(_encoder_flag(args)):  # a bug inside the encoder keeps its traceback
            store = embed_store(
                aligned,
                inputs.items,
                output.root,
                read=_reader(inputs.base, input_type, encoder),
                batch_size=args.batch_size,
                shard_size=args.shard_size,
                dtype=args.dtype,
                metadata={**inputs.source, "items_file": ITEMS_FILE, "model": str(args.model)},
                progress=not args.no_progress,
                overwrite=args.overwrite,
            )
    except TypeError as err:  # what the encoder returned, refused by fusemix
        raise CommandError(f"{_encoder_flag(args)}: {err}") from err
    except (ValueError, FileExistsError) as err:  # a store of other settings in --out, another run holding it
        raise CommandError(in_flag_terms(error_message(err), LIBRARY_NAMES)) from err
    assert store is not None  # one worker: the store is complete
    output.finish(store, "shared-space embeddings")
    return 0
