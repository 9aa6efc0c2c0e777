"""DINO ViT patch features: last-layer attention keys (spec §2.2 step 1, §3.1, §11.2).

:class:`DinoFeatureExtractor` wraps a transformers ``ViTModel`` (no pooler). A forward hook on the
last layer's key projection (``layers.{L-1}.attention.k_proj`` in transformers 5.x,
``encoder.layer.{L-1}.attention.attention.key`` in 4.x) is registered **once**, at construction
(the original registered one per call and never removed it, spec §10 bug 14). The hook output is
``LayerNorm(tokens) @ W_k + b_k`` with the heads concatenated, exactly the ``k`` the original
sliced out of the fused qkv; the CLS token is dropped. The hook also stops the forward pass right
there, so the last block's attention, MLP and the final LayerNorm are never computed.

:func:`load_feature_extractor` builds an extractor from a hub id, a local transformers folder, an
official DINO ``.pth`` (converted by :mod:`unsam.features.convert`) or ``"classic"``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from unsam.features.base import FeatureExtractor, MissingWeightsError
from unsam.features.convert import DINO_LAYER_NORM_EPS, vit_from_dino_checkpoint

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DINO_HUB_IDS",
    "DinoFeatureExtractor",
    "load_feature_extractor",
    "find_key_projection",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Hub ids of the DINO ViTs → the official checkpoint holding the same weights.
DINO_HUB_IDS = {
    "facebook/dino-vits8": "dino_deitsmall8_pretrain",
    "facebook/dino-vits16": "dino_deitsmall16_pretrain",
    "facebook/dino-vitb8": "dino_vitbase8_pretrain",
    "facebook/dino-vitb16": "dino_vitbase16_pretrain",
}
_OFFICIAL_URL = "https://dl.fbaipublicfiles.com/dino/{0}/{0}.pth"
_HF_DEFAULT_EPS = 1e-12
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".tar", ".safetensors", ".bin")


class _StopForward(Exception):
    """Raised by the key hook to end the forward pass once the keys are captured."""


def find_key_projection(model: nn.Module) -> tuple[str, nn.Linear]:
    """The key projection ``nn.Linear`` of the last transformer layer of a ViT.

    Looks for modules named ``*k_proj`` (transformers 5.x) or ``*.key`` (4.x) and returns the
    last one in module order, which belongs to the last layer.

    Returns:
        (module name, module).

    Raises:
        ValueError: the model has no such Linear layer.
    """
    found = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and (name.endswith("k_proj") or name.endswith(".key"))
    ]
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no key projection (a Linear named '*k_proj' or '*.key'); "
            "pass a transformers ViTModel"
        )
    name, mod = found[-1]
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if layers is not None and not re.search(rf"(^|\.){layers - 1}\.", name):
        raise ValueError(
            f"the last key projection {name!r} is not in the last layer ({layers - 1})"
        )
    return name, mod


class DinoFeatureExtractor(FeatureExtractor):
    """Last-layer attention keys of a DINO ViT, one C-dim vector per patch (CLS dropped).

    Images are scaled to [0, 1] and normalised with the ImageNet RGB mean/std inside; position
    embeddings are bicubically interpolated to the input grid (``interpolate_pos_encoding``).

    Args:
        model: a transformers ``ViTModel`` (pooler not needed).
        name: label stored with the features (hub id or path).
        device: torch device string, e.g. ``"cpu"`` or ``"cuda"``.
        dtype: compute dtype ``"float32"`` | ``"bfloat16"`` | ``"float16"`` (the model is cast);
            the output is always float32.
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str = "dino",
        device: str = "cpu",
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        batch_size: int = 8,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r}; expected one of {sorted(_DTYPES)}")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; expected >= 1")
        config = getattr(model, "config", None)
        if (
            config is None
            or not hasattr(config, "patch_size")
            or not hasattr(config, "hidden_size")
        ):
            raise ValueError(f"{type(model).__name__} has no ViT config (patch_size, hidden_size)")
        self.name = name
        self.device = torch.device(device)
        self.dtype = _DTYPES[dtype]
        self.batch_size = int(batch_size)
        ps = config.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        self.model = model.eval().to(device=self.device, dtype=self.dtype)
        self.key_module_name, key_module = find_key_projection(self.model)
        self.feature_dim = int(key_module.out_features)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self._keys: torch.Tensor | None = None
        # Registered once (spec §10 bug 14); removed by close().
        self._hook = key_module.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._keys = output
        raise _StopForward

    def close(self) -> None:
        """Remove the forward hook (the extractor cannot be used afterwards)."""
        self._hook.remove()

    def _extract(self, batch: npt.NDArray[np.uint8]) -> torch.Tensor:
        b, s, s2, _ = batch.shape
        h, w = s // self.patch_size, s2 // self.patch_size
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
            x = ((x - self._mean) / self._std).to(self.dtype)
            self._keys = None
            try:
                self.model(pixel_values=x, interpolate_pos_encoding=True)
            except _StopForward:
                pass
            keys = self._keys
            self._keys = None
            if keys is None:
                raise RuntimeError(
                    f"the key hook on {self.key_module_name} did not fire during the forward pass"
                )
            if keys.shape[1] != h * w + 1:
                raise RuntimeError(
                    f"expected {h * w} patch tokens + CLS from a {s}x{s2} input, got "
                    f"{keys.shape[1]} tokens"
                )
            return keys[:, 1:, :].float().reshape(b, h, w, -1).cpu()


def _hub_offline() -> bool:
    from unsam.hub import hub_offline

    return hub_offline()


def _missing_hub_message(model_id: str) -> str:
    official = DINO_HUB_IDS.get(model_id)
    alt = (
        f" (or the official checkpoint {_OFFICIAL_URL.format(official)}, used as-is)"
        if official is not None
        else ""
    )
    return (
        f"DINO weights {model_id!r} are not in the Hugging Face cache and cannot be downloaded "
        "here: "
        f"download config.json and model.safetensors from https://huggingface.co/{model_id} into a "
        f"local folder{alt} and point --features PATH (model=PATH in load_feature_extractor) at it."
    )


def _missing_file_message(path: Path) -> str:
    from unsam.io.checkpoints import missing_weights_message

    stem = path.name.split(".")[0]
    if stem in DINO_HUB_IDS.values():
        return missing_weights_message("dino", path, file=path.name, url=_OFFICIAL_URL.format(stem))
    return missing_weights_message("dino", path)


def _from_pretrained(
    source: str, *, local_only: bool, cache_dir: str | None
) -> tuple[nn.Module, dict[str, Any]]:
    """``ViTModel.from_pretrained`` without a pooler, with the loading report."""
    from transformers import ViTModel

    from unsam.hub import quiet_loading

    with quiet_loading():
        model, info = ViTModel.from_pretrained(
            source,
            add_pooling_layer=False,
            output_loading_info=True,
            local_files_only=local_only,
            cache_dir=cache_dir,
        )
    return model, info


def _check_loaded(model: nn.Module, info: dict[str, Any], source: str) -> nn.Module:
    """Strict loading: a plain ViT whose every weight came from the checkpoint."""
    model_type = getattr(model.config, "model_type", "vit")
    if model_type != "vit":
        raise ValueError(
            f"{source}: model_type={model_type!r}; only plain ViT (DINO v1) models are supported"
        )
    missing = sorted(info.get("missing_keys", ()))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    unexpected = sorted(
        k for k in info.get("unexpected_keys", ()) if not k.startswith(("pooler.", "classifier."))
    )
    if missing or mismatched or unexpected:
        raise ValueError(
            f"{source}: weights do not match the ViT config: missing {missing}, "
            f"mismatched {mismatched}, unexpected {unexpected}"
        )
    return model


def _set_layer_norm_eps(model: nn.Module, eps: float | None, source: str) -> None:
    """Apply DINO's LayerNorm eps (1e-6).

    The hub DINO configs carry the transformers ViT default 1e-12 although DINO was trained with
    1e-6; with ``eps=None`` a config holding exactly 1e-12 is switched to 1e-6, any other value
    kept.
    """
    config = model.config
    current = float(config.layer_norm_eps)
    target = (
        eps if eps is not None else (DINO_LAYER_NORM_EPS if current == _HF_DEFAULT_EPS else current)
    )
    if target == current:
        return
    if eps is None:
        logger.info("%s: layer_norm_eps %g -> %g (DINO's value)", source, current, target)
    config.layer_norm_eps = target
    for mod in model.modules():
        if isinstance(mod, nn.LayerNorm):
            mod.eps = target


def load_feature_extractor(
    model: str | os.PathLike[str] = "facebook/dino-vitb8",
    *,
    device: str = "cpu",
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    batch_size: int = 8,
    num_heads: int | None = None,
    layer_norm_eps: float | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> FeatureExtractor:
    """Build a patch-feature extractor.

    Args:
        model: one of
            - a hub id (``facebook/dino-vits8``, ``dino-vits16``, ``dino-vitb8`` (default, the
              paper's), ``dino-vitb16``), loaded from the Hugging Face cache or downloaded;
            - a local transformers folder (``config.json`` + safetensors);
            - an official DINO checkpoint file (``dino_vitbase8_pretrain.pth``,
              ``dino_deitsmall8_pretrain.pth``, full training checkpoints with
              ``teacher``/``student``
              entries …), converted on the fly;
            - ``"classic"``: the weight-free colour/texture extractor (lower quality, see
              :mod:`unsam.features.classic`).
        device: torch device string.
        dtype: compute dtype; output is always float32.
        batch_size: images per forward pass.
        num_heads: heads of a converted ``.pth`` (default hidden / 64, right for DINO ViT-S/B).
        layer_norm_eps: force a LayerNorm eps; default: DINO's 1e-6 replaces the HF default 1e-12.
        cache_dir: Hugging Face cache folder for hub ids (default: the HF default cache).

    Returns:
        A :class:`FeatureExtractor`.

    Raises:
        MissingWeightsError: the weights are not on disk / in the cache and cannot be downloaded.
        ValueError: the file or folder is not a usable DINO ViT.
    """
    name = os.fspath(model)
    if name == "classic":
        from unsam.features.classic import ClassicFeatureExtractor

        return ClassicFeatureExtractor(batch_size=batch_size)
    path = Path(name).expanduser()
    looks_local = (
        path.exists()
        or name.startswith((".", "/", "~"))
        or (path.parent != Path(".") and path.parent.is_dir())  # "runs/typo" where runs/ exists
        or name.lower().endswith(_CHECKPOINT_SUFFIXES)
        or name.count("/") != 1
    )
    cache = os.fspath(cache_dir) if cache_dir is not None else None
    if looks_local:
        if not path.exists():
            raise MissingWeightsError(_missing_file_message(path))
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ValueError(
                    f"{path}: folder has no config.json; save a transformers ViTModel there with "
                    "save_pretrained or pass an official DINO .pth file"
                )
            from unsam.io.checkpoints import check_safetensors_file

            for weights in path.glob("*.safetensors"):
                check_safetensors_file(weights)  # a truncated download is named here
            net = _check_loaded(
                *_from_pretrained(str(path), local_only=True, cache_dir=None), str(path)
            )
        else:
            net = vit_from_dino_checkpoint(path, num_heads=num_heads)
    else:
        try:
            loaded = _from_pretrained(name, local_only=True, cache_dir=cache)
        except (
            Exception
        ):  # not cached (OSError / huggingface_hub errors): try the hub unless offline
            if _hub_offline():
                raise MissingWeightsError(_missing_hub_message(name)) from None
            logger.info("%s is not cached; downloading it from the Hugging Face hub", name)
            try:
                loaded = _from_pretrained(name, local_only=False, cache_dir=cache)
            except Exception:  # network, auth or missing repo: one sentence, no hub stack trace
                raise MissingWeightsError(_missing_hub_message(name)) from None
        net = _check_loaded(*loaded, name)
    _set_layer_norm_eps(net, layer_norm_eps, name)
    extractor = DinoFeatureExtractor(
        net, name=name, device=device, dtype=dtype, batch_size=batch_size
    )
    logger.info(
        "DINO features from %s: patch %d, %d-d keys, %s on %s",
        name,
        extractor.patch_size,
        extractor.feature_dim,
        dtype,
        device,
    )
    return extractor
