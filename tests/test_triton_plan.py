"""What the Triton kernels' plan asks of a GPU, counted from the tables (no GPU, no compile):
enough programs in every launch that streams the elements to fill an H100/H200's 132 SMs
twice, and no program reading more than 64 times in a row (the loads a program waits for one
after another: one tile's blocks, one job's partial sums), for single large matrices and for
whole T5-small-like and GPT-2-small-like groups."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from adafactor.factoring import factored_dims, state_layout
from adafactor.kernels.plan import Access, Member, Plan, build_plan
from adafactor.model_shapes import gpt2_small_like, t5_small_like
from adafactor.options import DEFAULTS
from adafactor.phases import Size, TensorState
from adafactor.tiling import canonical

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")

SMS = 132  # an H100/H200 SXM
CHAIN = 64


def plan_of(shapes: list[tuple[int, ...]], dtype: torch.dtype = torch.bfloat16) -> Plan:
    """The Triton backend's plan of a group of parameters of ``shapes`` (on the meta device:
    no memory), factored as the default options factor them."""
    from adafactor.kernels import triton as kernels

    members = []
    for shape in shapes:
        dims = factored_dims(shape, DEFAULTS["factor_dims"], DEFAULTS["min_dim_size_to_factor"])
        layout = state_layout(
            shape,
            dtype,
            factored=True,
            factor_dims=DEFAULTS["factor_dims"],
            min_dim_size_to_factor=DEFAULTS["min_dim_size_to_factor"],
            momentum=False,
        )
        state = {k: torch.empty(s.shape, dtype=s.dtype, device="meta") for k, s in layout.items()}
        param = torch.empty(shape, dtype=dtype, device="meta")
        size = Size.of(shape, dims, False)
        members.append(
            Member(
                canonical(param, dims),
                canonical(torch.empty_like(param), dims),
                TensorState.of(state, dims),
                dims,
                size.numel,
                size.n,
                size.m,
                size.per_slice,
            )
        )
    return build_plan(members, kernels.GEOMETRY, torch.device("cpu"))


GROUPS = {
    "4096x4096": [(4096, 4096)],
    "128256x4096": [(128256, 4096)],
    "t5-small": [tuple(p.shape) for p in t5_small_like().values()],
    "gpt2-small": [tuple(p.shape) for p in gpt2_small_like().values()],
}


@pytest.mark.parametrize("name", ["4096x4096", "128256x4096"])
def test_a_large_matrix_fills_every_sm_twice(name):
    from adafactor.kernels import triton as kernels

    plan = plan_of(GROUPS[name])
    assert plan.tensors_access == [Access.VECTOR]  # read 4 elements at a time
    for kernel in kernels.TILE_KERNELS:
        (count,) = kernels.programs(plan)[kernel.__name__]  # one launch: one way of reading
        assert count >= 2 * SMS, (kernel.__name__, count)


@pytest.mark.parametrize("name", GROUPS)
def test_no_program_reads_more_than_64_times_in_a_row(name):
    from adafactor.kernels import triton as kernels

    chains = kernels.longest_chains(plan_of(GROUPS[name]))
    assert set(chains) == {k.__name__ for k in kernels.KERNELS}
    assert max(chains.values()) <= CHAIN, chains


def test_a_tall_matrix_sums_its_columns_over_many_programs():
    # The columns of a 128256×4096 vocabulary matrix are summed over 501 row tiles: by 32
    # line jobs (128 columns each), each adding 16 tiles' partial sums at once; no program
    # takes a whole matrix.
    from adafactor.kernels import triton as kernels
    from adafactor.kernels.plan import Job, JobKind

    plan = plan_of(GROUPS["128256x4096"])
    kinds = plan.jobs[:, Job.KIND]
    assert int((kinds == JobKind.COL_LINE).sum()) == 4096 // 128
    assert int((kinds == JobKind.ROW_LINE).sum()) == -(-128256 // 128)
    assert kernels.programs(plan)["sums_jobs"] == [plan.jobs.shape[0]]
    assert plan.jobs.shape[0] >= 2 * SMS
