"""Radiomics features of one patient: every MR sequence x every ROI, through PyRadiomics.

The prognostic model is only as reproducible as its feature table, so this module pins down three things the
rest of the core relies on:

* one parameter file (``resources/radiomics/NPCPrognosis.yaml``) whose hash is recorded with every table, so
  a model is never fed features made with other settings;
* a fixed set of columns per settings file (:func:`feature_columns`): a patient without nodes (N0) still gets
  every ``gtvn`` column, as NaN, plus ``gtvn_present = 0``, so cohort tables stack without reindexing;
* results that do not depend on how the work was scheduled: ``workers=1`` and ``workers=N`` run the very same
  job function on the very same arrays, so they agree bit for bit.

PyRadiomics itself is imported lazily: reading settings or naming columns must stay cheap inside Slicer.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import concurrent.futures.process
import contextlib
import functools
import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from NPCPrognosisLib.contract import ROIS, SEQUENCES
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.imaging.geometry import label_box
from NPCPrognosisLib.io.images import check_mask
from NPCPrognosisLib.processes import worker_pool, worker_python
from NPCPrognosisLib.resources import RADIOMICS_PARAMS

logger = logging.getLogger(__name__)


_ROI_DESCRIPTION = {"gtvp": "GTVp", "gtvn": "GTVn", "gtv": "GTV"}

# PyRadiomics checkMask messages that mean "ROI too small", as opposed to a real input problem.
_TOO_SMALL_MESSAGES = (
    "Size of the ROI is too small",
    "too few dimensions",
    "only contains 1 segmented voxel",
    # the ROI had voxels before resampling (checked first) and none of the 3 mm grid's sample points fell in it: a
    # 63-voxel family-C node (4 x 8 x 13.5 mm) vanished so, and the whole patient failed extraction
    "not present in mask",
)


# --------------------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------------------


def _params_path(params_path=None) -> Path:
    path = Path(RADIOMICS_PARAMS if params_path is None else params_path).expanduser().resolve()
    if not path.is_file():
        raise InputError(
            "radiomics parameter file not found",
            path=str(path),
            fix="pass the path of a PyRadiomics YAML file, or None for the paper settings",
        )
    return path


def load_settings(params_path=None) -> dict:
    """Parse the parameter file (YAML) into a dict; comments are not part of the settings."""
    import yaml

    path = _params_path(params_path)
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML ({exc})", path=str(path), fix="fix the YAML syntax") from exc
    if not isinstance(settings, dict):
        raise InputError(
            "a radiomics parameter file must be a mapping with keys setting/imageType/featureClass",
            path=str(path),
        )
    return settings


@contextlib.contextmanager
def settings_file(settings: dict):
    """Settings (e.g. a bundle's or a features table's recorded ones) as a temporary parameter file: PyRadiomics
    reads its settings from a file, and the recorded dict is what the numbers were made with."""
    import yaml

    handle, params = tempfile.mkstemp(suffix=".yaml", prefix="npc-radiomics-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            yaml.safe_dump(settings, stream)
        yield params
    finally:
        os.unlink(params)


def settings_hash(params_path=None) -> str:
    """sha256 of the canonical JSON of the parsed settings.

    Hashing the parsed settings rather than the file bytes means editing comments or whitespace keeps the hash,
    while any change PyRadiomics would see changes it.
    """
    canonical = json.dumps(
        load_settings(params_path), sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def pyradiomics_version() -> str:
    import radiomics

    return str(radiomics.__version__)


def feature_name(sequence: str, roi: str, pyradiomics_key: str) -> str:
    """Column name ``<sequence>_<roi>_<filter>_<class>_<feature>``.

    PyRadiomics keys already read ``<filter>_<class>_<feature>``; ``diagnostics_*`` keys are not features and
    are refused here so they can never become model inputs by accident.
    """
    if not isinstance(sequence, str) or not sequence:
        raise ValueError(f"sequence name must be a non-empty string, got {sequence!r}")
    if roi not in ROIS:
        raise ValueError(f"unknown ROI {roi!r}; expected one of {sorted(ROIS)}")
    if pyradiomics_key.startswith("diagnostics_"):
        raise ValueError(f"{pyradiomics_key!r} is a PyRadiomics diagnostic, not a feature")
    if len(pyradiomics_key.split("_", 2)) != 3:
        raise ValueError(f"{pyradiomics_key!r} is not a PyRadiomics feature key '<filter>_<class>_<feature>'")
    return f"{sequence}_{roi}_{pyradiomics_key}"


def present_column(roi: str) -> str:
    return f"{roi}_present"


# --------------------------------------------------------------------------------------------------------------
# PyRadiomics plumbing (runs in the calling process or in spawned workers)
# --------------------------------------------------------------------------------------------------------------


class _DropSumAverageWarning(logging.Filter):
    """GLCM SumAverage is kept (it is part of the default feature set) but with a symmetrical GLCM PyRadiomics
    warns on every single extraction that it equals 2 x JointAverage; that is known and not actionable."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Sum Average = 2 * Joint Average" not in record.getMessage()


_SUM_AVERAGE_FILTER = _DropSumAverageWarning()


def _quiet_radiomics() -> None:
    """PyRadiomics logs every step at INFO; at cohort scale that is noise and measurable time."""
    import radiomics

    radiomics.setVerbosity(logging.WARNING)
    logging.getLogger("radiomics").setLevel(logging.WARNING)
    logging.getLogger("pykwalify").setLevel(logging.WARNING)
    glcm_logger = logging.getLogger("radiomics.glcm")
    if _SUM_AVERAGE_FILTER not in glcm_logger.filters:
        glcm_logger.addFilter(_SUM_AVERAGE_FILTER)


@functools.lru_cache(maxsize=8)
def _extractor(params_path: str, digest: str):
    """One extractor per settings file and content (``digest`` invalidates the cache when the file changes)."""
    from radiomics import featureextractor

    _quiet_radiomics()
    return featureextractor.RadiomicsFeatureExtractor(params_path)


@dataclass
class _Job:
    """Everything a worker needs, as plain picklable data (SimpleITK images do not pickle)."""

    sequence: str
    roi: str
    label: int
    image: np.ndarray
    mask: np.ndarray
    origin: tuple[float, ...]
    spacing: tuple[float, ...]
    direction: tuple[float, ...]
    params_path: str
    digest: str


def _to_image(array: np.ndarray, job: _Job) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(job.origin)
    image.SetSpacing(job.spacing)
    image.SetDirection(job.direction)
    return image


def _run_job(job: _Job) -> dict[str, float]:
    """Extract one (sequence, ROI). Raises plain ValueError: custom exceptions do not survive a process pool."""
    extractor = _extractor(job.params_path, job.digest)
    result = extractor.execute(_to_image(job.image, job), _to_image(job.mask, job), label=job.label)
    return {key: float(value) for key, value in result.items() if not key.startswith("diagnostics_")}


def _worker_init() -> None:
    _quiet_radiomics()


def _viability_problem(mask: sitk.Image, label: int, settings: dict) -> str | None:
    """Why PyRadiomics would refuse this ROI as too small after resampling, or None if it will accept it.

    Uses PyRadiomics' own resampling and checkMask on the mask alone (nearest neighbour), so the decision is the
    one the extractor would make, taken once per ROI instead of failing once per sequence.
    """
    from radiomics import imageoperations

    kwargs = dict(settings)
    kwargs["label"] = label
    roi_mask = imageoperations.getMask(mask, **kwargs)
    proxy = sitk.Cast(roi_mask, sitk.sitkFloat32)
    if kwargs.get("interpolator") is not None and kwargs.get("resampledPixelSpacing") is not None:
        kwargs_nn = dict(kwargs, interpolator=sitk.sitkNearestNeighbor)
        proxy, roi_mask = imageoperations.resampleImage(proxy, roi_mask, **kwargs_nn)
    try:
        imageoperations.checkMask(proxy, roi_mask, **kwargs)
    except ValueError as exc:
        if any(text in str(exc) for text in _TOO_SMALL_MESSAGES):
            return str(exc)
        raise
    return None


# --------------------------------------------------------------------------------------------------------------
# Fixed column set
# --------------------------------------------------------------------------------------------------------------


def _synthetic_blob() -> tuple[sitk.Image, sitk.Image]:
    """A small textured sphere, large enough for every usual filter, to learn which keys a settings file yields."""
    rng = np.random.default_rng(20240601)
    shape = (24, 40, 40)  # z, y, x at 3 x 2 x 2 mm
    z, y, x = np.indices(shape).astype(np.float64)
    radius_mm = np.sqrt(((z - 12) * 3.0) ** 2 + ((y - 20) * 2.0) ** 2 + ((x - 20) * 2.0) ** 2)
    inside = radius_mm <= 16.0
    image = rng.normal(0.0, 60.0, shape) + 150.0 * inside + 40.0 * np.sin(x / 2.0)
    img = sitk.GetImageFromArray(image.astype(np.float32))
    msk = sitk.GetImageFromArray(inside.astype(np.uint8))
    for item in (img, msk):
        item.SetSpacing((2.0, 2.0, 3.0))
    return img, msk


@functools.lru_cache(maxsize=8)
def _template_keys(params_path: str, digest: str) -> tuple[str, ...]:
    """PyRadiomics keys (diagnostics dropped) that one (sequence, ROI) yields with these settings, in order."""
    image, mask = _synthetic_blob()
    arrays = (sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(mask))
    job = _Job(
        sequence="template",
        roi="gtvp",
        label=1,
        image=arrays[0],
        mask=arrays[1],
        origin=image.GetOrigin(),
        spacing=image.GetSpacing(),
        direction=image.GetDirection(),
        params_path=params_path,
        digest=digest,
    )
    return tuple(_run_job(job))


def _template_for(params_path=None) -> tuple[str, ...]:
    path = _params_path(params_path)
    return _template_keys(str(path), settings_hash(path))


def feature_columns(params_path=None, sequences: Sequence[str] = SEQUENCES) -> list[str]:
    """Every column :func:`extract_patient` returns for these settings and sequences, in its order.

    Computed once per settings file on a synthetic blob (a few seconds with the paper settings) and cached.
    """
    keys = _template_for(params_path)
    columns = [present_column(roi) for roi in ROIS]
    for sequence in sequences:
        for roi in ROIS:
            columns.extend(feature_name(sequence, roi, key) for key in keys)
    return columns


# --------------------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------------------


def _check_inputs(images: dict, mask: sitk.Image, patient_id: str, tolerance: float) -> None:
    if not isinstance(mask, sitk.Image) or mask.GetDimension() != 3:
        raise InputError("the mask must be a 3D SimpleITK image", patient_id=patient_id)
    if mask.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("the mask must be a scalar label map", patient_id=patient_id)
    if not images:
        raise InputError(
            "no MR sequence was given", patient_id=patient_id, fix="pass e.g. {'t1': ..., 't2': ...}"
        )
    spacing = np.asarray(mask.GetSpacing())
    for sequence, image in images.items():
        if not isinstance(sequence, str) or not sequence:
            raise InputError(
                f"sequence names must be non-empty strings, got {sequence!r}", patient_id=patient_id
            )
        if (
            not isinstance(image, sitk.Image)
            or image.GetDimension() != 3
            or image.GetNumberOfComponentsPerPixel() != 1
        ):
            raise InputError(
                f"sequence {sequence!r} must be a 3D scalar SimpleITK image", patient_id=patient_id
            )
        same_grid = (
            image.GetSize() == mask.GetSize()
            and np.allclose(image.GetSpacing(), spacing, rtol=0, atol=tolerance * spacing.min())
            and np.allclose(image.GetOrigin(), mask.GetOrigin(), rtol=0, atol=tolerance * spacing.min())
            and np.allclose(image.GetDirection(), mask.GetDirection(), rtol=0, atol=tolerance)
        )
        if not same_grid:
            raise InputError(
                f"sequence {sequence!r} is not on the mask grid (size {image.GetSize()} vs {mask.GetSize()}, "
                f"spacing {image.GetSpacing()} vs {mask.GetSpacing()}, origin {image.GetOrigin()} vs "
                f"{mask.GetOrigin()})",
                patient_id=patient_id,
                fix="resample every sequence onto the segmentation grid before radiomics",
            )


def _crop_to_labels(images: dict[str, sitk.Image], mask: sitk.Image,
                    settings: dict) -> tuple[dict[str, sitk.Image], sitk.Image]:
    """The images and mask without the rows, columns and slices beyond the contours' far side.

    PyRadiomics resamples with a B-spline, whose coefficients are computed over the whole input: on a
    512 x 512 x 40 study that was most of the extraction time, for voxels far from the tumour. Only the high-index
    side is cut: PyRadiomics aligns its resampled grid to the image's first voxel, so cutting the low side would
    move the grid (by up to a resampled voxel) and change texture features. The margin covers PyRadiomics' own
    padding (``padDistance`` resampled voxels), the interpolation support and the decay of the B-spline prefilter
    (< 1e-5 after 8 voxels), so the features do not change.
    """
    box = label_box(mask)
    spacing = np.asarray(mask.GetSpacing(), float)
    target = np.asarray(settings.get("resampledPixelSpacing") or spacing, float)
    target = np.where(target > 0, target, spacing)  # PyRadiomics: 0 keeps the input spacing on that axis
    pad = int(settings.get("padDistance") or 5)
    margin = np.ceil((pad + 1) * target / spacing).astype(int) + 10
    size = np.asarray(mask.GetSize())
    extent = np.minimum(box[1].astype(int) + margin + 1, size)
    if np.all(extent == size):
        return images, mask
    extent, origin = [int(v) for v in extent], [0, 0, 0]
    crop = {name: sitk.RegionOfInterest(image, extent, origin) for name, image in images.items()}
    return crop, sitk.RegionOfInterest(mask, extent, origin)


def _image_array(image: sitk.Image) -> np.ndarray:
    """PyRadiomics resamples into the input pixel type: integer images would truncate the B-spline output."""
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        image = sitk.Cast(image, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(image)


def extract_patient(
    images: dict[str, sitk.Image],
    mask: sitk.Image,
    *,
    patient_id: str,
    params_path=None,
    workers: int = 1,
) -> dict[str, float]:
    """Radiomics features of one patient, keyed by :func:`feature_name`, plus ``<roi>_present`` flags.

    ``images`` are the sequences (any names; their order sets the column order), already resampled onto the
    grid of ``mask`` (labels 0 background, 1 GTVp, 2 GTVn, checked as the command line's masks are, by
    :func:`~NPCPrognosisLib.io.images.check_mask`). A missing or too-small ROI gives NaN features and
    ``<roi>_present = 0.0`` so the columns never change; a missing GTVp is an error because every model needs
    the primary tumour. ``workers > 1`` spreads the (sequence, ROI) jobs over spawned processes (safe inside a
    GUI application, unlike fork) and returns exactly the same numbers as ``workers = 1``.
    """
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise InputError(f"workers must be a positive integer, got {workers!r}", patient_id=patient_id)
    path = _params_path(params_path)
    digest = settings_hash(path)
    extractor = _extractor(str(path), digest)
    settings = extractor.settings
    _check_inputs(images, mask, patient_id, float(settings.get("geometryTolerance") or 1e-6))

    # the check of the command line's masks: called from Python with an image as the mask, this listed every one
    # of its hundreds of grey values (3,000 characters) instead of one line
    mask = check_mask(mask, patient_id=patient_id)
    images, mask = _crop_to_labels(images, mask, settings)
    mask_array = sitk.GetArrayFromImage(mask)
    geometry = {"origin": mask.GetOrigin(), "spacing": mask.GetSpacing(), "direction": mask.GetDirection()}
    image_arrays = {sequence: _image_array(image) for sequence, image in images.items()}

    present: dict[str, bool] = {}
    roi_masks: dict[str, tuple[np.ndarray, int, int]] = {}  # roi -> (mask array, label, voxel count)
    for roi, labels in ROIS.items():
        if len(labels) == 1:
            roi_array, label = mask_array, labels[0]
            count = int(np.count_nonzero(mask_array == label))
        else:
            roi_array, label = np.isin(mask_array, labels).astype(np.uint8), 1
            count = int(np.count_nonzero(roi_array))
        if count == 0:
            present[roi] = False
            continue
        roi_image = sitk.GetImageFromArray(roi_array)
        roi_image.CopyInformation(mask)
        problem = _viability_problem(roi_image, label, settings)
        if problem is not None:
            logger.warning(
                "patient %r: %s (%d voxels) is too small for radiomics after resampling, treated as absent: %s",
                patient_id,
                _ROI_DESCRIPTION[roi],
                count,
                problem,
            )
            present[roi] = False
            continue
        present[roi] = True
        roi_masks[roi] = (roi_array, label, count)

    jobs = [
        _Job(
            sequence,
            roi,
            label,
            image_arrays[sequence],
            roi_array,
            params_path=str(path),
            digest=digest,
            **geometry,
        )
        for sequence in images
        for roi, (roi_array, label, _count) in roi_masks.items()
    ]
    results = _run_jobs(jobs, workers, patient_id, {roi: item[2] for roi, item in roi_masks.items()})

    keys = _template_keys(str(path), digest)
    key_set = set(keys)
    table: dict[str, float] = {present_column(roi): 1.0 if present[roi] else 0.0 for roi in ROIS}
    nan = float("nan")
    for sequence in images:
        for roi in ROIS:
            values = results.get((sequence, roi))
            if values is None:
                table.update((feature_name(sequence, roi, key), nan) for key in keys)
                continue
            extra = [key for key in values if key not in key_set]
            if extra:
                raise RuntimeError(f"PyRadiomics returned features outside the column template: {extra[:5]}")
            missing = [key for key in keys if key not in values]
            if missing:
                # e.g. a LoG sigma skipped because the cropped image is too small near the volume edge
                logger.warning(
                    "patient %r, %s %s: PyRadiomics skipped %d features (%s...), set to NaN",
                    patient_id,
                    sequence,
                    roi,
                    len(missing),
                    missing[0],
                )
            table.update((feature_name(sequence, roi, key), values.get(key, nan)) for key in keys)
    return table


def _run_jobs(
    jobs: list[_Job], workers: int, patient_id: str, roi_sizes: dict[str, int]
) -> dict[tuple[str, str], dict[str, float]]:
    """Run the jobs, in-process or in a spawned pool; results are keyed so scheduling order cannot leak out."""

    def wrap(job: _Job, exc: Exception) -> InputError:
        return InputError(
            f"PyRadiomics could not extract sequence {job.sequence!r}, ROI {job.roi!r}: {exc}",
            patient_id=patient_id,
        )

    results: dict[tuple[str, str], dict[str, float]] = {}
    if workers > 1 and len(jobs) > 1 and worker_python() is None:
        logger.warning(
            "patient %r: no Python interpreter found to start worker processes from %s; extracting sequentially",
            patient_id,
            sys.executable,
        )
        workers = 1
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            try:
                results[(job.sequence, job.roi)] = _run_job(job)
            except ValueError as exc:
                raise wrap(job, exc) from exc
        return results

    # Largest ROIs first (longest-processing-time-first keeps every worker busy until the end).
    ordered = sorted(jobs, key=lambda job: -roi_sizes[job.roi])
    pool = _pool(workers)
    try:
        futures = {pool.submit(_run_job, job): job for job in ordered}
        for future in concurrent.futures.as_completed(futures):
            job = futures[future]
            try:
                results[(job.sequence, job.roi)] = future.result()
            except ValueError as exc:
                for other in futures:
                    other.cancel()
                raise wrap(job, exc) from exc
    except concurrent.futures.process.BrokenProcessPool:
        shutdown_pools()  # a worker died (e.g. out of memory): the next call starts a fresh pool
        raise
    return results


# A spawned worker needs ~0.5 s to import SimpleITK and PyRadiomics, as long as a whole small patient takes, so
# pools are kept and reused across patients instead of being started per call.
_POOLS: dict[int, concurrent.futures.ProcessPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = worker_pool(workers, _worker_init)
            _POOLS[workers] = pool
        return pool


def shutdown_pools() -> None:
    """Stop the worker processes kept for ``workers > 1`` (also done automatically at interpreter exit)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown_pools)
