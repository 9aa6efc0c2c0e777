"""The restricted unpickler of backbone .pkl files (training/whole_image/backbone_init.py) and
the safe loader of CutLER checkpoints (divide/cutler/checkpoint.py): what they must refuse, and
the Python 2 pickles they must still read."""

from __future__ import annotations

import codecs
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from unsam.divide.cutler import read_checkpoint
from unsam.training.whole_image.backbone_init import (
    RestrictedUnpickler,
    UnsafePickleError,
    load_restricted_pickle,
)


class _Py2Pickler(pickle._Pickler):  # type: ignore[misc,name-defined]
    """Writes ``bytes`` as Python 2 ``str`` (BINSTRING), as a pickle made by Python 2 holds numpy
    array data (detectron2's .pkl files come from Python 2 era tools)."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def test_python2_pickle_of_numpy_arrays_reads_with_latin1(tmp_path: Path) -> None:
    """Array bytes stored as a Python 2 str (here: bytes >= 0x80) come back unchanged only when
    the str is decoded as latin-1."""
    arr = np.array([1.5, -2.0, 3.25e-3, 7.0], dtype=np.float32)  # float32 bytes include 0xc0, 0xbf
    assert max(arr.tobytes()) >= 0x80
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump({"model": {"w": arr}})
    raw = buf.getvalue()
    assert pickle.BINSTRING in raw and b"_codecs" not in raw  # really the Python 2 form
    path = tmp_path / "py2.pkl"
    path.write_bytes(raw)
    out = load_restricted_pickle(path)
    np.testing.assert_array_equal(out["model"]["w"], arr)
    assert out["model"]["w"].dtype == np.float32


def test_numpy_1_module_names_are_accepted(tmp_path: Path) -> None:
    """Pickles written by numpy < 2 name ``numpy.core.multiarray`` where numpy 2 writes
    ``numpy._core.multiarray``; both must load."""
    arr = np.arange(5, dtype=np.float32)
    raw = pickle.dumps({"w": arr}, protocol=2)
    assert b"numpy._core.multiarray" in raw
    old = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path = tmp_path / "np1.pkl"
    path.write_bytes(old)
    np.testing.assert_array_equal(load_restricted_pickle(path)["w"], arr)


class _Reduce:
    def __init__(self, call: object, args: tuple) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple:
        return self.call, self.args


def _load(obj: object, protocol: int = 2) -> object:
    return RestrictedUnpickler(io.BytesIO(pickle.dumps(obj, protocol=protocol)), "x.pkl").load()


def test_codecs_encode_only_with_latin1() -> None:
    """Protocol-2 pickles spell bytes as ``_codecs.encode(str, 'latin1')``; any other codec is
    refused (it is not what a plain pickle needs)."""
    assert _load(b"\xff\x00") == b"\xff\x00"
    with pytest.raises(UnsafePickleError, match="rot13"):
        _load(_Reduce(codecs.encode, ("abc", "rot13")))
    with pytest.raises(UnsafePickleError, match="utf-8"):
        _load(_Reduce(codecs.encode, ("abc", "utf-8")))


def test_persistent_ids_are_refused() -> None:
    class WithPid(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            return "storage-0" if obj == "external" else None

    buf = io.BytesIO()
    WithPid(buf, protocol=2).dump({"a": "external"})
    with pytest.raises(UnsafePickleError, match="persistent id"):
        RestrictedUnpickler(io.BytesIO(buf.getvalue()), "x.pkl").load()


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("numpy", "load"),  # reads another file, with pickles if asked to
        ("numpy", "frombuffer"),  # allowed only as numpy._core.numeric._frombuffer
        ("builtins", "getattr"),
        ("collections", "namedtuple"),  # beside the allowed collections.OrderedDict
        ("numpy.core.multiarray", "array"),  # beside the allowed _reconstruct / scalar
    ],
)
def test_globals_beside_the_allow_list_are_refused(module: str, name: str) -> None:
    raw = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"q\x00."
    with pytest.raises(UnsafePickleError, match=rf"{module}\.{name}"):
        RestrictedUnpickler(io.BytesIO(raw), "x.pkl").load()


def test_allowed_containers_and_numpy_values_round_trip() -> None:
    import collections

    data = collections.OrderedDict(
        a=np.arange(6, dtype=np.int64).reshape(2, 3), b=np.float64(2.5), c=[1, (2.0, None)]
    )
    for protocol in (2, 4, 5):
        out = _load(data, protocol)
        assert isinstance(out, collections.OrderedDict) and list(out) == ["a", "b", "c"]
        np.testing.assert_array_equal(out["a"], data["a"])
        assert out["b"] == 2.5 and out["c"] == [1, (2.0, None)]


def test_cutler_checkpoint_refuses_object_arrays(tmp_path: Path) -> None:
    """Numpy arrays load (reconstruct functions and numeric dtypes are allowed), object arrays do
    not: unpickling one would rebuild arbitrary Python objects."""
    ok = tmp_path / "ok.pth"
    torch.save({"model": {"w": np.ones((2, 2), np.float32), "n": np.int64(3)}}, ok)
    state = read_checkpoint(ok)
    assert torch.equal(state["w"], torch.ones(2, 2)) and int(state["n"]) == 3
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"w": np.array([1, "x"], dtype=object)}}, bad)
    # refused by the weights-only unpickler (it names the dtype class), not by a later conversion
    with pytest.raises(ValueError, match="ObjectDType"):
        read_checkpoint(bad)
