"""``fusemix extract``: encode a dataset once with a frozen encoder into a latent store, resumably.

The store is written by :func:`fusemix.extract.extract_latents`; next to it
``items.jsonl`` lists the item of every row. Under torchrun every process
encodes its share of the shards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from fusemix.cli.common import (
    ENCODER_DESCRIPTION,
    ITEMS_FILE,
    PROG,
    CommandError,
    check_output_folder,
    error_message,
    flag,
    in_flag_terms,
    positive_int,
    positive_int_or_none,
    user_code_errors,
    workers,
)
from fusemix.cli.encoder_setup import (
    ADAPTER_OPTIONS,
    ENCODER_INPUT,
    ENCODER_OPTIONS,
    ENCODERS,
    build_encoder,
    default_device,
)
from fusemix.cli.inputs import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    INPUT_TYPES,
    FileEncoder,
    add_input_arguments,
    file_reader,
    read_inputs,
)
from fusemix.cli.store_output import LIBRARY_NAMES, StoreOutput, add_output_arguments
from fusemix.encoder_descriptions import describe_encoder
from fusemix.extract import encoder_identity_of, extract_latents, finalize_store
from fusemix.store import MANIFEST, LatentStore, StoreError

SUMMARY = "encode a dataset once into a latent store"

DESCRIPTION = f"""\
Encode every input item once with a frozen pretrained encoder and store the latents
in --out, a fusemix latent store (.npy shards + manifest.json), with {ITEMS_FILE} next
to it: line i is the item of row i (the text, or the file path relative to the input).

Inputs (--input): a text file, one item per line (texts, or file paths relative to
the file); a folder of image or audio files, searched recursively and sorted by
relative path; or a CSV/TSV/JSONL manifest whose --column holds the texts or the
file paths (relative to the manifest). Images are read with Pillow and converted
to RGB (transparency composited onto white); audio with soundfile, mono, at the
encoder's sampling rate (fusemix does not resample).

Rerunning the same command resumes an interrupted run and does nothing on a
finished store. Under torchrun every process encodes its share of the shards."""

EPILOG = f"""\
examples:
  # captions, one per line, with BGE (CLS pooling, L2-normalised)
  fusemix extract --encoder hf-text --model BAAI/bge-large-en-v1.5 --pooling cls \\
      --normalize --input captions.txt --out latents/text

  # every image of a folder with DINOv2, 4 GPUs
  torchrun --nproc-per-node 4 -m fusemix extract --encoder hf-image \\
      --model facebook/dinov2-giant --input images/ --out latents/image

  # audio files named in a CSV column, with Whisper's encoder
  fusemix extract --encoder hf-audio --model openai/whisper-large-v3 \\
      --input clips.csv --column file --out latents/audio

  # your own encoder on images
  fusemix extract --encoder python --callable my_encoders.py:build --model weights.pt \\
      --input-type image --input images/ --out latents/image

folders: image extensions {" ".join(IMAGE_EXTENSIONS)};
  audio extensions {" ".join(AUDIO_EXTENSIONS)}; --extensions replaces them.
  Hidden files and folders are skipped; symbolic links to folders are not followed.

python encoders (--encoder python --callable MODULE:FUNCTION):
  MODULE is an importable module (the current folder is on the path) or a .py
  file. FUNCTION is called once, as FUNCTION() or FUNCTION(MODEL) when --model is
  given, and returns the encoder: a callable (function or torch.nn.Module) that
  maps a list of items to a (len(items), dim) floating tensor or numpy array.
  Items are str for --input-type text, RGB PIL images for image, 1-D float32
  numpy waveforms for audio and absolute file paths (str) for path.
  An encoder with an 'identity' dict attribute (any fusemix.encoders adapter,
  e.g. CallableEncoder(fn, identity={{...}})) is used as it is and its identity is
  recorded in the store; anything else is wrapped in CallableEncoder with the
  identity {{"callable": "MODULE:FUNCTION", "model": MODEL}} (a .py file by its
  module name: dir/my_encoders.py:build is my_encoders:build), and with --device,
  --model-dtype and --max-batch-size (except for audio: clips differ in length,
  so a plain function gets the list of clips as it is). Give your encoder an
  identity that changes with its weights: a store is only reused or resumed by
  the same identity. An encoder with a 'sampling_rate' attribute gets only audio
  files at that rate.

torchrun: each process (RANK of WORLD_SIZE) encodes the shards k with
  k % WORLD_SIZE == RANK; the last one to finish writes the manifest. If a
  process failed, rerun the same command in one process: finished shards are
  kept and only the missing ones are encoded before the store is finalized."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``fusemix extract`` to its parser."""
    source = parser.add_argument_group("input")
    add_input_arguments(
        source,
        input_type_help="what the items are; implied by --encoder except 'python', which needs it. 'path' hands the "
        "encoder the file paths themselves",
    )
    source.add_argument(
        "--read-threads",
        type=positive_int,
        default=min(8, os.cpu_count() or 1),
        metavar="N",
        help="threads decoding image/audio files (default: %(default)s)",
    )

    encoder = parser.add_argument_group("encoder (options that do not apply to --encoder are an error)")
    encoder.add_argument("--encoder", choices=ENCODERS, required=True, help="which encoder adapter to use")
    encoder.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="Hugging Face Hub id or local model folder (required except for 'python', where it is passed to FUNCTION)",
    )
    encoder.add_argument(
        "--callable", metavar="MODULE:FUNCTION", help="for --encoder python: the function that builds the encoder"
    )
    unset = argparse.SUPPRESS  # adapter options reach the adapter only when given; its own defaults apply otherwise
    encoder.add_argument(
        "--pooling",
        default=unset,
        help="hf-text: cls (default), mean or pooler; hf-image: cls (default), patch_mean or cls+patch_mean",
    )
    encoder.add_argument("--prefix", default=unset, help="hf-text, sentence-transformers: text put before every item")
    encoder.add_argument(
        "--max-length",
        type=positive_int_or_none,
        default=unset,
        metavar="N",
        help="hf-text: truncate to N tokens (default 512; 'none': never truncate)",
    )
    encoder.add_argument(
        "--normalize", action="store_const", const=True, default=unset, help="L2-normalise every latent"
    )
    encoder.add_argument(
        "--device", default=unset, help="where the model runs, e.g. cpu, cuda, cuda:1 (default: CUDA when available)"
    )
    encoder.add_argument(
        "--model-dtype",
        choices=("float32", "float16", "bfloat16"),
        default=unset,
        help="dtype of the model's weights (default float32)",
    )
    encoder.add_argument(
        "--max-batch-size",
        type=positive_int,
        default=unset,
        metavar="N",
        help="items per forward pass of the model (default 32; python: the whole --batch-size)",
    )
    encoder.add_argument(
        "--audio-kind", choices=("whisper", "clap", "auto"), default=unset, help="hf-audio: model kind (default auto)"
    )
    encoder.add_argument(
        "--clap-output",
        choices=("projection", "pooled"),
        default=unset,
        help="hf-audio, CLAP: audio projection (default) or the tower's pooled output",
    )
    encoder.add_argument(
        "--crop-seed", type=int, default=unset, metavar="SEED", help="hf-audio, CLAP: seed of long clips' crops"
    )

    out = parser.add_argument_group("output")
    add_output_arguments(out, what="latents")
    out.add_argument(
        "--modality", metavar="NAME", help="modality name recorded in the store (default: the --input-type)"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``fusemix extract``; the exit status."""
    options = {name: getattr(args, name) for name in ADAPTER_OPTIONS if hasattr(args, name)}
    wrong = sorted(set(options) - ENCODER_OPTIONS[args.encoder])
    if wrong:
        raise CommandError(f"{flag(wrong[0])}: does not apply to --encoder {args.encoder}")
    if args.callable and args.encoder != "python":
        raise CommandError(f"--callable: only for --encoder python, not {args.encoder}")
    implied = ENCODER_INPUT.get(args.encoder)
    if implied is None and args.input_type is None:
        raise CommandError(f"--input-type: --encoder python needs it: one of {', '.join(INPUT_TYPES)}")
    if implied is not None and args.input_type not in (None, implied):
        raise CommandError(f"--input-type: --encoder {args.encoder} reads {implied}, not {args.input_type}")
    input_type = args.input_type or implied
    modality = args.modality or (None if input_type == "path" else input_type)
    if not modality:
        raise CommandError("--modality: name the modality of the latents (--input-type path implies none)")
    worker_index, num_workers = workers()
    if args.overwrite and num_workers > 1:
        raise CommandError(
            "--overwrite: not with several workers (each would clear the others' shards); delete --out first"
        )
    inputs = read_inputs(args.input, input_type, column=args.column, extensions=args.extensions)
    output = StoreOutput.start(
        check_output_folder("--out", args.out), inputs.items, overwrite=args.overwrite, write_items=worker_index == 0
    )

    if "device" not in options and args.encoder != "python":
        device = default_device(num_workers)
        if device is not None:
            options["device"] = device
    encoder = build_encoder(args, options, input_type)
    identity = encoder_identity_of(encoder)
    metadata = {**inputs.source, "items_file": ITEMS_FILE, ENCODER_DESCRIPTION: describe_encoder(encoder)}
    with contextlib.ExitStack() as stack:
        if inputs.base is None:
            run_encoder: Callable[[list[Any]], Any] = encoder
        else:
            threads = 1 if input_type == "path" else args.read_threads
            pool = stack.enter_context(ThreadPoolExecutor(threads)) if threads > 1 else None
            run_encoder = FileEncoder(encoder, file_reader(input_type, encoder), inputs.base, pool)
        store = _extract(
            args, output.root, run_encoder, inputs.items, modality, identity, metadata, worker_index, num_workers
        )
    if store is None:
        print(
            f"{PROG} extract: worker {worker_index} of {num_workers} finished its shards; the last worker to finish "
            "writes the manifest (if a worker failed, rerun this command in one process to finish the store)",
            file=sys.stderr,
        )
        return 0
    output.finish(store, "latents")
    return 0


def _encoder_flag(args: argparse.Namespace) -> str:
    return f"--callable {args.callable}" if args.encoder == "python" else f"--encoder {args.encoder}"


def _extract(
    args: argparse.Namespace,
    root: Path,
    encoder: Callable[[list[Any]], Any],
    items: list[str],
    modality: str,
    identity: dict[str, Any],
    metadata: dict[str, Any],
    worker_index: int,
    num_workers: int,
) -> LatentStore | None:
    """Run :func:`extract_latents` for this worker; the complete store, or ``None`` while shards are missing.

    An encoder output of the wrong type (a list, integers), refused by
    fusemix, is a user error naming the encoder; an exception from inside the
    encoder keeps its traceback.
    """
    try:
        with user_code_errors(_encoder_flag(args)):
            store = extract_latents(
                encoder,
                items,
                root,
                modality=modality,
                batch_size=args.batch_size,
                shard_size=args.shard_size,
                dtype=args.dtype,
                encoder_identity=identity,
                num_workers=num_workers,
                worker_index=worker_index,
                progress=not args.no_progress and worker_index == 0,
                metadata=metadata,
                overwrite=args.overwrite,
            )
    except TypeError as err:  # raised by fusemix (the encoder's own errors became UserCodeError)
        raise CommandError(f"{_encoder_flag(args)}: {err}") from err
    except StoreError as err:
        # Two workers finishing together may both finalize; the one that loses the race finds the manifest written.
        if num_workers == 1 or not (root / MANIFEST).exists():
            raise CommandError(in_flag_terms(error_message(err), LIBRARY_NAMES)) from err
        store = LatentStore.open(root, expected_modality=modality, expected_encoder=identity)
    except (ValueError, FileExistsError) as err:  # FileExistsError: another extraction holds --out
        raise CommandError(in_flag_terms(error_message(err), LIBRARY_NAMES)) from err
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        if worker_index == 0:
            finalize_store(root)
        torch.distributed.barrier()
        store = LatentStore.open(root)
    return store
