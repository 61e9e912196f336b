"""The ``fusemix`` parser and :func:`main`: one subcommand per module of :mod:`fusemix.cli`."""

from __future__ import annotations

import argparse
import sys
import typing
import warnings
from collections.abc import Sequence
from types import ModuleType

from fusemix._version import fusemix_version
from fusemix.cli import embed, evaluate, extract, train
from fusemix.cli.common import LIBRARY_ERRORS, PROG, VERBATIM, CommandError, error_message, verbatim_values

COMMANDS: dict[str, ModuleType] = {"extract": extract, "train": train, "evaluate": evaluate, "embed": embed}
"""Command name to its module: ``SUMMARY``, ``DESCRIPTION``, ``EPILOG``, ``add_arguments(parser)``, ``run(args)``."""

TOP_DESCRIPTION = """\
Align frozen unimodal encoders with FuseMix (latent mixup), from the command line.

A run has three steps, and a fourth to use the model:
  1. fusemix extract    encode every item of a dataset once with a frozen encoder
                        (Hugging Face, sentence-transformers or your own) into a latent store
  2. fusemix train      train one fusion adapter per modality on the stored latents
  3. fusemix evaluate   score cross-modal retrieval (Recall@K) with the trained model
  4. fusemix embed      embed a dataset into the trained model's shared space, from the raw
                        items, into a store to search
"""

TOP_EPILOG = """\
Run 'fusemix COMMAND --help' for a command's options and an example.
Results go to stdout, progress and notes to stderr; a user error exits with status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fusemix`` command line.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit status: 0 on success, 2 for a user error (reported as one
        line on stderr), 1 when training diverges, 130 when interrupted.

    Example:
        >>> main(["--version"])  # doctest: +ELLIPSIS
        fusemix ...
        0

    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version and argument errors exit through argparse
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    if args.command is None:
        commands = f"{', '.join(list(COMMANDS)[:-1])} or {list(COMMANDS)[-1]}"
        print(f"{PROG}: error: choose a command: {commands} (see '{PROG} --help')", file=sys.stderr)
        return 2
    prog = f"{PROG} {args.command}"
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _one_line_warning(prog)
    verbatim = VERBATIM.set(verbatim_values(args))  # the user's paths are never rewritten into flag names
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to resume where it stopped", file=sys.stderr)
        return 130
    except FloatingPointError as err:  # fit: the loss became NaN/Inf
        _print_error(prog, err)
        return 1
    except ImportError as err:
        if "pip install" not in str(err):  # fusemix's optional imports say how to install what is missing
            raise
        _print_error(prog, err)
        return 2
    except (CommandError, *LIBRARY_ERRORS) as err:
        _print_error(prog, err)
        return 2
    finally:
        warnings.formatwarning = formatwarning
        VERBATIM.reset(verbatim)


def _one_line_warning(prog: str) -> typing.Callable[..., str]:
    """A ``warnings.formatwarning`` that prints ``fusemix <command>: warning: ...``, without the source line."""

    def format_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> str:
        kind = "" if category is UserWarning else f" ({category.__name__})"
        return f"{prog}: warning{kind}: {' '.join(str(message).split())}\n"

    return format_warning


def _print_error(prog: str, err: BaseException) -> None:
    print(f"{prog}: error: {error_message(err)}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``fusemix <command>: error: ... (see ... --help)``."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fusemix`` command line (its subcommands included).

    Example:
        >>> args = build_parser().parse_args(["evaluate", "--model", "run/model", "--latents", "text=t.npy"])
        >>> args.command, args.latents
        ('evaluate', [('text', 't.npy')])

    """
    parser = _Parser(
        prog=PROG,
        formatter_class=_HelpFormatter,
        description=TOP_DESCRIPTION,
        epilog=TOP_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {fusemix_version()}")
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(
            name,
            help=command.SUMMARY,
            description=command.DESCRIPTION,
            epilog=command.EPILOG,
            formatter_class=_HelpFormatter,
        )
        command.add_arguments(sub)
        sub.set_defaults(command=name, run=command.run)
    return parser
