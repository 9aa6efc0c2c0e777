"""Helpers for the frozen per-stage config dataclasses.

Each stage defines ``@dataclass(frozen=True) class XxxConfig`` whose fields are declared with
:func:`param`, which stores the help text (unit, range, spec section) in the field metadata.
The CLI generates its flags from those fields (:func:`unsam.cli.args.add_config_arguments`),
so a default or a help text lives in exactly one place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

__all__ = ["param", "config_to_dict", "config_hash"]


def param(default: Any, help: str, **metadata: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with a default and a help text (``metadata["help"]``).

    Tuples are allowed as defaults (immutable); lists and dicts are not.
    """
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple (immutable) as a config default, not a list/dict/set")
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-able dict of a (possibly nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def config_hash(config: Any) -> str:
    """Short stable hash of a config, stored in run manifests."""
    text = json.dumps(config_to_dict(config), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
