"""DenseCRF on one mask: the primitive both the divide stage (MaskCut, spec §2.2 step 9) and the
refinement stage (spec §4.2) use, so neither stage imports the other.

:func:`crf_refine_mask` is CutLER's ``densecrf`` + hole filling: unaries are ``-log softmax`` of the
*hard* two-channel logits ``[1 - m, m]`` (≈ 0.269 / 0.731 probabilities, soft on purpose: this is
the literal original behaviour, spec §10 item 33), a Gaussian (sxy 3, compat 7) and a bilateral
(sxy 50, srgb 5, compat 10) pairwise term, 10 mean-field iterations, argmax, fill holes.
:class:`CRFConfig` holds those parameters, nested in ``MaskCutConfig.crf_params`` and
``RefineConfig.crf``.

``pydensecrf`` (PyPI package ``pydensecrf2``) is an optional extra, imported only when CRF is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from unsam.config import param

__all__ = ["CRF_INSTALL_HINT", "CRFConfig", "crf_available", "crf_refine_mask", "require_crf"]

CRF_INSTALL_HINT = 'refine="crf" needs pydensecrf2: pip install "unsam[crf]"'


def _densecrf() -> ModuleType:
    """Import ``pydensecrf.densecrf`` or fail with the install command."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise ImportError(CRF_INSTALL_HINT) from None
    return dcrf


def require_crf() -> None:
    """Fail now, with the install command, when CRF is chosen but pydensecrf2 is missing.

    Raises:
        ImportError: ``refine="crf" needs pydensecrf2: pip install "unsam[crf]"``.
    """
    _densecrf()


def crf_available() -> bool:
    """Whether ``pydensecrf`` (package ``pydensecrf2``) can be imported."""
    try:
        _densecrf()
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class CRFConfig:
    """DenseCRF parameters (spec §2.2 step 9; CutLER ``maskcut/crf.py``)."""

    gaussian_sxy: float = param(3.0, "Gaussian pairwise spatial std, pixels (spec §2.2 step 9)")
    gaussian_compat: float = param(7.0, "Gaussian pairwise weight (spec §2.2 step 9)")
    bilateral_sxy: float = param(50.0, "bilateral pairwise spatial std, pixels (spec §2.2 step 9)")
    bilateral_srgb: float = param(
        5.0, "bilateral pairwise colour std, RGB 0-255 units (spec §2.2 step 9)"
    )
    bilateral_compat: float = param(10.0, "bilateral pairwise weight (spec §2.2 step 9)")
    iterations: int = param(10, "mean-field iterations (spec §2.2 step 9)")

    def __post_init__(self) -> None:
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"CRFConfig.{name}={getattr(self, name)} must be > 0")
        for name in ("gaussian_compat", "bilateral_compat"):
            if getattr(self, name) < 0:
                raise ValueError(f"CRFConfig.{name}={getattr(self, name)} must be >= 0")
        if self.iterations < 1:
            raise ValueError(
                f"CRFConfig.iterations={self.iterations} must be >= 1 (the original uses 10)"
            )


def crf_refine_mask(
    image: npt.NDArray[np.uint8], mask: npt.NDArray[np.bool_], config: CRFConfig = CRFConfig()
) -> npt.NDArray[np.bool_]:
    """Snap a binary mask to image edges with a 2-label DenseCRF, then fill holes.

    Args:
        image: (H, W, 3) uint8 RGB, the bilateral term's reference image.
        mask: (H, W) bool (or 0/1) mask on the same pixel grid.
        config: CRF parameters.

    Returns:
        (H, W) bool refined mask.

    Raises:
        ImportError: pydensecrf2 is not installed (message has the pip command).
        ValueError: shape or dtype mismatch.
    """
    dcrf = _densecrf()
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match the image's {image.shape[:2]}")
    h, w = mask.shape
    fg = np.asarray(mask, dtype=np.float64)
    # softmax([1 - m, m]) of the hard labels, as the original (soft 0.269/0.731 unaries).
    p_fg = 1.0 / (1.0 + np.exp((1.0 - fg) - fg))
    probs = np.stack([1.0 - p_fg, p_fg])
    unary = np.ascontiguousarray(
        -np.log(np.clip(probs, 1e-5, 1.0)).reshape(2, -1).astype(np.float32)
    )
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=config.gaussian_sxy, compat=config.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=config.bilateral_sxy,
        srgb=config.bilateral_srgb,
        rgbim=np.ascontiguousarray(image),
        compat=config.bilateral_compat,
    )
    q = np.asarray(crf.inference(config.iterations)).reshape(2, h, w)
    return ndimage.binary_fill_holes(np.argmax(q, axis=0) >= 0.5)
