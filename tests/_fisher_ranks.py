r"""Worker of the 2-process unit Fisher test (``tests/test_distributed.py``), run by torchrun.

Each rank takes its shard of the same seeded data (uneven: rank r gets ``SHARDS[r]`` rows),
computes ``unit_fishers`` (dense and quasi-diagonal) of a small conv + fully connected net with the process group
initialised (gloo) and writes every layer's result to ``<out>/rank<r>.safetensors``:
``exact.<layer>.matrix``/``.mean_p`` from a tensor, ``loader.<layer>.matrix`` from an
iterable of batches, ``mc.<layer>.matrix`` with a generator seeded ``MC_SEED + rank``, and
``n`` the number of inputs the result claims. ``empty`` records the error message every rank
gets when rank 1 passes no batches. The test compares these with one process on all data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

SHARDS = (7, 5)  # rows per rank (uneven on purpose)
MC_SEED = 1234
MC_SAMPLES = 3


def build() -> tuple[nn.Module, torch.Tensor]:
    """The model and ALL the inputs (float64), identical on every process."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ELU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
        nn.ReLU(),
        nn.Linear(5, 4),
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    x = torch.randn(sum(SHARDS), 2, 4, 4, generator=gen, dtype=torch.float64)
    return model, x


def shard(x: torch.Tensor, rank: int) -> torch.Tensor:
    """Rank ``rank``'s rows of ``x``."""
    start = sum(SHARDS[:rank])
    return x[start : start + SHARDS[rank]]


def main(out: Path) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    from natgrad import unit_fishers, woodbury_unit_fisher
    from natgrad._distributed import exit_rank
    from natgrad.errors import InputError

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    model, x = build()
    mine = shard(x, rank)
    tensors: dict[str, torch.Tensor] = {}
    exact = unit_fishers(model, mine)
    loader = unit_fishers(model, [(xb, None) for xb in mine.split(3)])
    gen = torch.Generator().manual_seed(MC_SEED + rank)
    mc = unit_fishers(model, mine, kind="mc", mc_samples=MC_SAMPLES, generator=gen)
    quasi = unit_fishers(model, mine, structure="quasidiagonal")
    for name, F in quasi.items():
        tensors[f"quasi.{name}.diagonal"] = F.diagonal
        tensors[f"quasi.{name}.bias_column"] = F.bias_column
    for tag, result in (("exact", exact), ("loader", loader), ("mc", mc)):
        for name, F in result.items():
            tensors[f"{tag}.{name}.matrix"] = F.matrix
            tensors[f"{tag}.{name}.mean_p"] = F.mean_p
            tensors[f"{tag}.{name}.n"] = torch.tensor(F.n)
            tensors[f"{tag}.{name}.c_sum"] = F.c_sum
            tensors[f"{tag}.{name}.c_sq_sum"] = F.c_sq_sum
    metadata = {}
    try:
        woodbury_unit_fisher(model, "3", mine)
    except InputError as exc:
        metadata["woodbury"] = str(exc)
    try:
        unit_fishers(model, [] if rank == 1 else [(mine, None)])
    except InputError as exc:
        metadata["empty"] = str(exc)
    save_file(tensors, str(out / f"rank{rank}.safetensors"), metadata=metadata)
    dist.destroy_process_group()
    exit_rank(0)  # skip the interpreter's teardown, which occasionally aborts a gloo rank


if __name__ == "__main__":
    main(Path(sys.argv[1]))
