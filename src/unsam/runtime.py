"""Where and in which precision the networks run: one device rule and one dtype rule for every
command and every network.

- :func:`resolve_device` turns ``"auto" | "cpu" | "cuda" | "cuda:N"`` (or a ``torch.device``) into a
  ``torch.device``; ``auto`` is CUDA when PyTorch sees a GPU, else the CPU. A CUDA request on a
  machine without CUDA, or an index past the last GPU, is a ``ValueError`` whose message says
  which devices exist and to use ``--device cpu``.
- :func:`resolve_dtype` turns ``"float32" | "bfloat16"`` (or a ``torch.dtype``) into the dtype that
  a network's **weights and activations** are cast to (never autocast). Steps that need float32
  stay in float32 inside each network; each one is named at the line that does it.
- :func:`add_device_arguments` adds ``--device`` / ``--dtype`` to a command's parser, with one
  help text for all commands.
- :func:`cpu_matmul_kernel` says which CPU kernel family a bfloat16 matrix product takes (AMX,
  AVX-512 BF16 or neither), from the CPU flags and PyTorch's own capability report; benchmarks
  print it beside their bfloat16 figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DTYPES",
    "DEVICE_HELP",
    "DTYPE_HELP",
    "TRAINING_DTYPE_HELP",
    "resolve_device",
    "resolve_dtype",
    "dtype_name",
    "add_device_arguments",
    "cpu_matmul_kernel",
    "onednn_kernels",
]

#: The compute dtypes a user can ask for, by name.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}

DEVICE_HELP = (
    'where the networks run: "auto" (CUDA when PyTorch sees a GPU, else the CPU), "cpu", "cuda" '
    'or "cuda:N" (default: auto)'
)
DTYPE_HELP = (
    "network weights and activations: float32 (default, equal to the official code) or bfloat16 "
    "(several times faster on CPUs with AVX-512 BF16 / AMX and on GPUs; masks agree closely, see "
    "docs/benchmarks.md)"
)
TRAINING_DTYPE_HELP = (
    "training precision: float32 (default for a new run; --resume keeps the run's own) or "
    "bfloat16, which means autocast mixed precision: float32 master weights and AdamW state, "
    "matrix products in bfloat16 (AdamW cannot train bfloat16 weights reliably: small updates "
    "vanish below their rounding)"
)


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` for a user's ``--device`` value.

    Args:
        spec: ``"auto"`` (or None), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, or a ``torch.device``.

    Returns:
        ``cpu`` or ``cuda:N`` (``"cuda"`` becomes ``cuda:<current device>``).

    Raises:
        ValueError: an unknown device name, CUDA asked for where PyTorch sees none, or a GPU
            index that does not exist; the message names the devices that exist.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
    try:
        device = torch.device(spec.strip() if isinstance(spec, str) else spec)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from err
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"--device {spec!r}: unsam runs on cpu or cuda; use auto, cpu or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(
            f"--device {spec!r}: PyTorch sees no CUDA GPU on this machine (torch "
            f"{torch.__version__}); use --device cpu or --device auto"
        )
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= count:
        raise ValueError(
            f"--device {spec!r}: this machine has {count} CUDA device(s), cuda:0 .. "
            f"cuda:{count - 1}"
        )
    return torch.device("cuda", index)


def resolve_dtype(spec: str | torch.dtype | None = "float32") -> torch.dtype:
    """The compute dtype for a user's ``--dtype`` value (``"float32"`` when None).

    Raises:
        ValueError: a name other than float32 / bfloat16.
    """
    if spec is None:
        return torch.float32
    if isinstance(spec, torch.dtype):
        if spec not in DTYPES.values():
            raise ValueError(f"dtype {spec}: expected one of {sorted(DTYPES)}")
        return spec
    name = str(spec).strip().lower().removeprefix("torch.")
    name = {"fp32": "float32", "bf16": "bfloat16", "float": "float32"}.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"--dtype {spec!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"`` (the name written to run settings)."""
    return str(dtype).removeprefix("torch.")


def add_device_arguments(
    parser: argparse.ArgumentParser | Any,
    *,
    dtype: bool = True,
    device_default: str = "auto",
    training: bool = False,
) -> None:
    """Add ``--device`` (and ``--dtype`` unless ``dtype=False``) with the shared help texts.

    ``training=True`` (``train``, ``train-promptable``): ``--dtype`` gets
    :data:`TRAINING_DTYPE_HELP` and no parsed default (absent unless given), so a new run uses its
    config's float32 and ``--resume`` keeps the run's stored dtype.
    """
    parser.add_argument("--device", default=device_default, metavar="DEVICE", help=DEVICE_HELP)
    if dtype:
        parser.add_argument(
            "--dtype",
            default=argparse.SUPPRESS if training else "float32",
            choices=sorted(DTYPES),
            help=TRAINING_DTYPE_HELP if training else DTYPE_HELP,
        )


def cpu_matmul_kernel() -> dict[str, Any]:
    """Which kernels a bfloat16 matrix product can use on this CPU, and how that was checked.

    Returns:
        ``{"cpu": model name, "flags": [amx_bf16, amx_tile, avx512_bf16 present],
        "torch_capability": torch.backends.cpu.get_cpu_capability(), "onednn": bool,
        "bf16_kernel": "AMX" | "AVX-512 BF16" | "none (bf16 emulated)", "check": str}``.
    """
    flags: set[str] = set()
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    wanted = [f for f in ("amx_bf16", "amx_tile", "avx512_bf16") if f in flags]
    if {"amx_bf16", "amx_tile"} <= flags:
        kernel = "AMX"
    elif "avx512_bf16" in flags:
        kernel = "AVX-512 BF16"
    else:
        kernel = "none (bf16 emulated)"
    return {
        "cpu": model,
        "flags": wanted,
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn": bool(torch.backends.mkldnn.is_available()),
        "bf16_kernel": kernel,
        "onednn_kernels": onednn_kernels(),
        "check": "/proc/cpuinfo flags amx_bf16+amx_tile (AMX) or avx512_bf16; the oneDNN "
        "implementations that a bf16 linear and conv2d ran under ONEDNN_VERBOSE=1 (an 'amx' "
        "suffix means AMX tiles); torch.backends.cpu.get_cpu_capability()",
    }


_PROBE = """
import torch
a = torch.randn(256, 256, dtype=torch.bfloat16)
torch.nn.functional.linear(a, torch.randn(256, 256, dtype=torch.bfloat16))
torch.nn.functional.conv2d(torch.randn(1, 16, 32, 32, dtype=torch.bfloat16),
                           torch.randn(16, 16, 3, 3, dtype=torch.bfloat16))
"""


def onednn_kernels(timeout: float = 120.0) -> dict[str, str]:
    """The oneDNN implementations that a bfloat16 linear and convolution really ran, read from
    ``ONEDNN_VERBOSE=1`` in a child process (e.g. ``{"matmul": "brg_matmul:avx512_core_amx",
    "convolution": "brg_conv_fwd:avx512_core_amx", "isa": "..."}``; empty when oneDNN printed
    nothing, e.g. where PyTorch routes bf16 elsewhere)."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "OMP_NUM_THREADS": "1"}
    try:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
            timeout=timeout,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found: dict[str, str] = {}
    for line in out.splitlines():
        cols = line.split(",")
        if len(cols) > 4 and cols[2] == "info" and cols[3] == "cpu" and cols[4].startswith("isa:"):
            found["isa"] = cols[4][len("isa:"):]
        elif len(cols) > 6 and cols[2] == "primitive" and cols[3] == "exec":
            if cols[5] in ("matmul", "convolution", "inner_product") and cols[5] not in found:
                found[cols[5]] = cols[6]
    return found
