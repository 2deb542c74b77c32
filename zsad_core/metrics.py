"""Image and pixel metrics for anomaly detection, computed the way the ZSAD papers compute them.

Design reference: ``methods.md`` section 6.1. Metrics are computed per category; averaging over the
categories of a dataset (macro) is the caller's job.

Image level (one score per image)::

    image_metrics(labels (N,), scores (N,)) -> {"image_auroc", "image_ap", "image_f1max"}

Pixel level (every test image of the category, normal ones included)::

    exact_pixel_metrics(masks (N,H,W), maps (N,H,W))      # exact, keeps every pixel in memory
    acc = PixelMetricAccumulator(); acc.update(masks, maps); ...; acc.compute()   # streaming

Both return ``{"pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro"}``.

Conventions shared by every function here:

* Labels / masks may be bool, integers (non-zero = anomalous, so 0/1 and 0/255 both work) or floats
  (``> 0.5`` = anomalous, the usual binarisation of resized soft masks).
* Scores: higher = more anomalous. Non-finite scores raise ``ValueError``.
* Arrays may be numpy arrays or torch tensors (on any device); pixel inputs may be ``(H,W)``,
  ``(N,H,W)``, ``(N,1,H,W)``, or lists of those with different sizes.
* A metric that is undefined on the input (e.g. AUROC with one class) is ``nan``, never an exception,
  so one degenerate category does not abort a whole evaluation; average with ``np.nanmean`` and report
  the count of nan categories.

AUPRO (per-region overlap up to a false-positive-rate limit) comes in two variants, see :func:`aupro`:
``"cflow"`` (what April-GAN, AnomalyCLIP, CLIP-AD and the WinCLIP re-implementations report: use it
to compare with those papers) and ``"mvtec"`` (the official MVTec AD evaluation). They give different
numbers on the same maps; always say which one a table uses.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

__all__ = [
    "AUPRO_VARIANTS",
    "IMAGE_METRIC_NAMES",
    "METRIC_NAMES",
    "PIXEL_METRIC_NAMES",
    "PixelMetricAccumulator",
    "aupro",
    "auroc",
    "average_precision",
    "exact_pixel_metrics",
    "f1_max",
    "image_metrics",
]

METRIC_NAMES = (
    "image_auroc",
    "image_ap",
    "image_f1max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1max",
    "pixel_aupro",
)
IMAGE_METRIC_NAMES = METRIC_NAMES[:3]
PIXEL_METRIC_NAMES = METRIC_NAMES[3:]

AuproVariant = Literal["cflow", "mvtec"]
AUPRO_VARIANTS: tuple[str, ...] = ("cflow", "mvtec")

# Connected components of a (N,H,W) stack of masks in one scipy call: full (8-)connectivity inside each
# image, none across images. Same regions as skimage.measure.label(mask_i) (default connectivity = full)
# applied image by image, which is what the reference implementations do.
_IN_PLANE_8_CONNECTIVITY = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_8_CONNECTIVITY[1] = True

ArrayLike = Any  # np.ndarray, torch.Tensor, or anything np.asarray accepts


# ----------------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------------


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """numpy view/copy of ``x``; accepts torch tensors on any device without importing torch."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _binarize(labels: ArrayLike) -> np.ndarray:
    """Bool array of the same shape: bool as is, integers ``!= 0``, floats ``> 0.5``."""
    a = _to_numpy(labels)
    if a.dtype == bool:
        return a
    if np.issubdtype(a.dtype, np.floating):
        return a > 0.5
    return a != 0


def _scores_1d(scores: ArrayLike) -> np.ndarray:
    s = _to_numpy(scores).astype(np.float64, copy=False).ravel()
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    return s


def _labels_scores_weights(
    labels: ArrayLike, scores: ArrayLike, sample_weight: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    y = _binarize(labels).ravel()
    s = _scores_1d(scores)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in size: {y.size} vs {s.size}")
    w = None
    if sample_weight is not None:
        w = _to_numpy(sample_weight).astype(np.float64, copy=False).ravel()
        if w.shape != y.shape:
            raise ValueError(f"sample_weight has {w.size} entries, expected {y.size}")
    return y, s, w


def _has_pos(y: np.ndarray, w: np.ndarray | None) -> bool:
    return bool(y.any()) if w is None else bool((w[y] > 0).any())


def _has_neg(y: np.ndarray, w: np.ndarray | None) -> bool:
    return bool((~y).any()) if w is None else bool((w[~y] > 0).any())


# ----------------------------------------------------------------------------------------------------
# Scalar metrics (image level, and the exact pixel level on flattened arrays)
# ----------------------------------------------------------------------------------------------------


def auroc(labels: ArrayLike, scores: ArrayLike, sample_weight: ArrayLike | None = None) -> float:
    """Area under the ROC curve, ``sklearn.metrics.roc_auc_score``.

    Args:
        labels: (N,) or any shape; binary ground truth (see module conventions).
        scores: same number of elements; higher = more anomalous.
        sample_weight: optional (N,) weights (used by the binned pixel metrics: one weighted sample
            per histogram bin).

    Returns:
        AUROC in [0, 1]; ties count one half, as in scikit-learn. ``nan`` if only one class is present.
    """
    y, s, w = _labels_scores_weights(labels, scores, sample_weight)
    if not (_has_pos(y, w) and _has_neg(y, w)):
        return math.nan
    return float(roc_auc_score(y, s, sample_weight=w))


def average_precision(labels: ArrayLike, scores: ArrayLike, sample_weight: ArrayLike | None = None) -> float:
    """Average precision, ``sklearn.metrics.average_precision_score``: sum_n (R_n - R_{n-1}) P_n.

    Shapes as in :func:`auroc`. Returns ``nan`` if there are no positives (scikit-learn would return 0
    with a warning, which would silently pull a category mean down). With no negatives it is 1.
    """
    y, s, w = _labels_scores_weights(labels, scores, sample_weight)
    if not _has_pos(y, w):
        return math.nan
    return float(average_precision_score(y, s, sample_weight=w))


def f1_max(labels: ArrayLike, scores: ArrayLike, sample_weight: ArrayLike | None = None) -> float:
    """Maximum F1 over all thresholds: ``max(2PR / (P + R))`` over ``precision_recall_curve``.

    Non-finite F1 values (P + R = 0) are skipped, as in the April-GAN / AdaCLIP evaluation code.
    Shapes as in :func:`auroc`. Returns ``nan`` if there are no positives.
    """
    y, s, w = _labels_scores_weights(labels, scores, sample_weight)
    if not _has_pos(y, w):
        return math.nan
    precision, recall, _ = precision_recall_curve(y, s, sample_weight=w)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2.0 * precision * recall / (precision + recall)
    f1 = f1[np.isfinite(f1)]
    return float(f1.max()) if f1.size else math.nan


def image_metrics(labels: ArrayLike, scores: ArrayLike) -> dict[str, float]:
    """Image-level metrics of one category.

    Args:
        labels: (N,) 1 = anomalous image, 0 = normal.
        scores: (N,) image anomaly scores.

    Returns:
        ``{"image_auroc", "image_ap", "image_f1max"}``; AUROC is nan if all images share one label
        (e.g. pixel-only medical sets), AP and F1-max are nan if no image is anomalous.
    """
    return {
        "image_auroc": auroc(labels, scores),
        "image_ap": average_precision(labels, scores),
        "image_f1max": f1_max(labels, scores),
    }


# ----------------------------------------------------------------------------------------------------
# Pixels split by ground truth, with PRO weights
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Pixels:
    """Pixels of a set of images split by ground truth.

    PRO trick: PRO(th) = mean over regions r of |{p in r : s_p > th}| / |r|
                       = (1 / R) * sum over anomalous pixels p above th of 1 / |region(p)|.
    So each anomalous pixel carries the weight 1/|its region| and every PRO curve is a (weighted)
    cumulative count, exactly like the ROC curve: no per-region loop and no per-region storage.
    """

    pos: np.ndarray  # (P,) float64 scores of anomalous pixels
    neg: np.ndarray  # (Q,) float64 scores of normal pixels
    pos_weight: np.ndarray | None  # (P,) 1 / area of the pixel's region; None when regions were skipped
    num_regions: int
    num_images: int

    @staticmethod
    def concat(parts: Sequence[_Pixels]) -> _Pixels:
        with_w = all(p.pos_weight is not None for p in parts)
        return _Pixels(
            pos=np.concatenate([p.pos for p in parts]) if parts else np.empty(0),
            neg=np.concatenate([p.neg for p in parts]) if parts else np.empty(0),
            pos_weight=np.concatenate([p.pos_weight for p in parts]) if parts and with_w else None,
            num_regions=sum(p.num_regions for p in parts),
            num_images=sum(p.num_images for p in parts),
        )

    @property
    def size(self) -> int:
        return self.pos.size + self.neg.size


def _as_stack(a: np.ndarray, what: str) -> np.ndarray:
    """(H,W) | (N,H,W) | (N,1,H,W) -> (N,H,W)."""
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3:
        return a
    if a.ndim == 4 and a.shape[1] == 1:
        return a[:, 0]
    raise ValueError(f"{what} must be (H,W), (N,H,W) or (N,1,H,W); got shape {a.shape}")


def _split_pixels(masks: ArrayLike, maps: ArrayLike, with_regions: bool = True) -> _Pixels:
    """Split the pixels of ``maps`` by ``masks`` and, if asked, weight anomalous pixels by region.

    Args:
        masks: (N,H,W) (or a list of differently sized stacks / images) ground-truth masks.
        maps: same shapes; anomaly maps.
        with_regions: label connected components (8-connectivity per image) for PRO weights.
    """
    if isinstance(maps, (list, tuple)):
        if not isinstance(masks, (list, tuple)) or len(masks) != len(maps):
            raise ValueError("masks and maps must both be arrays, or lists of the same length")
        pairs = list(zip(masks, maps, strict=True))
    else:
        pairs = [(masks, maps)]
    parts = []
    for m, a in pairs:
        m = _as_stack(_binarize(m), "masks")
        a = _as_stack(_to_numpy(a).astype(np.float64, copy=False), "maps")
        if m.shape != a.shape:
            raise ValueError(f"masks {m.shape} and maps {a.shape} differ in shape")
        if not np.isfinite(a).all():
            raise ValueError("anomaly maps contain NaN or inf")
        weight, n = None, 0
        if with_regions:
            regions, n = ndimage.label(m, structure=_IN_PLANE_8_CONNECTIVITY)
            region_of_pos = regions[m]
            area = np.bincount(region_of_pos, minlength=n + 1)
            inv_area = np.zeros(n + 1)
            inv_area[1:] = 1.0 / area[1:]
            weight = inv_area[region_of_pos]
        parts.append(_Pixels(a[m], a[~m], weight, int(n), m.shape[0]))
    return parts[0] if len(parts) == 1 else _Pixels.concat(parts)


def _check_variant(variant: str) -> None:
    if variant not in AUPRO_VARIANTS:
        raise ValueError(f"unknown AUPRO variant {variant!r}; expected one of {AUPRO_VARIANTS}")


# ----------------------------------------------------------------------------------------------------
# AUPRO
# ----------------------------------------------------------------------------------------------------


def _cflow_thresholds(vmin: float, vmax: float, num_thresholds: int) -> np.ndarray:
    # The reference code uses np.arange(min, max, (max - min) / 200), i.e. min + k * delta for k < 200;
    # written this way it is always exactly num_thresholds values (np.arange can round to 201) and it
    # does not divide by zero for a constant map (then every threshold equals min).
    return vmin + (vmax - vmin) / num_thresholds * np.arange(num_thresholds)


def _count_above_exact(values: np.ndarray, thresholds: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """(K,) (weighted) count of ``values > thresholds[k]`` for ascending thresholds, in O(n log K)."""
    # searchsorted(side="left") = number of thresholds strictly below the value, so the value is above
    # thresholds[k] iff k < j: a histogram of j and a suffix sum give every threshold at once.
    j = np.searchsorted(thresholds, values, side="left")
    hist = np.bincount(j, weights=weights, minlength=thresholds.size + 1)
    return np.cumsum(hist[::-1])[::-1][1:]


def _aupro_cflow_from_curve(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """cflow-ad normalisation: keep FPR < limit, rescale kept FPRs to [0, 1] by min/max, trapezoid."""
    keep = fpr < fpr_limit
    if not keep.any():
        # No threshold reaches an FPR under the limit (e.g. most normal pixels share the maximum
        # score); the reference code crashes here. No operating point under the limit -> 0.
        return 0.0
    f, p = fpr[keep], pro[keep]
    span = f.max() - f.min()
    if span <= 0:
        # All kept thresholds have the same FPR (a constant map: PRO 0; a binary map that is perfect
        # or has no false positives: its PRO). The reference divides 0 by 0 and returns nan; the
        # rescaled curve degenerates to one x position, and we take the best PRO reached there.
        return float(p.max())
    return float(auc((f - f.min()) / span, p))


def _aupro_mvtec_from_curve(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Exact area under the piecewise-linear PRO curve on [0, limit], divided by limit.

    ``fpr`` must be non-decreasing and start at 0; the curve is interpolated linearly at the limit,
    as the official MVTec AD evaluation (``trapezoid(..., x_max=0.3)``) does.
    """
    i = int(np.searchsorted(fpr, fpr_limit, side="right"))  # points [0, i) have fpr <= limit
    x, y = fpr[:i], pro[:i]
    if i < fpr.size and x[-1] < fpr_limit:
        x0, y0, x1, y1 = fpr[i - 1], pro[i - 1], fpr[i], pro[i]
        y_lim = y0 + (fpr_limit - x0) * (y1 - y0) / (x1 - x0)
        x, y = np.append(x, fpr_limit), np.append(y, y_lim)
    if x.size < 2:
        return 0.0
    return float(auc(x, y) / fpr_limit)


def _aupro_exact(px: _Pixels, variant: str, fpr_limit: float, num_thresholds: int) -> float:
    if px.num_regions == 0 or px.neg.size == 0 or px.pos_weight is None:
        return math.nan
    if variant == "cflow":
        vmin = min(px.pos.min(), px.neg.min())
        vmax = max(px.pos.max(), px.neg.max())
        th = _cflow_thresholds(vmin, vmax, num_thresholds)
        pro = _count_above_exact(px.pos, th, px.pos_weight) / px.num_regions
        fpr = _count_above_exact(px.neg, th, None) / px.neg.size
        return _aupro_cflow_from_curve(fpr, pro, fpr_limit)
    # mvtec: every distinct score is a threshold (pixel positive iff score >= threshold), as in the
    # official compute_pro: sort descending, cumulative FP count and PRO weight, last of each tie group.
    scores = np.concatenate([px.pos, px.neg])
    fp_step = np.concatenate([np.zeros(px.pos.size), np.ones(px.neg.size)])
    pro_step = np.concatenate([px.pos_weight, np.zeros(px.neg.size)])
    order = np.argsort(scores, kind="stable")[::-1]
    scores = scores[order]
    last_of_tie = np.append(scores[1:] != scores[:-1], True)
    fpr = np.minimum(np.cumsum(fp_step[order])[last_of_tie] / px.neg.size, 1.0)
    pro = np.minimum(np.cumsum(pro_step[order])[last_of_tie] / px.num_regions, 1.0)
    fpr = np.concatenate([[0.0], fpr, [1.0]])
    pro = np.concatenate([[0.0], pro, [1.0]])
    return _aupro_mvtec_from_curve(fpr, pro, fpr_limit)


def aupro(
    masks: ArrayLike,
    maps: ArrayLike,
    fpr_limit: float = 0.3,
    variant: AuproVariant = "cflow",
    num_thresholds: int = 200,
) -> float:
    """Area under the per-region-overlap (PRO) curve up to an FPR limit, exact.

    Regions are the connected components of each image's mask (full connectivity, i.e. 8-connectivity,
    as skimage ``label``'s default); PRO(th) is the mean over ALL regions of all images of the fraction
    of the region above ``th``; FPR(th) is over all normal pixels of all images.

    Variants:

    * ``"cflow"`` (default; April-GAN, AnomalyCLIP, CLIP-AD, WinCLIP re-implementations, from
      cflow-ad): ``num_thresholds`` thresholds ``min + k (max - min) / num_thresholds``, k = 0..K-1,
      over all maps; a pixel is positive iff score > th; keep thresholds with FPR < ``fpr_limit``;
      rescale the kept FPRs to [0, 1] by their min and max; trapezoid AUC. Because of the rescaling the
      result is not an area under [0, limit] and is usually higher than the MVTec number. Degenerate
      cases the reference code leaves as nan or crash: if every kept threshold has the same FPR
      (constant map, or binary map) the result is the largest kept PRO (a constant map gives 0.0, a
      perfect binary map 1.0); if no threshold has FPR < limit the result is 0.0.
    * ``"mvtec"`` (official MVTec AD AUPRO): the exact PRO curve over every distinct score (pixel
      positive iff score >= th), with (0,0) and (1,1) added, integrated exactly up to ``fpr_limit``
      (interpolating linearly at the limit) and divided by ``fpr_limit``. A constant map gives 0.15 at
      limit 0.3 (the chord from (0,0) to (1,1)); a perfect map gives 1.0. ``num_thresholds`` is unused.

    Args:
        masks: (N,H,W) bool/uint8 ground truth (also (H,W), (N,1,H,W), or a list of stacks).
        maps: (N,H,W) float anomaly maps, same shape(s) as ``masks``.
        fpr_limit: FPR integration limit in (0, 1].
        variant: ``"cflow"`` or ``"mvtec"``.
        num_thresholds: number of thresholds of the cflow variant.

    Returns:
        AUPRO in [0, 1]. ``nan`` when no mask has an anomalous pixel (no regions: PRO is undefined, as
        for a category's normal-only subset) or when there is no normal pixel (FPR undefined).
    """
    _check_variant(variant)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return _aupro_exact(_split_pixels(masks, maps), variant, fpr_limit, num_thresholds)


def _pixel_metrics_exact(
    px: _Pixels, compute_aupro: bool, variant: str, fpr_limit: float, num_thresholds: int
) -> dict[str, float]:
    # sklearn on (labels, scores) = the flattened arrays, reordered (the metrics are order invariant).
    labels = np.concatenate([np.ones(px.pos.size, dtype=bool), np.zeros(px.neg.size, dtype=bool)])
    scores = np.concatenate([px.pos, px.neg])
    return {
        "pixel_auroc": auroc(labels, scores),
        "pixel_ap": average_precision(labels, scores),
        "pixel_f1max": f1_max(labels, scores),
        "pixel_aupro": _aupro_exact(px, variant, fpr_limit, num_thresholds) if compute_aupro else math.nan,
    }


def exact_pixel_metrics(
    masks: ArrayLike,
    maps: ArrayLike,
    aupro_variant: AuproVariant = "cflow",
    compute_aupro: bool = True,
    fpr_limit: float = 0.3,
    num_thresholds: int = 200,
) -> dict[str, float]:
    """Pixel metrics of one category, exactly: scikit-learn on all pixels, and :func:`aupro`.

    Keeps every pixel in memory (about 40 bytes a pixel at peak): fine for a category at 256x256, heavy
    for large categories at 518x518; use :class:`PixelMetricAccumulator` there. This is the reference
    the accumulator is measured against.

    Args:
        masks: (N,H,W) bool/uint8 ground truth, normal images included (also (H,W), (N,1,H,W), or a list
            of differently sized stacks).
        maps: (N,H,W) float anomaly maps, same shape(s).
        aupro_variant: ``"cflow"`` or ``"mvtec"``, see :func:`aupro`.
        compute_aupro: if False, ``pixel_aupro`` is nan and no connected components are computed.

    Returns:
        ``{"pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro"}``, nan where undefined (see
        :func:`auroc`, :func:`average_precision`, :func:`aupro`).
    """
    _check_variant(aupro_variant)
    px = _split_pixels(masks, maps, with_regions=compute_aupro)
    return _pixel_metrics_exact(px, compute_aupro, aupro_variant, fpr_limit, num_thresholds)


# ----------------------------------------------------------------------------------------------------
# Streaming pixel metrics
# ----------------------------------------------------------------------------------------------------


class PixelMetricAccumulator:
    """Streaming pixel AUROC / AP / F1-max / AUPRO of one category in O(num_bins) memory.

    Feed batches with :meth:`update` (image sizes may differ between calls), read with :meth:`compute`
    (any time; it does not change the state). Per score bin it keeps three histograms: the count of
    normal pixels, the count of anomalous pixels, and the sum over anomalous pixels of 1/|region| (the
    PRO weight), plus the smallest and largest score of each class in the bin; and in all the number of
    regions and the exact score min/max. Memory is ``7 * num_bins`` numbers (0.56 MB at the default)
    whatever the number of images or regions. No per-region per-bin table is needed because PRO is
    linear in the regions: mean_r |r above th| / |r| = (1/R) * sum over anomalous pixels above th of
    1/|region of the pixel|.

    How the metrics are read off the histograms:

    * AUROC, AP, F1-max: scikit-learn on one weighted sample per (bin, class), so they equal the exact
      metrics of the scores quantised to bins (pixels of one bin are ties). AP is sklearn's
      sum_n (R_n - R_{n-1}) P_n over the bin thresholds.
    * AUPRO ``"mvtec"``: the PRO and FPR curve is exact at every bin edge and linear in between,
      integrated as in :func:`aupro`.
    * AUPRO ``"cflow"``: its thresholds min + k (max - min) / num_thresholds use the exact running
      min/max; the counts above a threshold inside a bin are interpolated assuming scores spread
      uniformly over [smallest, largest score in that bin] (tracked exactly per bin and class).

    Score range and bins:

    * The first ``buffer_pixels`` pixels are kept exactly. While everything fits in the buffer,
      :meth:`compute` is exact (it equals :func:`exact_pixel_metrics`), so small sets lose nothing.
    * When the buffer overflows it is binned and dropped. Bins are ``num_bins`` equal bins over
      ``score_range`` if given (scores outside are clipped into the end bins, counted and warned about
      in :meth:`compute`; give e.g. (0, 1) for probability maps), otherwise over the buffered min/max
      widened by 5% on each side. In the adaptive case, a later score outside the range doubles the
      range towards it (pairs of bins merge, so the re-binning adds no error of its own beyond the
      coarser bins), as often as needed; the resolution halves each time (``num_doublings``).
    * Results depend on the order of the images only through the adaptive range (the first buffer
      sets it); with a given ``score_range`` they are independent of order and chunking up to float
      summation (~1e-15).

    Measured error (max absolute difference from :func:`exact_pixel_metrics`, measured by
    ``streaming_error_table`` in ``tests/test_metrics.py``; run ``python -m tests.test_metrics`` from the
    repository root, about a minute). Data: 3 seeds x 5 map families x 28 images of 256x256 (1.8 M
    pixels; ~40% normal images; 1-3 elliptic blobs of radius 2-40 px per anomalous image), fed in
    chunks of 1-5 images. Map families, all in [0, 1]: "noise" (uniform noise, raised inside blobs),
    "smooth" (Gaussian-smoothed noise plus Gaussian bumps on the blobs, through a sigmoid), "narrow"
    (smooth squeezed into [0.40, 0.45]: uses 5% of a (0, 1) range), "tied" (noise rounded to 1/50),
    "drift" (smooth times a per-image factor in [0.2, 1], so the adaptive range has to double).
    "(0,1)": ``score_range=(0, 1), buffer_pixels=0``; "adaptive": no range, a one-image buffer::

        bins     range      AUROC    AP       F1-max   AUPRO cflow  AUPRO mvtec
        1000     (0,1)      5.8e-5   1.1e-2   8.9e-4   2.6e-4       2.7e-4
        1000     adaptive   4.2e-6   1.2e-3   1.5e-3   3.1e-5       1.4e-5
        10000    (0,1)      1.8e-6   1.0e-3   2.3e-4   1.1e-5       7.9e-6
        10000    adaptive   3.4e-7   1.2e-4   1.2e-4   1.6e-5       1.7e-6
        100000   (0,1)      1.4e-7   1.0e-4   5.8e-5   1.5e-5       8.9e-7
        (0,1) without "narrow":
        1000     (0,1)      2.1e-6   6.8e-4   1.7e-4   3.1e-5       7.7e-6
        10000    (0,1)      1.9e-7   7.0e-5   5.8e-5   9.4e-6       1.9e-6

    So with the default 10,000 bins every metric is within 1e-3 of the exact value (1.2e-4 when the
    scores fill the range), below the 0.1-point rounding of the papers' tables. AP is the most
    sensitive: pixels in one bin are ties, and sklearn's AP scores a tie group at its lowest precision.
    The error grows with the bin width relative to the spread of the scores: maps that use a small
    part of ``score_range`` (the "narrow" row: 5% of it) behave like proportionally fewer bins, so give
    a tight range or use the adaptive one. The adaptive range lost half its resolution (one doubling)
    on "drift" and stayed within the bounds above. The cflow AUPRO does not improve beyond ~1e-5 with
    more bins: its FPR < 0.3 cut is hard, so tiny count differences can move a threshold across it.

    Args:
        num_bins: number of score bins (rounded up to an even number, for exact range doubling).
        score_range: (lo, hi) of the bins, or None to choose it adaptively (see above).
        aupro_variant: ``"cflow"`` or ``"mvtec"``, see :func:`aupro`.
        compute_aupro: if False no connected components are computed and ``pixel_aupro`` is nan.
        fpr_limit: AUPRO FPR limit.
        num_thresholds: thresholds of the cflow AUPRO.
        buffer_pixels: how many pixels to keep exactly before switching to bins (0: bin from the start;
            with no ``score_range`` the first batch then sets the range). The default, 2**22 pixels
            (about 16 images at 518x518), costs about 50 MB.
    """

    def __init__(
        self,
        num_bins: int = 10_000,
        score_range: tuple[float, float] | None = None,
        aupro_variant: AuproVariant = "cflow",
        compute_aupro: bool = True,
        fpr_limit: float = 0.3,
        num_thresholds: int = 200,
        buffer_pixels: int = 2**22,
    ) -> None:
        _check_variant(aupro_variant)
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        if score_range is not None:
            lo, hi = (float(v) for v in score_range)
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                raise ValueError(f"score_range must be finite with hi > lo, got {score_range}")
            score_range = (lo, hi)
        if not 0.0 < fpr_limit <= 1.0:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
        self.num_bins = num_bins + (num_bins % 2)
        self.score_range = score_range
        self.aupro_variant = aupro_variant
        self.compute_aupro = compute_aupro
        self.fpr_limit = fpr_limit
        self.num_thresholds = num_thresholds
        self.buffer_pixels = int(buffer_pixels)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._buffer: list[_Pixels] = []
        self._buffered = 0
        self._binned = False
        self._lo = self._hi = math.nan
        self._pos_hist = np.zeros(self.num_bins, dtype=np.int64)
        self._neg_hist = np.zeros(self.num_bins, dtype=np.int64)
        self._pro_hist = np.zeros(self.num_bins, dtype=np.float64)
        # Exact smallest / largest score in each bin, per class: the cflow thresholds fall inside bins,
        # and interpolating over [bin min, bin max] instead of the bin edges makes tied scores (a bin
        # holding one value, e.g. many pixels at exactly the map minimum) exact.
        self._pos_min = np.full(self.num_bins, np.inf)
        self._pos_max = np.full(self.num_bins, -np.inf)
        self._neg_min = np.full(self.num_bins, np.inf)
        self._neg_max = np.full(self.num_bins, -np.inf)
        self._vmin, self._vmax = math.inf, -math.inf
        self.num_images = 0
        self.num_neg = 0
        self.num_regions = 0
        self.num_clipped = 0
        self.num_doublings = 0

    # -- state --------------------------------------------------------------------------------------

    @property
    def is_exact(self) -> bool:
        """True while all pixels seen are still buffered, so :meth:`compute` is exact."""
        return not self._binned

    @property
    def bin_range(self) -> tuple[float, float] | None:
        """Current (lo, hi) of the bins, None before binning starts."""
        return (self._lo, self._hi) if self._binned else None

    # -- feeding ------------------------------------------------------------------------------------

    def update(self, masks: ArrayLike, maps: ArrayLike) -> None:
        """Add a batch of images.

        Args:
            masks: (B,H,W) bool/uint8 ground truth (all zero for normal images); also (H,W),
                (B,1,H,W) or a list of differently sized stacks. H,W may change between calls.
            maps: (B,H,W) float anomaly maps, same shape(s) as ``masks``; numpy or torch.
        """
        px = _split_pixels(masks, maps, with_regions=self.compute_aupro)
        if px.size == 0:
            return
        self.num_images += px.num_images
        self.num_neg += px.neg.size
        self.num_regions += px.num_regions
        for v in (px.pos, px.neg):
            if v.size:
                self._vmin = min(self._vmin, float(v.min()))
                self._vmax = max(self._vmax, float(v.max()))
        if self._binned:
            self._add_to_bins(px)
            return
        self._buffer.append(px)
        self._buffered += px.size
        if self._buffered > self.buffer_pixels:
            self._start_binning()

    def _start_binning(self) -> None:
        if self.score_range is not None:
            self._lo, self._hi = self.score_range
        else:
            lo, hi = self._vmin, self._vmax
            pad = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(lo), 1.0)
            self._lo, self._hi = lo - pad, hi + pad
        self._binned = True
        for px in self._buffer:
            self._add_to_bins(px)
        self._buffer, self._buffered = [], 0

    def _grow(self, vmin: float, vmax: float) -> None:
        """Double the adaptive range until it covers [vmin, vmax]; merged bin pairs keep exact edges."""
        half = self.num_bins // 2
        while vmax > self._hi or vmin < self._lo:
            width = self._hi - self._lo
            sums = (self._pos_hist, self._neg_hist, self._pro_hist)
            mins, maxs = (self._pos_min, self._neg_min), (self._pos_max, self._neg_max)
            arrays = sums + mins + maxs
            merged = [a.reshape(half, 2).sum(axis=1) for a in sums]
            merged += [a.reshape(half, 2).min(axis=1) for a in mins]
            merged += [a.reshape(half, 2).max(axis=1) for a in maxs]
            fill = [0] * len(sums) + [np.inf] * len(mins) + [-np.inf] * len(maxs)  # empty bins
            up = vmax > self._hi  # grow towards the side that overflows (upwards first)
            for h, m, empty in zip(arrays, merged, fill, strict=True):
                h[:] = empty
                if up:
                    h[:half] = m  # old bin i -> new bin i // 2, new range [lo, lo + 2 width]
                else:
                    h[half:] = m  # old bin i -> new bin (B + i) // 2, new range [hi - 2 width, hi]
            if up:
                self._hi = self._lo + 2 * width
            else:
                self._lo = self._hi - 2 * width
            self.num_doublings += 1

    def _bin_index(self, v: np.ndarray) -> np.ndarray:
        idx = np.floor((v - self._lo) * (self.num_bins / (self._hi - self._lo))).astype(np.int64)
        # idx == num_bins only for v == hi: the last bin is closed on the right
        if self.score_range is not None:
            self.num_clipped += int(np.count_nonzero((v < self._lo) | (v > self._hi)))
        return np.clip(idx, 0, self.num_bins - 1)

    def _add_to_bins(self, px: _Pixels) -> None:
        if self.score_range is None:
            lo = min((float(v.min()) for v in (px.pos, px.neg) if v.size), default=self._lo)
            hi = max((float(v.max()) for v in (px.pos, px.neg) if v.size), default=self._hi)
            self._grow(lo, hi)
        b = self.num_bins
        if px.pos.size:
            idx = self._bin_index(px.pos)
            self._pos_hist += np.bincount(idx, minlength=b)
            np.minimum.at(self._pos_min, idx, px.pos)
            np.maximum.at(self._pos_max, idx, px.pos)
            if self.compute_aupro and px.pos_weight is not None:
                self._pro_hist += np.bincount(idx, weights=px.pos_weight, minlength=b)
        if px.neg.size:
            idx = self._bin_index(px.neg)
            self._neg_hist += np.bincount(idx, minlength=b)
            np.minimum.at(self._neg_min, idx, px.neg)
            np.maximum.at(self._neg_max, idx, px.neg)

    # -- reading ------------------------------------------------------------------------------------

    def compute(self) -> dict[str, float]:
        """Current metrics: ``{"pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro"}``.

        nan where undefined (no anomalous pixel, no normal pixel, or ``compute_aupro=False`` for
        ``pixel_aupro``); all nan before any update. Exact while :attr:`is_exact`, otherwise binned with
        the error documented in the class docstring.
        """
        if not self._binned:
            return _pixel_metrics_exact(
                _Pixels.concat(self._buffer),
                self.compute_aupro,
                self.aupro_variant,
                self.fpr_limit,
                self.num_thresholds,
            )
        if self.num_clipped:
            warnings.warn(
                f"{self.num_clipped} pixel scores fell outside score_range={self.score_range} and were "
                "clipped into the end bins; pixel metrics are approximate among them",
                stacklevel=2,
            )
        # One weighted sample per (bin, class); bin index is a monotone stand-in for the score.
        bins = np.arange(self.num_bins)
        labels = np.concatenate([np.ones(self.num_bins, dtype=bool), np.zeros(self.num_bins, dtype=bool)])
        scores = np.concatenate([bins, bins])
        weights = np.concatenate([self._pos_hist, self._neg_hist]).astype(np.float64)
        return {
            "pixel_auroc": auroc(labels, scores, weights),
            "pixel_ap": average_precision(labels, scores, weights),
            "pixel_f1max": f1_max(labels, scores, weights),
            "pixel_aupro": self._binned_aupro() if self.compute_aupro else math.nan,
        }

    def _binned_aupro(self) -> float:
        if self.num_regions == 0 or self.num_neg == 0:
            return math.nan
        if self.aupro_variant == "mvtec":
            # Curve at every bin edge k (pixel positive iff its bin >= k), from k = B down to k = 0:
            # starts at (0, 0), ends at (1, 1).
            fp = np.concatenate([[0.0], np.cumsum(self._neg_hist[::-1])])
            pro = np.concatenate([[0.0], np.cumsum(self._pro_hist[::-1])])
            fpr = np.minimum(fp / self.num_neg, 1.0)
            pro = np.minimum(pro / self.num_regions, 1.0)
            return _aupro_mvtec_from_curve(fpr, pro, self.fpr_limit)
        th = _cflow_thresholds(self._vmin, self._vmax, self.num_thresholds)
        pro = self._count_above_binned(self._pro_hist, self._pos_min, self._pos_max, th) / self.num_regions
        neg = self._count_above_binned(self._neg_hist.astype(np.float64), self._neg_min, self._neg_max, th)
        return _aupro_cflow_from_curve(fpr=neg / self.num_neg, pro=pro, fpr_limit=self.fpr_limit)

    def _count_above_binned(
        self, hist: np.ndarray, bin_min: np.ndarray, bin_max: np.ndarray, thresholds: np.ndarray
    ) -> np.ndarray:
        """(K,) approximate (weighted) count of scores > thresholds[k].

        Bins wholly above / below a threshold count exactly; in the one bin holding the threshold the
        scores are taken as spread uniformly over [bin min, bin max] (a single value if they are equal).
        """
        nb = self.num_bins
        suffix = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # suffix[b] = sum of bins >= b
        b = np.floor((thresholds - self._lo) * (nb / (self._hi - self._lo))).astype(np.int64)
        b = np.clip(b, 0, nb - 1)
        left, right, count = bin_min[b], bin_max[b], hist[b]
        frac = np.zeros(thresholds.shape)
        full = count > 0  # empty bins have left = inf, right = -inf: leave them at 0
        spread = full & (right > left)
        frac[spread] = (right[spread] - thresholds[spread]) / (right[spread] - left[spread])
        point = full & ~spread
        frac[point] = thresholds[point] < left[point]
        return suffix[b + 1] + count * np.clip(frac, 0.0, 1.0)

    def __repr__(self) -> str:
        mode = "exact" if self.is_exact else f"binned {self.bin_range}"
        return (
            f"{type(self).__name__}(num_bins={self.num_bins}, aupro_variant={self.aupro_variant!r}, "
            f"images={self.num_images}, regions={self.num_regions}, {mode})"
        )
