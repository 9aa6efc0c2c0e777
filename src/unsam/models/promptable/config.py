"""Hyper-parameters of the promptable model (Semantic-SAM interactive model, spec PROMPTABLE.md §1).

This is the only module that knows model sizes:

- ``swin_t``: the paper's model (spec §1.2-§1.5). Swin-T backbone (96 channels, depths 2/2/6/2), a
  6-layer multi-scale deformable-attention pixel decoder (hidden 256, FFN 2048), a 9-layer
  MaskDINO-style decoder with 6 granularity tokens per click. ~53 M learnable parameters.
- ``tiny``: the same architecture, narrow and shallow, for tests and CPU training (well under a
  second per forward at 128²). Its decoder width is 128: at 32 (its first value) the 1-click
  mIoU after 300 CPU training steps was 0.34, at 64 0.46, at 128 0.52 (issue 16; the backbone,
  which costs most, stays at 24 channels).

A config is a frozen dataclass; :meth:`PromptableConfig.to_dict` / :meth:`from_dict` round-trip it
through ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["CONFIG_FILE", "CONFIG_NAMES", "PromptableConfig"]

#: File name of the config inside a ``save_pretrained`` folder.
CONFIG_FILE = "config.json"
#: Names accepted by :meth:`PromptableConfig.named`.
CONFIG_NAMES: tuple[str, ...] = ("swin_t", "tiny")
_MODEL_TYPE = "unsam-promptable"


@dataclass(frozen=True)
class PromptableConfig:
    """Architecture of the promptable model. Defaults are the paper's Swin-T model (spec §1).

    Attributes:
        embed_dim: Swin patch-embedding width (stage-1 channels); stage s has ``embed_dim * 2**s``.
        depths: Swin blocks per stage (4 stages).
        num_heads: Swin attention heads per stage.
        window_size: Swin attention window side, in tokens (no clamping, spec §1.2).
        patch_size: Swin patch side, in pixels.
        mlp_ratio: Swin MLP hidden width / channels.
        drop_path_rate: Swin stochastic depth, linear 0 -> rate over all blocks (training only).
        hidden_dim: width of the pixel decoder, the decoder and the mask features (conv = mask dim).
        norm_groups: GroupNorm groups in the pixel decoder (must divide ``hidden_dim``).
        encoder_layers: deformable-attention layers of the pixel decoder.
        encoder_heads: attention heads of the pixel-decoder deformable attention.
        encoder_points: sampling points per head per level in the pixel decoder.
        encoder_ffn_dim: FFN hidden width of the pixel-decoder layers (the original reads the
            decoder's value, 2048).
        decoder_layers: decoder layers (all predict; inference reads the last).
        decoder_heads: attention heads of the decoder self- and cross-attention.
        decoder_points: sampling points per head per level in the decoder cross-attention.
        decoder_ffn_dim: FFN hidden width of the decoder layers.
        num_mask_tokens: granularity queries per click.
        size_divisibility: the padded input's sides are multiples of this, in pixels.
        pixel_mean: per-channel RGB mean on the 0-255 scale (normalisation, spec §1.1).
        pixel_std: per-channel RGB std on the 0-255 scale.
        train_image_size: side of the square ``train-promptable`` fitted its training images into,
            pixels; the predictor (``unsam prompt``), the AMG and ``eval-points`` then resize
            images the same way by default (a model trained at 128 px and shown a 160-px image
            loses most of its accuracy). None (official checkpoints): their own defaults, the
            original's 640 / 900 / 800 shortest side.
    """

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 4
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.3
    hidden_dim: int = 256
    norm_groups: int = 32
    encoder_layers: int = 6
    encoder_heads: int = 8
    encoder_points: int = 4
    encoder_ffn_dim: int = 2048
    decoder_layers: int = 9
    decoder_heads: int = 8
    decoder_points: int = 4
    decoder_ffn_dim: int = 2048
    num_mask_tokens: int = 6
    size_divisibility: int = 32
    pixel_mean: tuple[float, float, float] = (123.675, 116.280, 103.530)
    pixel_std: tuple[float, float, float] = (58.395, 57.120, 57.375)
    train_image_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "num_heads", tuple(int(h) for h in self.num_heads))
        object.__setattr__(self, "pixel_mean", tuple(float(v) for v in self.pixel_mean))
        object.__setattr__(self, "pixel_std", tuple(float(v) for v in self.pixel_std))
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise ValueError(
                f"PromptableConfig needs 4 Swin stages, got depths={self.depths}, "
                f"num_heads={self.num_heads}"
            )
        for s, heads in enumerate(self.num_heads):
            width = self.embed_dim * 2**s
            if width % heads:
                raise ValueError(f"Swin stage {s} width {width} is not divisible by {heads} heads")
        if self.hidden_dim % 2 or self.hidden_dim % self.norm_groups:
            raise ValueError(
                f"hidden_dim={self.hidden_dim} must be even and divisible by norm_groups="
                f"{self.norm_groups}"
            )
        for name in ("encoder_heads", "decoder_heads"):
            if self.hidden_dim % getattr(self, name):
                raise ValueError(f"hidden_dim={self.hidden_dim} is not divisible by {name}")
        if self.num_mask_tokens < 1 or self.decoder_layers < 1 or self.encoder_layers < 0:
            raise ValueError("num_mask_tokens and decoder_layers must be >= 1, encoder_layers >= 0")
        if self.size_divisibility % 32:
            raise ValueError(
                f"size_divisibility={self.size_divisibility} must be a multiple of 32 (the "
                "stride-32 backbone level); the original uses 32"
            )
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3 or min(self.pixel_std) <= 0:
            raise ValueError("pixel_mean / pixel_std need 3 values each, std > 0")
        if self.train_image_size is not None and self.train_image_size < 32:
            raise ValueError(f"train_image_size={self.train_image_size} must be >= 32 or None")

    @property
    def stage_channels(self) -> tuple[int, int, int, int]:
        """Channels of res2..res5 (Swin stages 1..4)."""
        c = self.embed_dim
        return (c, 2 * c, 4 * c, 8 * c)

    @classmethod
    def named(cls, name: Literal["swin_t", "tiny"]) -> PromptableConfig:
        """The config of a named size: ``"swin_t"`` (the paper's) or ``"tiny"`` (tests)."""
        if name == "swin_t":
            return cls()
        if name == "tiny":
            return cls(
                embed_dim=24,
                depths=(1, 1, 1, 1),
                num_heads=(1, 2, 2, 4),
                drop_path_rate=0.0,
                hidden_dim=128,
                norm_groups=8,
                encoder_layers=2,
                encoder_heads=4,
                encoder_points=2,
                encoder_ffn_dim=256,
                decoder_layers=3,
                decoder_heads=4,
                decoder_points=2,
                decoder_ffn_dim=256,
            )
        raise ValueError(f"unknown promptable model size {name!r}; choose one of {CONFIG_NAMES}")

    @classmethod
    def swin_t(cls) -> PromptableConfig:
        """The paper's model (spec §1)."""
        return cls.named("swin_t")

    @classmethod
    def tiny(cls) -> PromptableConfig:
        """A small model of the same architecture, for tests."""
        return cls.named("tiny")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists) with a ``model_type`` tag."""
        out: dict[str, Any] = {"model_type": _MODEL_TYPE}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptableConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: a key that is not a field, or a ``model_type`` of another model.
        """
        data = dict(data)
        model_type = data.pop("model_type", _MODEL_TYPE)
        if model_type != _MODEL_TYPE:
            raise ValueError(f"config has model_type {model_type!r}; expected {_MODEL_TYPE!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown PromptableConfig keys {unknown}; known: {sorted(names)}")
        return cls(**data)

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` into ``folder`` (created if needed); returns its path."""
        path = Path(folder) / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PromptableConfig:
        """Read a ``config.json`` file, or the one inside a folder."""
        p = Path(path)
        if p.is_dir():
            p = p / CONFIG_FILE
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}: not valid JSON ({exc})") from exc
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{p}: {exc}") from exc
