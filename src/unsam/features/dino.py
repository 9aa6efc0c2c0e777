"""DINO ViT patch features: last-layer attention keys (spec §2.2 step 1, §3.1, §11.2).

:class:`DinoFeatureExtractor` wraps a transformers ``ViTModel`` (no pooler). A forward hook on the
last layer's key projection (``layers.{L-1}.attention.k_proj`` in transformers 5.x,
``encoder.layer.{L-1}.attention.attention.key`` in 4.x) is registered **once**, at construction
(the original registered one per call and never removed it, spec §10 bug 14). The hook output is
``LayerNorm(tokens) @ W_k + b_k`` with the heads concatenated, exactly the ``k`` the original
sliced out of the fused qkv; the CLS token is dropped. The hook also stops the forward pass right
there, so the last block's attention, MLP and the final LayerNorm are never computed.

Precision and speed (``dtype="bfloat16"``): the weights and the activations are cast to bfloat16
(never autocast). The transformer blocks then run through :class:`_KeyEncoder`, the same
arithmetic as the transformers forward with fewer, larger kernels: one fused q/k/v projection,
``scaled_dot_product_attention`` (flash kernels on the CPU and on CUDA), and on the CPU oneDNN
linear layers with pre-packed weights, the GELU and the residual additions fused into them (about
1.3x the transformers forward in bf16 on AVX-512 BF16 CPUs; the weights pack once). Two steps stay
in float32, each named where it happens: the pixel normalisation (uint8 → ImageNet-normalised,
rounded to bf16 once) and the keys handed out (cast to float32 before they leave the device, once
per batch: conquer's merge compares cosine similarities of adjacent patches, MaskCut thresholds
them; both run in float32/float64 on the CPU).

Memory: one forward pass of ``b`` images of ``S x S'`` pixels holds about
:meth:`DinoFeatureExtractor.bytes_per_image` ``x b`` bytes of activations; with ``batch_size=None``
the extractor takes as many images per pass as fit in its memory budget (256 MiB on the CPU,
4 GiB on a GPU, by default).

Length: the fused key encoder reproduces, block by block, the transformers forward that the
extractor otherwise runs with its hook, and both paths share the extractor's checks; loading
(hub id, folder, official .pth) shares its error messages.

:func:`load_feature_extractor` builds an extractor from a hub id, a local transformers folder, an
official DINO ``.pth`` (converted by :mod:`unsam.features.convert`) or ``"classic"``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from unsam.features.base import FeatureExtractor, MissingWeightsError
from unsam.features.convert import DINO_LAYER_NORM_EPS, vit_from_dino_checkpoint
from unsam.runtime import dtype_name, resolve_device, resolve_dtype

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
#: Default activation budget of one forward pass when ``batch_size`` is None, MiB.
DEFAULT_MEMORY_BUDGET_MIB = {"cpu": 256, "cuda": 4096}
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


def _mkldnn_linear_ok(dtype: torch.dtype) -> bool:
    """Whether oneDNN's fused linear op with pre-packed weights runs here (checked on a tiny
    product, against ``F.linear``)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        ops = torch.ops.mkldnn
        w = torch.arange(12, dtype=torch.float32).reshape(3, 4).to(dtype) / 8
        x = torch.ones(2, 4, dtype=dtype)
        b = torch.ones(3, dtype=dtype)
        packed = ops._reorder_linear_weight(w, 2)
        got = ops._linear_pointwise(x, packed, b, "none", [], "")
        return bool(torch.equal(got, nn.functional.linear(x, w, b)))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


class _Linear:
    """``y = act(x @ W.T + b) (+ residual)`` with oneDNN pre-packed weights on the CPU (the
    activation and the residual addition fused into the product) or ``F.linear`` elsewhere."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, packed: bool) -> None:
        self.packed = packed
        self.bias = bias
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, 4096) if packed else weight

    def __call__(
        self, x: torch.Tensor, *, gelu: bool = False, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.packed:
            ops = torch.ops.mkldnn
            if residual is not None and not gelu:
                return ops._linear_pointwise.binary(x, residual, self.weight, self.bias, "add")
            # algorithm "none" = the exact (erf) GELU of DINO and transformers' "gelu"
            y = ops._linear_pointwise(
                x, self.weight, self.bias, "gelu" if gelu else "none", [], "none" if gelu else ""
            )
        else:
            y = nn.functional.linear(x, self.weight, self.bias)
            if gelu:
                y = torch.ops.aten.gelu_(y)  # in place: one 4C-wide buffer, not two
        return y if residual is None else y.add_(residual)


class _KeyEncoder:
    """The ViT forward up to the last layer's keys, with fewer and larger kernels.

    Same arithmetic as transformers' ``ViTModel`` in eval mode (5.x layout:
    ``layers.i.attention.{q,k,v,o}_proj``, ``layernorm_before/after``, ``mlp.fc1/fc2``). The
    embeddings are transformers' own module (pixel projection, CLS token, bicubic
    position-embedding interpolation); each block is ``h += o(SDPA(q, k, v))`` on ``LN1(h)``,
    then ``h += fc2(GELU(fc1(LN2(h))))``; the last block stops at ``k(LN1(h))``. The q/k/v
    projections are one product against their concatenated weights. Built by :meth:`build`,
    which returns None for another layout (the extractor then runs the transformers forward with
    its hook).
    """

    def __init__(self, model: nn.Module, layers: Any, packed: bool) -> None:
        config = model.config
        self.embeddings = model.embeddings
        self.heads = int(config.num_attention_heads)
        self.packed = packed
        self.blocks: list[dict[str, Any]] = []
        last = len(layers) - 1
        for i, layer in enumerate(layers):
            att, mlp = layer.attention, layer.mlp
            projs = [att.k_proj] if i == last else [att.q_proj, att.k_proj, att.v_proj]
            weight = torch.cat([p.weight.detach() for p in projs])
            biases = [p.bias for p in projs]
            bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
            block: dict[str, Any] = {
                "ln1": layer.layernorm_before,
                "qkv": _Linear(weight, bias, packed),
            }
            if i < last:
                block.update(
                    ln2=layer.layernorm_after,
                    o=_Linear(att.o_proj.weight.detach(), _detached(att.o_proj.bias), packed),
                    fc1=_Linear(mlp.fc1.weight.detach(), _detached(mlp.fc1.bias), packed),
                    fc2=_Linear(mlp.fc2.weight.detach(), _detached(mlp.fc2.bias), packed),
                    act=mlp.activation_fn,
                )
            self.blocks.append(block)
        self.fused_gelu = getattr(config, "hidden_act", None) == "gelu"

    @classmethod
    def build(
        cls, model: nn.Module, device: torch.device, dtype: torch.dtype
    ) -> _KeyEncoder | None:
        layers = getattr(model, "layers", None)
        needed = (
            "attention.q_proj",
            "attention.k_proj",
            "attention.v_proj",
            "attention.o_proj",
            "layernorm_before",
            "layernorm_after",
            "mlp.fc1",
            "mlp.fc2",
            "mlp.activation_fn",
        )
        if (
            not isinstance(layers, nn.ModuleList)
            or not len(layers)
            or not hasattr(model, "embeddings")
        ):
            return None
        for layer in layers:
            for path in needed:
                obj: Any = layer
                for part in path.split("."):
                    obj = getattr(obj, part, None)
                if obj is None:
                    return None
        packed = device.type == "cpu" and _mkldnn_linear_ok(dtype)
        return cls(model, layers, packed)

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S')`` normalised pixels in the model dtype → ``(B, 1 + N, C)`` last-layer
        keys (CLS first), in the model dtype."""
        h = self.embeddings(pixel_values, interpolate_pos_encoding=True)
        b, n, d = h.shape
        for block in self.blocks[:-1]:
            y = block["ln1"](h)
            qkv = block["qkv"](y).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            att = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
            h = block["o"](att.transpose(1, 2).reshape(b, n, d), residual=h)
            y = block["ln2"](h)
            if self.fused_gelu:
                y = block["fc1"](y, gelu=True)
            else:
                y = block["act"](block["fc1"](y))
            h = block["fc2"](y, residual=h)
        last = self.blocks[-1]
        return last["qkv"](last["ln1"](h))


def _detached(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


class DinoFeatureExtractor(FeatureExtractor):
    """Last-layer attention keys of a DINO ViT, one C-dim vector per patch (CLS dropped).

    Images are scaled to [0, 1] and normalised with the ImageNet RGB mean/std inside; position
    embeddings are bicubically interpolated to the input grid (``interpolate_pos_encoding``).

    Args:
        model: a transformers ``ViTModel`` (pooler not needed).
        name: label stored with the features (hub id or path).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``
            (:func:`unsam.runtime.resolve_device`).
        dtype: ``"float32"`` | ``"bfloat16"`` (or the torch dtype): the weights and activations
            are cast to it; the output is always float32.
        batch_size: images per forward pass; None: as many as fit in ``memory_budget_mib``
            (:meth:`bytes_per_image` each).
        memory_budget_mib: activation memory of one forward pass when ``batch_size`` is None;
            None: 256 MiB on the CPU, 4096 MiB on a GPU.
        fast: run the blocks through :class:`_KeyEncoder` (default) rather than the transformers
            forward with a hook; both give the same keys up to float rounding.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str = "dino",
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        batch_size: int | None = 8,
        memory_budget_mib: int | None = None,
        fast: bool = True,
    ) -> None:
        dtype = resolve_dtype(dtype)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; expected >= 1 or None (auto)")
        if memory_budget_mib is not None and memory_budget_mib < 1:
            raise ValueError(f"memory_budget_mib={memory_budget_mib}; expected >= 1 or None")
        config = getattr(model, "config", None)
        if (
            config is None
            or not hasattr(config, "patch_size")
            or not hasattr(config, "hidden_size")
        ):
            raise ValueError(f"{type(model).__name__} has no ViT config (patch_size, hidden_size)")
        self.name = name
        self.device = resolve_device(device)
        self.dtype = dtype
        self.batch_size = None if batch_size is None else int(batch_size)  # type: ignore[assignment]
        self.memory_budget_mib = (
            DEFAULT_MEMORY_BUDGET_MIB.get(self.device.type, 256)
            if memory_budget_mib is None
            else int(memory_budget_mib)
        )
        ps = config.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        if hasattr(config, "_attn_implementation") and config._attn_implementation == "eager":
            try:  # the hook path's attention: SDPA's flash kernels, not the N x N eager softmax
                model.set_attn_implementation("sdpa")
            except (AttributeError, ValueError, ImportError):
                pass
        # the cast: weights (and buffers) in `dtype`; activations follow from the input below
        self.model = model.eval().requires_grad_(False).to(device=self.device, dtype=self.dtype)
        self.key_module_name, key_module = find_key_projection(self.model)
        self.feature_dim = int(key_module.out_features)
        self._encoder = _KeyEncoder.build(self.model, self.device, self.dtype) if fast else None
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self._keys: torch.Tensor | None = None
        # Registered once (spec §10 bug 14); removed by close().
        self._hook = key_module.register_forward_hook(self._capture)

    @property
    def kernel(self) -> str:
        """Which forward runs: ``"onednn-packed"`` (CPU fast path), ``"fused"`` (fast path with
        ``F.linear``) or ``"transformers"`` (the model's own forward with the key hook)."""
        if self._encoder is None:
            return "transformers"
        return "onednn-packed" if self._encoder.packed else "fused"

    def bytes_per_image(self, image_hw: tuple[int, int]) -> int:
        """Activation bytes one ``image_hw`` image adds to a forward pass (the batching formula).

        ``(12 * T * C + 2 * heads * T^2 [transformers eager attention only]) * itemsize
        + 16 * S * S'`` with ``T = (S / p) * (S' / p) + 1`` tokens and ``C`` the hidden size. At
        the peak of a block live the residual stream, its LayerNorm, the fused q/k/v (3 C), the
        attention kernels' own q/k/v copies (3 C), the attention output and its token-major copy,
        and the projection's output: 11 C measured on CUDA (PyTorch's caching allocator, ViT-B/8,
        16 crops, float32 and bf16), plus one C of slack; plus the input pixels (uint8, float32
        normalised, model dtype). SDPA keeps no ``T x T`` matrix. ViT-B/8 on 256² crops: 19.0 MiB
        in bfloat16, 37.0 MiB in float32.
        """
        s, s2 = int(image_hw[0]), int(image_hw[1])
        tokens = (s // self.patch_size) * (s2 // self.patch_size) + 1
        hidden = int(self.model.config.hidden_size)
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        per = 12 * tokens * hidden
        impl = getattr(self.model.config, "_attn_implementation", "sdpa")
        if self._encoder is None and impl == "eager":
            per += 2 * int(self.model.config.num_attention_heads) * tokens * tokens
        return per * itemsize + 16 * s * s2

    def batch_for(self, image_hw: tuple[int, int]) -> int:
        """Images per forward pass: ``batch_size``, or ``floor(budget / bytes_per_image)`` (at
        least 1) when it is None."""
        if self.batch_size is not None:
            return max(1, int(self.batch_size))
        budget = self.memory_budget_mib * 2**20
        return max(1, budget // self.bytes_per_image(image_hw))

    def _capture(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._keys = output
        raise _StopForward

    def close(self) -> None:
        """Remove the forward hook (the extractor cannot be used afterwards)."""
        self._hook.remove()

    def _forward_keys(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S')`` normalised pixels (model dtype) → ``(B, 1 + N, C)`` keys."""
        if self._encoder is not None:
            return self._encoder(x)
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
        return keys

    def _extract(self, batch: npt.NDArray[np.uint8]) -> torch.Tensor:
        b, s, s2, _ = batch.shape
        h, w = s // self.patch_size, s2 // self.patch_size
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2)
            # float32: uint8 → [0, 1] → ImageNet-normalised, rounded to the model dtype once
            x = ((x.float().div_(255.0) - self._mean) / self._std).to(self.dtype)
            keys = self._forward_keys(x)
            if keys.shape[1] != h * w + 1:
                raise RuntimeError(
                    f"expected {h * w} patch tokens + CLS from a {s}x{s2} input, got "
                    f"{keys.shape[1]} tokens"
                )
            # float32 before the keys leave the device (one copy per batch): the conquer merge's
            # cosine similarities of adjacent patches and MaskCut's affinities are computed in
            # float32/float64 on the CPU, where bf16's 8-bit mantissa would tie many of them
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
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    batch_size: int | None = 8,
    memory_budget_mib: int | None = None,
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
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``
            (:func:`unsam.runtime.resolve_device`).
        dtype: ``"float32"`` or ``"bfloat16"``: weights and activations (not autocast); the output
            is always float32.
        batch_size: images per forward pass; None: as many as fit in ``memory_budget_mib``.
        memory_budget_mib: activation budget of one forward pass when ``batch_size`` is None
            (default 256 on the CPU, 4096 on a GPU).
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

        return ClassicFeatureExtractor(batch_size=batch_size or 8)
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
        net,
        name=name,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        memory_budget_mib=memory_budget_mib,
    )
    logger.info(
        "DINO features from %s: patch %d, %d-d keys, %s on %s (%s forward)",
        name,
        extractor.patch_size,
        extractor.feature_dim,
        dtype_name(extractor.dtype),
        extractor.device,
        extractor.kernel,
    )
    return extractor
