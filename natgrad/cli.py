r"""The ``natgrad`` command line: one sub-command per task, each in the module that owns it.

Each sub-command module provides ``add_arguments(parser)`` and ``run(args) -> int``; they
are imported only when their sub-command runs, so ``natgrad verify`` does not import torch
training code and ``natgrad --help`` (:data:`OVERVIEW`, :data:`COMMANDS`, examples and where
the documentation is) stays fast.

Example:
    >>> main(["--version"])  # doctest: +ELLIPSIS
    natgrad ...
    0
"""

from __future__ import annotations

import argparse
import importlib
import sys

from natgrad import __version__
from natgrad.errors import NatgradError

OVERVIEW = """\
natgrad computes the theory of the ELU paper (Clevert, Unterthiner & Hochreiter, ICLR 2016)
on real networks: the exact, Monte-Carlo and empirical unit Fisher information of every unit
of Linear and Conv2d layers, the unit natural gradient (Theorem 1, Ollivier's unit-wise
natural gradient), the bias-shift correction (Theorem 2), and invariant measures of how
close the plain gradient is to the natural one. It trains the paper's networks with any
unit (ELU, ReLU, LReLU, SReLU, PReLU, SELU) and writes tables and an HTML report with
per-seed statistics. Every fast path is checked against a brute-force float64 reference
and SymPy."""

EXAMPLES = """\
examples:
  natgrad demo                              # 4 unit types x 8 seeds on MNIST -> reports/demo/
  natgrad train --net mnist-fc --unit elu --dataset fashion-mnist --epochs 20
  natgrad tables reports/demo/runs --out tables --report
  natgrad COMMAND --help                    # the options of one command

documentation (in the source repository):
  README.md        installation, the main job, the Python API
  docs/theory.md   the mathematics: unit Fisher, Lemmas 1-2, Theorems 1-2, measures,
                   damping, statistics
  docs/paper.md    the paper's networks, settings and numbers; what natgrad chose"""

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "verify": ("natgrad.symbolic", "run every SymPy proof and print a table (exit 0 iff all hold)"),
    "models": ("natgrad.models", "list the paper's networks with parameter counts"),
    "train": ("natgrad.training.cli", "train a paper network, recording activations and "
              "checkpoints"),
    "compare": ("natgrad.studies.compare", "train ReLU/ELU nets with SGD, centring, "
                "quasi-diagonal and unit natural gradient"),
    "demo": ("natgrad.studies.demo", "the main job: ELU/ReLU/LReLU/SReLU nets on MNIST, unit "
             "Fishers, the report (--dataset digits: a smoke mode with 7 unit types incl. SELU "
             "and batch norm)"),
    "tables": ("natgrad.analysis.build", "rebuild the tidy tables (and --report) from run "
               "directories"),
}  # fmt: skip


class _OneLineParser(argparse.ArgumentParser):
    """A sub-command parser whose errors are one line (exit 2), as natgrad's other errors."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: the overview, ``--version`` and one entry per command."""
    parser = argparse.ArgumentParser(prog="natgrad", description=OVERVIEW, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("-V", "--version", action="store_true",
                        help="print natgrad's version and exit")  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``natgrad ARGV``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"natgrad {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        parser.error(f"unknown command {name!r}; choose from {', '.join(COMMANDS)}")
    module = importlib.import_module(COMMANDS[name][0])
    sub = _OneLineParser(prog=f"natgrad {name}", description=COMMANDS[name][1])
    module.add_arguments(sub)
    try:
        args = sub.parse_args(argv[1:])
    except SystemExit as exc:  # a refused argument: its one line is printed, exit 2
        if exc.code in (0, None):  # --help exits as argparse does
            raise
        return 2
    try:
        return int(module.run(args) or 0)
    except NatgradError as exc:  # bad input: one line, exit 2 (every command, one place)
        print(f"natgrad {name}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system said no (permissions, a full or read-only disk)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"natgrad {name}: error: {where}{exc.strerror or exc}; check the path, its "
              "permissions and the free space", file=sys.stderr)  # fmt: skip
        return 2
