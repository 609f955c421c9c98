"""Adafactor under torch.distributed, with real processes on the gloo backend.

Each scenario spawns 2 processes that train a small model on the same batches as a single
process does, and checks the trajectories agree to float32 round-off: the sharded step adds
up the same partial sums in another order, which moves results by a few ulps per step.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from adafactor import Adafactor

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="this torch build has no distributed gloo support",
)

WORLD = 2
STEPS = 4
OPTIONS = [{}, {"beta1": 0.9}, {"beta1": 0.9, "momentum_of": "gradient", "weight_decay": 0.1}]


class Net(nn.Module):
    """Uneven row counts (33 rows over 2 ranks), a vector and a 3-D tensor."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(33, 16) * 0.3)
        self.b1 = nn.Parameter(torch.zeros(33))
        self.w2 = nn.Parameter(torch.randn(8, 33) * 0.3)
        self.heads = nn.Parameter(torch.randn(6, 10, 12) * 0.3)  # factored over (10, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(x @ self.w1.T + self.b1) @ self.w2.T
        return h + torch.einsum("bi,hij->bj", x[:, :10], self.heads)[:, :8]


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(32, 16, generator=gen)
    return x, torch.sin(x[:, :8])


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        x, y = batch(step)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def single_process(
    options: dict, steps: range, model: nn.Module | None = None
) -> dict[str, torch.Tensor]:
    model = model or Net()
    train(model, Adafactor(model.parameters(), **options), steps)
    return {k: v.detach() for k, v in model.named_parameters()}


# ---- scenarios, run in each of the 2 processes ------------------------------------------------


def fsdp2_matches_single_process(rank: int, tmp: Path) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, Shard

    for options in OPTIONS:
        model = Net()
        fully_shard(model)
        opt = Adafactor(model.parameters(), **options)
        train(model, opt, range(STEPS))
        expected = single_process(options, range(STEPS))
        for name, p in model.named_parameters():
            assert p.placements == (Shard(0),)
            torch.testing.assert_close(full(p.detach()), expected[name], rtol=1e-5, atol=1e-6)
        w1_state = opt.state[model.w1]
        assert w1_state["exp_avg_sq_row"].placements == (Shard(0),)  # rows, like the rows
        assert w1_state["exp_avg_sq_col"].placements == (Replicate(),)  # sums over all rows
        assert w1_state["exp_avg_sq_row"].shape == (33, 1)
        assert w1_state["exp_avg_sq_col"].to_local().shape == (1, 16)
        assert int(w1_state["step"]) == STEPS


def fsdp2_in_backward_matches_single_process(rank: int, tmp: Path) -> None:
    # The hooks run on the sharded gradient after FSDP2's reduce-scatter; the sums that span
    # shards are completed there, the same on every rank.
    from torch.distributed.fsdp import fully_shard

    for options in OPTIONS:
        for fused in (False, None):
            model = Net()
            fully_shard(model)
            opt = Adafactor(model.parameters(), **options, fused=fused, step_in_backward=True)
            for step in range(STEPS):
                x, y = batch(step)
                ((model(x) - y) ** 2).mean().backward()
                assert all(p.grad is None for p in model.parameters())
                opt.step()
            expected = single_process(options, range(STEPS))
            for name, p in model.named_parameters():
                torch.testing.assert_close(full(p.detach()), expected[name], rtol=1e-5, atol=1e-6)
            assert int(opt.state[model.w1]["step"]) == STEPS


def shards_round_independently_and_replicas_alike(rank: int, tmp: Path) -> None:
    # Stochastic rounding's bits hash where a shard starts: two shards holding the same values
    # and gradients round differently, the replicas of a replicated parameter alike.
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    half = torch.randn(64, 48, generator=torch.Generator().manual_seed(0))
    value, grad = torch.cat([half, half]), torch.cat([half, half]).flip(1)
    sharded = nn.Parameter(distribute_tensor(value.bfloat16(), mesh, [Shard(0)]))
    replicated = nn.Parameter(distribute_tensor(value.bfloat16(), mesh, [Replicate()]))
    opt = Adafactor([sharded, replicated], rounding="stochastic", rounding_seed=3, fused=False)
    sharded.grad = distribute_tensor(grad.bfloat16(), mesh, [Shard(0)])
    replicated.grad = distribute_tensor(grad.bfloat16(), mesh, [Replicate()])
    opt.step()
    whole = sharded.detach().full_tensor()
    assert not torch.equal(whole[:64], whole[64:])
    mine = replicated.detach().to_local()
    gathered = [torch.empty_like(mine) for _ in range(WORLD)]
    dist.all_gather(gathered, mine)
    assert torch.equal(gathered[0], gathered[1])


def compensated_shards_match_single_process(rank: int, tmp: Path) -> None:
    # A bfloat16 parameter sharded by rows and by columns, compensated rounding: its residual
    # is placed like it, and parameter and residual step as on one process (the sums that span
    # shards completed first; the writes are elementwise), eagerly and with the C kernels.
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    gen = torch.Generator().manual_seed(2)
    value = torch.randn(12, 10, generator=gen).bfloat16()
    grads = [torch.randn(12, 10, generator=gen).bfloat16() for _ in range(3)]
    for fused in (False, None):
        options = {"rounding": "compensated", "lr": 1e-3, "relative_step": False, "fused": fused}
        params = [nn.Parameter(distribute_tensor(value.clone(), mesh, [Shard(d)])) for d in (0, 1)]
        ref = nn.Parameter(value.clone())
        opt, ref_opt = Adafactor(params, **options), Adafactor([ref], **options)
        for g in grads:
            for p, d in zip(params, (0, 1)):
                p.grad = distribute_tensor(g.clone(), mesh, [Shard(d)])
            ref.grad = g.clone()
            opt.step()
            ref_opt.step()
        carried = ref.detach().float() + ref_opt.state[ref]["residual"].float()
        for p in params:
            residual = opt.state[p]["residual"]
            assert residual.placements == p.placements
            mine = p.detach().full_tensor().float() + residual.full_tensor().float()
            torch.testing.assert_close(mine, carried, rtol=1e-5, atol=1e-6)


def ddp_in_backward_is_refused(rank: int, tmp: Path) -> None:
    model = Net()
    ddp = nn.parallel.DistributedDataParallel(model)
    before = [p.detach().clone() for p in model.parameters()]
    try:
        Adafactor(ddp.parameters(), step_in_backward=True)
    except ValueError as error:
        assert "DistributedDataParallel" in str(error) and "fully_shard" in str(error)
    else:
        raise AssertionError("step_in_backward=True was accepted for a DDP model")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def tensor_parallel_columns_match(rank: int, tmp: Path) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    gen = torch.Generator().manual_seed(0)
    shapes = [(12, 9), (7, 20), (20,), (5, 6)]
    placements = [[Shard(1)], [Shard(1)], [Shard(0)], [Replicate()]]
    values = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(STEPS)]
    for options in OPTIONS:
        params = [
            nn.Parameter(distribute_tensor(v.clone(), mesh, pl))
            for v, pl in zip(values, placements)
        ]
        ref = [nn.Parameter(v.clone()) for v in values]
        opt, ref_opt = Adafactor(params, **options), Adafactor(ref, **options)
        for step_grads in grads:
            for p, q, g, pl in zip(params, ref, step_grads, placements):
                p.grad = distribute_tensor(g.clone(), mesh, pl)
                q.grad = g.clone()
            opt.step()
            ref_opt.step()
        for p, q in zip(params, ref):
            torch.testing.assert_close(p.detach().full_tensor(), q.detach(), rtol=1e-5, atol=1e-6)
        # Column statistics of a column-sharded matrix stay sharded; row sums are complete.
        assert opt.state[params[0]]["exp_avg_sq_col"].placements == (Shard(1),)
        assert opt.state[params[0]]["exp_avg_sq_row"].placements == (Replicate(),)


def stacked_shards_match(rank: int, tmp: Path) -> None:
    # [E, n, m] stacks with RMS per slice: sharded along the slice dim (no reduction needed
    # for the RMS values), along a factored dim (they are completed across ranks), both
    # step as on one process; eagerly and with the group kernels.
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    gen = torch.Generator().manual_seed(1)
    shape = (4, 10, 6)
    placements = [[Shard(0)], [Shard(1)], [Shard(2)]]
    scales = torch.logspace(-2, 2, 4)[:, None, None]
    values = [torch.randn(shape, generator=gen) * scales for _ in placements]
    grads = [[torch.randn(shape, generator=gen) * scales for _ in placements] for _ in range(3)]
    for fused in (False, None):
        options = {"rms_per_slice": True, "beta1": 0.9, "clip_threshold": 0.5, "fused": fused}
        params = [
            nn.Parameter(distribute_tensor(v.clone(), mesh, pl))
            for v, pl in zip(values, placements)
        ]
        ref = [nn.Parameter(v.clone()) for v in values]
        opt, ref_opt = Adafactor(params, **options), Adafactor(ref, **options)
        for step_grads in grads:
            for p, q, g, pl in zip(params, ref, step_grads, placements):
                p.grad = distribute_tensor(g.clone(), mesh, pl)
                q.grad = g.clone()
            opt.step()
            ref_opt.step()
        for p, q in zip(params, ref):
            torch.testing.assert_close(p.detach().full_tensor(), q.detach(), rtol=1e-5, atol=1e-6)


def ddp_keeps_ranks_identical(rank: int, tmp: Path) -> None:
    model = Net()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = Adafactor(ddp.parameters())
    for step in range(STEPS):
        x, y = batch(10 * step + rank)  # each rank its own data
        opt.zero_grad()
        ((ddp(x) - y) ** 2).mean().backward()
        opt.step()
    for p in model.parameters():
        gathered = [torch.empty_like(p) for _ in range(WORLD)]
        dist.all_gather(gathered, p.detach())
        assert torch.equal(gathered[0], gathered[1])
    assert not torch.equal(model.w1.detach(), Net().w1.detach())


def _checkpointed(rank: int, tmp: Path, load_from: str | None, save_to: str | None) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.fsdp import fully_shard

    model = Net()
    fully_shard(model)
    opt = Adafactor(model.parameters(), beta1=0.9)
    if load_from:
        model_sd, optim_sd = get_state_dict(model, opt)
        dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp / load_from)
        set_state_dict(model, opt, model_state_dict=model_sd, optim_state_dict=optim_sd)
    else:
        train(model, opt, range(3))
    if save_to:
        model_sd, optim_sd = get_state_dict(model, opt)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp / save_to)
    train(model, opt, range(3, 6))
    result = {k: full(v.detach()) for k, v in model.named_parameters()}
    if rank == 0:
        torch.save(result, tmp / f"{load_from or 'fresh'}-final.pt")


def save_from_two_ranks(rank: int, tmp: Path) -> None:
    _checkpointed(rank, tmp, load_from=None, save_to="two-ranks")


def load_into_two_ranks(rank: int, tmp: Path) -> None:
    _checkpointed(rank, tmp, load_from="one-rank", save_to=None)


# ---- process plumbing -------------------------------------------------------------------------


def _worker(rank: int, scenario: str, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    globals()[scenario](rank, Path(tmp))  # an exception reaches spawn, which reports it
    dist.barrier()  # every rank is done talking, and every result is on disk
    # Leave without tearing gloo down: its teardown aborted a process now and then under load
    # ("terminate called without an active exception", SIGABRT), after the scenario passed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(scenario, tmp: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_worker, args=(scenario.__name__, port, str(tmp)), nprocs=WORLD)


def test_fsdp2_matches_single_process(tmp_path):
    spawn(fsdp2_matches_single_process, tmp_path)


def test_tensor_parallel_matches_single_process(tmp_path):
    spawn(tensor_parallel_columns_match, tmp_path)


def test_stacked_shards_match_single_process(tmp_path):
    spawn(stacked_shards_match, tmp_path)


def test_fsdp2_in_backward_matches_single_process(tmp_path):
    spawn(fsdp2_in_backward_matches_single_process, tmp_path)


def test_shards_round_independently_and_replicas_alike(tmp_path):
    spawn(shards_round_independently_and_replicas_alike, tmp_path)


def test_compensated_shards_match_single_process(tmp_path):
    spawn(compensated_shards_match_single_process, tmp_path)


def test_ddp_in_backward_is_refused(tmp_path):
    spawn(ddp_in_backward_is_refused, tmp_path)


def test_ddp_keeps_ranks_identical(tmp_path):
    spawn(ddp_keeps_ranks_identical, tmp_path)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_dcp_two_ranks_to_one_and_back(tmp_path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    spawn(save_from_two_ranks, tmp_path)  # trains 3 steps, saves, trains 3 more
    uninterrupted = torch.load(tmp_path / "fresh-final.pt")

    # One process, no process group: load the 2-rank checkpoint and continue.
    model = Net()
    opt = Adafactor(model.parameters(), beta1=0.9)
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp_path / "two-ranks")
    set_state_dict(model, opt, model_state_dict=model_sd, optim_state_dict=optim_sd)
    assert int(opt.state[model.w1]["step"]) == 3
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp_path / "one-rank")
    train(model, opt, range(3, 6))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), uninterrupted[name], rtol=1e-5, atol=1e-6)

    # And back: the 1-process checkpoint into 2 ranks.
    spawn(load_into_two_ranks, tmp_path)
    resumed = torch.load(tmp_path / "one-rank-final.pt")
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=1e-5, atol=1e-6)


def test_fsdp_example_runs_under_torchrun(tmp_path):
    import subprocess
    import sys

    example = Path(__file__).parents[1] / "examples" / "fsdp_train.py"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            str(example),
            "--steps",
            "3",
            "--checkpoint",
            str(tmp_path / "ckpt"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "optimizer all-reduces 2" in result.stdout
    assert (tmp_path / "ckpt" / ".metadata").exists()
    assert not (tmp_path / "ckpt.partial").exists()
