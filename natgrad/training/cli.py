r"""``natgrad train``: train a paper network, recording activations and checkpoints.

Example::

    natgrad train --net mnist-fc --unit elu --dataset digits --epochs 3
    natgrad train --net cifar-11 --unit relu --batch-norm --data-dir ~/data --set lr=0.02

Settings start from the paper's preset for ``--net`` (:mod:`natgrad.training.config`);
explicit flags and then ``--set key=value`` override it. Outputs go to ``--run-dir``
(default ``runs/<net>-<unit>[-bn]-<dataset>-s<seed>``); an interrupted run started again
with the same command resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import sys

from natgrad.argtypes import data_folder, positive_int
from natgrad.data.registry import DATASETS
from natgrad.errors import NatgradError

# flags named as the config keys they set
_FLAGS = ("unit", "alpha", "dataset", "data_dir", "epochs", "seed", "lr", "batch_size",
          "checkpoint_every", "optimizer")  # fmt: skip
_SWITCHES = ("batch_norm", "layer_norm", "centre")  # store_true flags: True or the preset's


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from natgrad.models import NETWORKS
    from natgrad.training.config import OPTIMIZERS
    from natgrad.units import UNIT_NAMES

    parser.add_argument("--net", required=True, choices=list(NETWORKS))
    parser.add_argument("--unit", choices=UNIT_NAMES, default=None, help="default elu")
    parser.add_argument("--alpha", type=float, default=None, help="ELU/LReLU/PReLU alpha")
    parser.add_argument("--batch-norm", action="store_true", help="batch norm before each unit")
    parser.add_argument("--layer-norm", action="store_true",
                        help="layer norm before each unit (mnist-fc)")  # fmt: skip
    parser.add_argument("--dataset", default=None, help=", ".join(DATASETS))
    parser.add_argument(
        "--data-dir",
        default=None,
        type=data_folder,
        help="folder holding the data files (recorded as an absolute path)",
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=None, metavar="K")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                        help="sgd (default) or a unit natural gradient (natgrad.optim); its "
                        "settings: --set ng_kind=, rel_damping=, layer_damping=, "
                        "refresh_every=, fisher_ema=")  # fmt: skip
    parser.add_argument("--centre", action="store_true",
                        help="centred units (Schraudolph; Raiko et al.), plain SGD")  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto (GPU if any), cpu or cuda")
    parser.add_argument("--run-dir", default=None, help="output folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config field (repeatable), e.g. lr_schedule=0:0.1,100:0.01")  # fmt: skip
    parser.add_argument("--no-resume", action="store_true", help="start over in --run-dir")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # numbers of the config are checked by TrainConfig, which names them as --set does
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    import torch

    from natgrad.training.config import apply_overrides, default_config
    from natgrad.training.ddp import launched_by_torchrun, train_ddp
    from natgrad.training.loop import train

    distributed = launched_by_torchrun()  # under torchrun: data-parallel (training/ddp.py)

    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        flags = {key: getattr(args, key) for key in _FLAGS if getattr(args, key) is not None}
        flags.update({key: True for key in _SWITCHES if getattr(args, key)})
        config = apply_overrides(default_config(args.net), args.set, **flags)
        result = (train_ddp if distributed else train)(
            config,
            args.run_dir,
            device=args.device,
            resume=not args.no_resume,
            progress=not args.no_progress,
        )
    except NatgradError as exc:
        print(f"natgrad train: error: {exc}", file=sys.stderr)
        return _finish(distributed, 2, clean=False)
    if not distributed or torch.distributed.get_rank() == 0:
        last = result.metrics[-1]
        err = last["test_error"]
        err_text = "" if err is None else f", test error {100 * err:.2f} %"
        print(
            f"{config.net}/{config.unit} on {config.dataset}: epoch {last['epoch']}, "
            f"train loss {last['train_loss']:.4f}, test loss {last['test_loss']:.4f}{err_text}; "
            f"outputs in {result.run_dir}"
        )
    return _finish(distributed, 0, clean=True)


def _finish(distributed: bool, code: int, *, clean: bool) -> int:
    r"""``code``; under ``torchrun``, the rank ends here (:func:`natgrad._distributed.exit_rank`)
    after destroying the process group: gloo's worker threads alive at exit abort the process
    ("terminate called without an active exception"). After a clean run the ranks first meet
    at a barrier, so that no rank tears its connections down while another still uses them;
    after an error (the other ranks may be anywhere) not."""
    if not distributed:
        return code
    import torch.distributed as dist

    from natgrad._distributed import exit_rank

    if dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
    exit_rank(code)
    return code  # pragma: no cover - exit_rank does not return
