"""The golden fixtures' weight rule, written from the fixture READMEs (tests/data/fidelity/*/).

One ``torch.Generator().manual_seed(seed)``; the key table's rows in file order; one float32
``randn(shape)`` draw per drawn row. Two variants of the kind rule (does not import unsam):

- ``"names"`` (CutLER, whole-image; seed 20260101): the kind comes from the owning module's name,
  then each ``scale`` (regex, factor) multiplies the matching tensors after the draw.
- ``"table"`` (CascadePSP, promptable; seed 0): the kind comes from the table's dtype column, key
  suffixes and the sibling weight's rank; ``alias of X`` rows repeat row X, int64 rows draw nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re

import torch

NORM_OWNERS = {"norm", "norm1", "norm2", "decoder_norm"}
EMBED_NAMES = ("query_feat.weight", "query_embed.weight", "level_embed.weight", "level_embed")
EMBED_SUFFIXES = ("relative_position_bias_table", "level_embed", "mask_tokens.weight",
                  "pb_embedding.weight", "label_enc.weight", "lang_mapper", "class_embed",
                  "class_embed_part")  # fmt: skip


def read_table(path):
    """Rows of a key table as dicts (header = first non-'#' line; shape parsed as a tuple)."""
    lines = [ln.rstrip("\n").split("\t") for ln in open(path) if ln.strip() and ln[0] != "#"]
    rows = [dict(zip(lines[0], cols, strict=True)) for cols in lines[1:]]
    return lines[0][0], [{**r, "shape": tuple(json.loads(r["shape"]))} for r in rows]


def swin_index(n):
    """Swin relative_position_index of an (n, n) buffer, n = ws²: (dy + ws-1)(2ws-1) + dx + ws-1."""
    ws = math.isqrt(n)
    yx = [(i // ws, i % ws) for i in range(n)]
    return torch.tensor([[(a[0] - b[0] + ws - 1) * (2 * ws - 1) + a[1] - b[1] + ws - 1
                          for b in yx] for a in yx])  # fmt: skip


def make_state_dict(path, variant, seed, scale=()):
    key_col, rows = read_table(path)
    shapes = {r[key_col]: r["shape"] for r in rows}
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for r in rows:
        k, shape, note = r[key_col], r["shape"], r.get("note", "")
        parts = k.split(".")
        def draw(shape=shape):  # noqa: E306
            return torch.randn(shape, generator=g, dtype=torch.float32)
        if note.startswith("alias of "):
            continue  # filled below: the same tensor as its target, no draw
        if variant == "table" and r["dtype"] == "int64":
            sd[k] = swin_index(shape[0]) if k.endswith("relative_position_index") else (
                torch.zeros(shape, dtype=torch.int64))
        elif parts[-1] == "num_batches_tracked":
            sd[k] = torch.zeros(shape, dtype=torch.int64)
        elif k.endswith("criterion.empty_weight"):
            sd[k] = torch.tensor([1.0, 0.1])
        elif parts[-1] in ("running_mean", "running_var"):
            sd[k] = 0.3 * draw() if parts[-1] == "running_mean" else torch.exp(0.4 * draw())
        elif k.endswith(EMBED_NAMES if variant == "names" else EMBED_SUFFIXES):
            sd[k] = 0.5 * draw()
        elif variant == "names" and (parts[-2] in NORM_OWNERS or parts[-4:-3] == ["input_proj"]
                                     and parts[-2] == "1"):  # fmt: skip
            sd[k] = 1 + 0.25 * draw() if parts[-1] == "weight" else 0.2 * draw()
        elif len(shape) >= 2:
            sd[k] = draw() / math.sqrt(math.prod(shape[1:]))
        elif variant == "table" and parts[-1] == "weight":
            sd[k] = 1 + 0.25 * draw()
        elif variant == "table" and len(shapes.get(k[: -len("bias")] + "weight", ())) == 1:
            sd[k] = 0.2 * draw()
        else:
            sd[k] = 0.1 * draw()
        for pattern, factor in scale:
            if re.search(pattern, k):
                sd[k] = sd[k] * factor
    for r in rows:  # "alias of X": X is the key without the file prefix ("model." / "module.")
        if r.get("note", "").startswith("alias of "):
            k = r[key_col]
            sd[k] = sd[k.split(".")[0] + "." + r["note"].split()[2]]
    return {r[key_col]: sd[r[key_col]] for r in rows}


def checksum(sd):
    """sha256 over every tensor's raw bytes, in table (= dict) order, as the fixtures state it."""
    h = hashlib.sha256()
    for v in sd.values():
        h.update(v.contiguous().numpy().tobytes())
    return h.hexdigest()
