"""The ``natgrad`` command line: one sub-command per task, each in the module that owns it.

Each sub-command module provides ``add_arguments(parser)`` and ``run(args) -> int``; they
are imported only when their sub-command runs, so ``natgrad verify`` does not import torch
training code and ``natgrad --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "verify": ("natgrad.symbolic", "run every SymPy proof and print a table (exit 0 iff all hold)"),
    "models": ("natgrad.models", "list the paper's networks with parameter counts"),
    "train": (
        "natgrad.training.cli",
        "train a paper network, recording activations and checkpoints",
    ),
    "demo": (
        "natgrad.analysis.demo",
        "the main job: train ELU/ReLU/LReLU/SReLU nets and write the bias-shift report",
    ),
    "tables": (
        "natgrad.analysis.build",
        "rebuild the tidy tables (and --report) from run directories",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="natgrad", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    name = argv[0]
    if name not in COMMANDS:
        parser.error(f"unknown command {name!r}; choose from {', '.join(COMMANDS)}")
    module = importlib.import_module(COMMANDS[name][0])
    sub = argparse.ArgumentParser(prog=f"natgrad {name}", description=COMMANDS[name][1])
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    return int(module.run(args) or 0)
