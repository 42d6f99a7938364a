"""Distributed unit Fisher with real processes: ``torchrun --nproc_per_node=2`` (gloo, CPU).

The 2-rank result must equal one process on the concatenated shards (exact kind, float64,
up to the order of additions), on every rank; MC with per-rank generators must equal the
input-weighted mean of the per-shard MC estimates drawn with the same generators.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _fisher_ranks import MC_SAMPLES, MC_SEED, SHARDS, build, shard
from _torchrun import torchrun
from safetensors import safe_open

from natgrad import unit_fishers
from natgrad._distributed import process_group, rank_and_world
from natgrad.testing import assert_close

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the two ranks computed: ``[{key: tensor}, ...]`` and their metadata."""
    out = tmp_path_factory.mktemp("fisher_ranks")
    torchrun(str(HERE / "_fisher_ranks.py"), str(out))
    results = []
    for r in range(2):
        with safe_open(out / f"rank{r}.safetensors", "pt") as fh:
            results.append(({k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()))  # noqa: SIM118
    return results


def test_no_process_group_means_no_reduction():
    assert process_group() is None and rank_and_world() == (0, 1)


@pytest.mark.parametrize("tag", ["exact", "loader"])
def test_two_ranks_equal_one_process_on_all_data(ranks, tag):
    model, x = build()
    single = unit_fishers(model, x)
    for r, (tensors, _) in enumerate(ranks):
        for name, F in single.items():
            what = f"rank {r} {tag} layer {name}"
            assert_close(tensors[f"{tag}.{name}.matrix"], F.matrix, what=what)
            assert_close(tensors[f"{tag}.{name}.mean_p"], F.mean_p, what=what)
            assert_close(tensors[f"{tag}.{name}.c_sum"], F.c_sum, what=what)
            assert_close(tensors[f"{tag}.{name}.c_sq_sum"], F.c_sq_sum, what=what)
            assert int(tensors[f"{tag}.{name}.n"]) == F.n == sum(SHARDS)


def test_structured_blocks_are_reduced_too(ranks):
    model, x = build()
    for name, F in unit_fishers(model, x, structure="quasidiagonal").items():
        for r, (tensors, _) in enumerate(ranks):
            assert_close(tensors[f"quasi.{name}.diagonal"], F.diagonal, what=f"rank {r} {name}")
            assert_close(tensors[f"quasi.{name}.bias_column"], F.bias_column, what=f"rank {r}")


def test_mc_with_per_rank_generators_is_the_weighted_shard_mean(ranks):
    model, x = build()
    parts = [
        unit_fishers(
            model, shard(x, r), kind="mc", mc_samples=MC_SAMPLES,
            generator=torch.Generator().manual_seed(MC_SEED + r),
        )
        for r in range(2)
    ]  # fmt: skip
    for name in parts[0]:
        expected = sum(n * p[name].matrix for n, p in zip(SHARDS, parts, strict=True)) / sum(SHARDS)
        for r, (tensors, _) in enumerate(ranks):
            assert_close(tensors[f"mc.{name}.matrix"], expected, what=f"rank {r} mc {name}")
    # the two ranks' generators differ, so their shard estimates are not one stream reused
    assert not torch.equal(parts[0]["3"].matrix, parts[1]["3"].matrix)


def test_a_rank_without_inputs_fails_on_every_rank(ranks):
    for _, meta in ranks:
        assert "some rank passed no inputs" in meta["empty"]


def test_factor_rows_are_refused_on_every_rank(ranks):
    for _, meta in ranks:
        assert "factor rows, not sums" in meta["woodbury"]
