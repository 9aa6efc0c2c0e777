"""A CPU stand-in for ``torch.cuda.set_sync_debug_mode("error")``: record what would make a GPU
stream wait for the host, while a network runs on the ``meta`` device.

On CUDA a host round trip inside a network is (a) a value read back on the host (``.item()``,
``.tolist()``, ``bool(t)``, ``nonzero``, ``.cpu()``, ``.numpy()``), or (b) host data copied in with
a blocking copy (``torch.tensor(data, device=d)``, ``torch.as_tensor(x, device=d)``,
``t.new_tensor(data)``, ``cpu_tensor.to(d)`` without ``non_blocking=True``). Run on ``meta``
tensors, (a) and (b) are visible to a torch-function mode (the Python-level calls) and a
dispatch mode (``_local_scalar_dense``, ``nonzero``, copies from a CPU tensor). The GPU tests
check the same code with ``torch.cuda.set_sync_debug_mode("error")``; this check runs everywhere.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_FACTORIES_FROM_HOST = {"tensor", "as_tensor", "new_tensor", "from_numpy"}
_READ_BACK = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"}


def _device_of(args: Any, kwargs: dict[str, Any]) -> str | None:
    device = kwargs.get("device")
    for a in args[1:]:
        if isinstance(a, (str, torch.device)):
            device = a
    return None if device is None else torch.device(device).type


class _Functions(TorchFunctionMode):
    def __init__(self, found: list[str]) -> None:
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_device = any(t.device.type != "cpu" for t in tensors)
        if name in _FACTORIES_FROM_HOST and _device_of((None, *args), kwargs) not in (None, "cpu"):
            self.found.append(f"{name}(..., device={kwargs.get('device')}): a host-to-device copy")
        elif name == "new_tensor" and on_device:
            self.found.append("Tensor.new_tensor on a device tensor: a host-to-device copy")
        elif name in _READ_BACK and on_device:
            self.found.append(f"Tensor.{name} on a device tensor: a device-to-host read")
        elif (
            name == "to"
            and args
            and isinstance(args[0], torch.Tensor)
            and args[0].device.type == "cpu"
            and _device_of(args, kwargs) not in (None, "cpu")
            and not kwargs.get("non_blocking", False)
        ):
            self.found.append("cpu_tensor.to(device) without non_blocking: a blocking copy")
        return func(*args, **kwargs)


class _Dispatch(TorchDispatchMode):
    def __init__(self, found: list[str]) -> None:
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        name = str(func)
        leaves = tree_leaves((args, kwargs))
        devices = {t.device.type for t in leaves if isinstance(t, torch.Tensor)}
        if "_local_scalar_dense" in name or name.startswith(("aten.nonzero", "aten.masked_select")):
            self.found.append(f"{name}: reads a value back on the host")
        elif len(devices) > 1 and name.startswith(("aten._to_copy", "aten.copy_")):
            self.found.append(f"{name} between {sorted(devices)}: a cross-device copy")
        return func(*args, **kwargs)


class HostRoundTrips:
    """Context manager: ``with HostRoundTrips() as found: ...`` then ``assert found == []``."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self._modes = (_Functions(self.found), _Dispatch(self.found))

    def __enter__(self) -> list[str]:
        for mode in self._modes:
            mode.__enter__()
        return self.found

    def __exit__(self, *exc: object) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
