"""Crash and resume: SIGKILL at random steps, atomic checkpoints, state dicts across dtypes
and devices (``map_location``)."""

from __future__ import annotations

import copy
import io
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adafactor import Adafactor
from helpers import EXAMPLES, example

SCRIPT = EXAMPLES / "resumable_train.py"
STEPS, EVERY = 120, 10


def _command(out: Path) -> list[str]:
    return [
        sys.executable,
        str(SCRIPT),
        "--out",
        str(out),
        "--steps",
        str(STEPS),
        "--every",
        str(EVERY),
    ]


def _run_and_kill(out: Path, kill_after_step: int) -> int:
    """Start the script, SIGKILL it once it has printed ``step kill_after_step``; return the
    step it had reached when the kill landed."""
    proc = subprocess.Popen(_command(out), stdout=subprocess.PIPE, text=True)
    reached = 0
    for line in proc.stdout:
        if line.startswith("step "):
            reached = int(line.split()[1])
            if reached >= kill_after_step:
                os.kill(proc.pid, signal.SIGKILL)
                break
    proc.stdout.close()
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run finished before it was killed"
    return reached


def _load_final(out: Path) -> dict:
    return torch.load(out / "final.pt")


def _assert_bit_identical(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for pid in sa:
        assert sa[pid].keys() == sb[pid].keys()
        for key in sa[pid]:
            assert sa[pid][key].dtype == sb[pid][key].dtype
            assert torch.equal(sa[pid][key], sb[pid][key]), (pid, key)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]


def test_sigkill_at_random_steps_then_resume_is_bit_identical(tmp_path):
    rng = random.Random(20180404)  # seeded: the kill points are reproducible
    uninterrupted = tmp_path / "uninterrupted"
    subprocess.run(_command(uninterrupted), check=True, capture_output=True, timeout=120)

    crashed = tmp_path / "crashed"
    # Two kills at random steps after the first checkpoint, then a run to completion.
    first = rng.randint(EVERY + 1, STEPS // 2)
    second = rng.randint(first + 1, STEPS - 2)
    reached = []
    for kill_at in (first, second):
        reached.append(_run_and_kill(crashed, kill_at))
        assert not (crashed / "final.pt").exists()
        saved = torch.load(crashed / "checkpoint.pt")
        assert 0 < saved["step"] <= reached[-1] and saved["step"] % EVERY == 0
    # What a writer killed mid-write leaves behind: a half-written temporary file. It must be
    # ignored (and cleaned up), never read.
    (crashed / "checkpoint.pt.999999.tmp").write_bytes(b"\x80\x02 half a pickle")
    done = subprocess.run(
        _command(crashed), check=True, capture_output=True, text=True, timeout=120
    )
    assert f"resumed at step {saved['step']}" in done.stdout
    assert not list(crashed.glob("*.tmp"))

    _assert_bit_identical(_load_final(uninterrupted), _load_final(crashed))
    steps = {int(s["step"]) for s in _load_final(crashed)["optimizer"]["state"].values()}
    assert steps == {STEPS}


def test_a_failed_checkpoint_write_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    module = example("resumable_train")
    path = tmp_path / "checkpoint.pt"
    module.atomic_save({"step": 10, "weights": torch.arange(5.0)}, path)
    original = path.read_bytes()

    def crash_mid_write(obj, f):
        f.write(b"\x80\x02partial")  # some bytes reach the file, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module.torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="No space left"):
        module.atomic_save({"step": 20, "weights": torch.arange(6.0)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert torch.load(path)["step"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def _trained(dtype, steps=4, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(
        dtype
    )
    opt = Adafactor(model.parameters(), beta1=0.9)
    x = torch.randn(16, 6).to(dtype)
    for _ in range(steps):
        opt.zero_grad()
        model(x).float().pow(2).mean().backward()
        opt.step()
    return model, opt, x


def _save(model, opt) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize(
    "saved_dtype, loaded_dtype",
    [
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.bfloat16),
        (torch.float32, torch.bfloat16),
        (torch.float32, torch.float64),
    ],
)
def test_state_dict_round_trips_across_dtypes(saved_dtype, loaded_dtype):
    model, opt, x = _trained(saved_dtype)
    saved = torch.load(_save(model, opt), map_location="cpu")
    model2, _, _ = _trained(loaded_dtype, steps=0, seed=1)
    model2.load_state_dict(saved["model"])
    opt2 = Adafactor(model2.parameters(), beta1=0.9)
    opt2.load_state_dict(saved["opt"])
    wide = torch.float64 if loaded_dtype == torch.float64 else torch.float32
    for p, q in zip(model.parameters(), model2.parameters()):
        for key, value in opt.state[p].items():
            loaded = opt2.state[q][key]
            # Statistics take the new parameter's state dtype (float32 for 16-bit, else its
            # own); both sides here are at least float32, so no value is rounded.
            expected = value.dtype if key in ("step", "nonfinite_skips") else wide
            assert loaded.dtype == expected, key
            assert torch.equal(loaded.to(value.dtype), value), key
    # And training continues from there: step counts go on, everything stays finite.
    opt2.zero_grad()
    model2(x.to(loaded_dtype)).float().pow(2).mean().backward()
    opt2.step()
    for q in model2.parameters():
        assert int(opt2.state[q]["step"]) == 5
        assert torch.isfinite(q).all()
        assert all(torch.isfinite(v).all() for v in opt2.state[q].values())


def test_map_location_moves_state_to_the_parameters_device():
    model, opt, _ = _trained(torch.float32)
    buffer = _save(model, opt)
    # Loaded straight onto the meta device (shapes only, as for planning a bigger run)...
    on_meta = torch.load(buffer, map_location="meta")
    assert all(
        v.device.type == "meta" for s in on_meta["opt"]["state"].values() for v in s.values()
    )
    meta_model = copy.deepcopy(model).to("meta")
    meta_opt = Adafactor(meta_model.parameters(), beta1=0.9)
    meta_opt.load_state_dict(on_meta["opt"])
    for p, q in zip(model.parameters(), meta_model.parameters()):
        for key, value in meta_opt.state[q].items():
            assert value.device.type == "meta" and value.shape == opt.state[p][key].shape
    # ...and a CPU checkpoint loaded into a meta optimizer follows the parameters' device.
    buffer.seek(0)
    meta_opt2 = Adafactor(copy.deepcopy(model).to("meta").parameters(), beta1=0.9)
    meta_opt2.load_state_dict(torch.load(buffer, map_location=lambda storage, _: storage)["opt"])
    assert all(v.device.type == "meta" for s in meta_opt2.state.values() for v in s.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_checkpoint_resumes_on_cpu_bit_for_bit():
    model, opt, _x = _trained(torch.float32)
    cuda_model = copy.deepcopy(model).cuda()
    cuda_opt = Adafactor(cuda_model.parameters(), beta1=0.9)
    cuda_opt.load_state_dict(opt.state_dict())
    assert all(v.is_cuda for s in cuda_opt.state.values() for v in s.values())
    saved = torch.load(_save(cuda_model, cuda_opt), map_location="cpu")
    cpu_opt = Adafactor(model.parameters(), beta1=0.9)
    cpu_opt.load_state_dict(saved["opt"])
    for p in model.parameters():
        for key, value in opt.state[p].items():
            assert torch.equal(cpu_opt.state[p][key], value), key


def test_resume_from_a_state_dict_is_bit_identical_on_every_path(step_path):
    # Stop after 3 of 6 steps, save, load into a fresh optimizer, go on: every parameter and
    # state tensor equals an uninterrupted run's, bit for bit (bfloat16 parameters, bfloat16
    # momentum and stochastic rounding included: its seed is saved with the groups, and its
    # bits are a hash of it, the parameter, the step and the element).
    def params():
        gen = torch.Generator().manual_seed(11)
        shapes = [(12, 9), (7,), (2, 5, 6)]
        return [
            torch.nn.Parameter(torch.randn(s, generator=gen).to(torch.bfloat16)) for s in shapes
        ]

    options = dict(beta1=0.9, momentum_dtype=torch.bfloat16, stochastic_rounding=True)
    torch.manual_seed(5)  # the rounding seed of `opt` and of `first`, drawn alike
    grads = torch.Generator().manual_seed(12)
    gradients = [[torch.randn(p.shape, generator=grads) for p in params()] for _ in range(6)]

    def steps(opt, ps, which):
        for k in which:
            torch.manual_seed(100 + k)  # the kernels' seed of step k (the eager step needs none)
            for p, g in zip(ps, gradients[k]):
                p.grad = g.to(p.dtype)
            opt.step()

    straight = params()
    opt = Adafactor(straight, **options)
    steps(opt, straight, range(6))

    resumed = params()
    torch.manual_seed(5)
    first = Adafactor(resumed, **options)
    steps(first, resumed, range(3))
    buffer = io.BytesIO()
    torch.save({"model": [p.detach() for p in resumed], "opt": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = [torch.nn.Parameter(p.clone()) for p in saved["model"]]
    second = Adafactor(resumed, **options)  # another seed, until the saved one is loaded
    second.load_state_dict(saved["opt"])
    steps(second, resumed, range(3, 6))

    for p, q in zip(straight, resumed):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(second.state[q][key], value), key
