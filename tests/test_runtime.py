"""The shared --device / --dtype rules (unsam.runtime)."""

from __future__ import annotations

import argparse

import pytest
import torch

from unsam.runtime import add_device_arguments, resolve_device, resolve_dtype


def test_auto_is_cuda_only_where_cuda_is():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected


def test_cpu_and_bad_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="not a device"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="cpu or cuda"):
        resolve_device("meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_names_the_fix():
    with pytest.raises(ValueError, match="--device cpu"):
        resolve_device("cuda:0")


@pytest.mark.gpu
def test_cuda_index_past_the_last_gpu():
    n = torch.cuda.device_count()
    assert resolve_device("cuda") == torch.device("cuda", torch.cuda.current_device())
    with pytest.raises(ValueError, match=f"{n} CUDA device"):
        resolve_device(f"cuda:{n}")


def test_dtypes():
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype(torch.bfloat16) is torch.bfloat16
    assert resolve_dtype(None) is torch.float32
    with pytest.raises(ValueError, match="float32, bfloat16"):
        resolve_dtype("float16")


def test_arguments():
    parser = argparse.ArgumentParser()
    add_device_arguments(parser)
    args = parser.parse_args([])
    assert (args.device, args.dtype) == ("auto", "float32")
    assert parser.parse_args(["--dtype", "bfloat16"]).dtype == "bfloat16"
