"""What the benchmark ran on: the platform, the CPU, the memory, the GPU on CUDA, and the
versions of torch and of every peer package."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

from .candidates import PEER_PACKAGES


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """The machine's description for results.json (the GPU's only when ``device`` is cuda)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        **_lscpu(),
    }
    try:
        with open("/proc/meminfo") as f:
            info["memory_bytes"] = int(f.readline().split()[1]) * 1024
    except OSError:
        pass
    if device == "cuda":
        info.update(_gpu())
    info["peers"] = {package: _version(package) for package in PEER_PACKAGES}
    return info


def check_device(device: str) -> None:
    """Raise ``ValueError`` if ``device`` cannot run here (CUDA is looked at only for cuda)."""
    if device == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        raise ValueError(
            f"--device cuda: no CUDA device is available (torch {torch.__version__}, {build})"
        )


def _lscpu() -> dict[str, str]:
    """The CPU's model, L3 cache and hypervisor, where ``lscpu`` tells them."""
    try:
        lscpu = subprocess.run(
            ["lscpu"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    info = {}
    for line in lscpu.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Model name", "L3 cache", "Hypervisor vendor"):
            info[key.strip().lower().replace(" ", "_")] = value.strip()
    return info


def _gpu() -> dict[str, Any]:
    properties = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {
        "gpu": properties.name,
        "gpu_memory_bytes": properties.total_memory,
        "cuda": torch.version.cuda,
    }


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None
