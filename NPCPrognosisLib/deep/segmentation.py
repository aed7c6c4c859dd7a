"""Automatic GTVp/GTVn segmentation and the deep risk score from a trained network bundle.

The contract every consumer relies on (CLI ``segment``, ``--mask auto``, the Slicer module): the returned mask
has exactly the size, spacing, origin and direction of the reference (CET1W) input, whatever the working grid.
The network runs on its own axis-aligned grid (:mod:`net_data`); its class probabilities, not its labels, are
resampled back linearly and only then turned into labels, so contours keep sub-voxel boundaries.

* Segmentation uses MONAI's sliding-window inferer when the network was trained on patches of its grid (one
  window of the whole grid otherwise). A scalar risk cannot be stitched from windows, so the risk branch reads
  its deep features from one window centred on the predicted tumour and its image measures from the stitched
  probabilities (:mod:`NPCPrognosisLib.deep.inference`, shared with training).
* Test-time augmentation: left-right flips (the neck is near-symmetric) and mild intensity scaling; the voxel
  uncertainty is the normalised predictive entropy of the averaged probabilities, the score's spread is the SD
  of the TTA risks.
* Saliency: HiResCAM (Draelos & Carin 2020; Grad-CAM with the gradient multiplied element-wise instead of
  averaged per channel) of the risk on the second encoder stage (fine enough to point at a tumour part, deep
  enough to be semantic), for display only. The gradient is taken through the contours too (the pooling
  weights are not detached here), since the refitted risk reads the image through the predicted structures.
  Channel-averaged Grad-CAM pointed at the background on the demo network (mean inside GTVp / outside 0.01-0.4);
  HiResCAM gives 20-60.
* Post-processing (:mod:`NPCPrognosisLib.deep.postprocess`): GTVp = its largest connected component (there is one
  primary tumour), opened by the bundle's radius (parts thinner than the training contours ever are, e.g.
  enhancing mucosa along the airway, go; every thick part stays); GTVn components smaller than the bundle's
  threshold (0.2 mL by default) are dropped as noise.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from NPCPrognosisLib.contract import REFERENCE_SEQUENCE, SEQUENCES
from NPCPrognosisLib.deep.data import GridConfig, covering_grid, from_array_xyz, grid_input
from NPCPrognosisLib.deep.inference import grid_pass
from NPCPrognosisLib.deep.network import NetworkConfig
from NPCPrognosisLib.deep.postprocess import count_components, postprocess_labels
from NPCPrognosisLib.deep.typicality import cross_correlations, neighbour_correlations, typicality_warnings
from NPCPrognosisLib.deep.validation import metric_value
from NPCPrognosisLib.imaging.geometry import resample_onto
from NPCPrognosisLib.imaging.preprocess import PreprocessConfig, preprocess_images
from NPCPrognosisLib.io.images import contour_warnings

log = logging.getLogger(__name__)
#: Said with every result of a synthetic demo network: on one patient's prediction it belongs beside the result; a
#: cohort command (extract) says it once, when the network loads, not as one of every patient's image warnings.
SYNTHETIC_NETWORK_NOTICE = "computed with the SYNTHETIC DEMO network: not for clinical use"


@dataclass
class NetworkModel:
    """A loaded network bundle: the torch module on its device plus every setting it was trained with."""

    net: Any
    network_config: NetworkConfig
    grid: GridConfig
    preprocess: PreprocessConfig
    labels: dict[str, int]
    endpoint: str
    inference: dict[str, Any]
    postprocessing: dict[str, Any]
    score_normalisation: dict[str, float]
    synthetic_demo: bool
    bundle_dir: Path
    device: str = "cpu"
    content: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class SegmentationResult:
    mask: sitk.Image
    probabilities: sitk.Image | None
    uncertainty: sitk.Image | None
    saliency: sitk.Image | None
    deep_score: float | None
    deep_score_sd: float | None
    volumes_ml: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    #: Probability from the optional binary head (e.g. response to induction chemotherapy), when trained.
    binary_probability: float | None = None
    #: The network trained on this patient: ``deep_score`` comes from the refitted head that did not see them.
    deep_score_out_of_fold: bool = False


_NETWORKS: dict[str, NetworkModel] = {}


def cached_network(path: str | Path) -> NetworkModel:
    """One loaded network per process and bundle: cohort workers reuse it across patients."""
    key = str(Path(path).resolve())
    if key not in _NETWORKS:
        _NETWORKS[key] = load_network(key)
    return _NETWORKS[key]


def load_network(bundle_dir: str | Path, device: str = "auto") -> NetworkModel:
    """Verify the bundle's checksums, rebuild the architecture from its JSON, load the safetensors weights."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from NPCPrognosisLib.deep.network import build_network
    from NPCPrognosisLib.errors import BundleError
    from NPCPrognosisLib.io.bundle import read_bundle

    bundle_dir = Path(bundle_dir)
    content = read_bundle(bundle_dir)
    if content.get("kind") != "network":
        raise BundleError(f"{bundle_dir} is a {content.get('kind')!r} bundle, not a segmentation network; give the "
                          "folder `npc-prognosis train-net` wrote (or a prognosis bundle that ships one in network/)")
    spec = content["network"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    config = NetworkConfig.from_dict({k: v for k, v in spec["architecture"].items() if k not in ("name", "backbone")})
    grid = GridConfig.from_dict(spec["grid"])
    net = build_network(config, grid.voxel_ml)
    weights = bundle_dir / spec.get("weights", "network.safetensors")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:  # checksums re-made over a damaged file, or a name not in the bundle
        raise BundleError(f"network weights {weights} cannot be read ({exc}); re-copy the bundle or retrain") from None
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise BundleError(f"network weights in {bundle_dir} do not fit its architecture ({exc}); re-copy the bundle "
                          "or retrain") from None
    net = net.to(device).to(memory_format=torch.channels_last_3d).eval()
    if content.get("synthetic_demo"):
        log.warning("%s is a SYNTHETIC DEMO network - not for clinical use", bundle_dir)
    return NetworkModel(net=net, network_config=config, grid=grid,
                        preprocess=PreprocessConfig.from_dict(spec["preprocess"]), labels=dict(spec["labels"]),
                        endpoint=spec.get("endpoint", "dmfs"), inference=dict(spec.get("inference", {})),
                        postprocessing=dict(spec.get("postprocessing", {})),
                        score_normalisation=dict(spec.get("score_normalisation", {})),
                        synthetic_demo=bool(content.get("synthetic_demo")), bundle_dir=bundle_dir,
                        device=device, content=content)


def validation_summary(model: NetworkModel) -> str:
    """One line on how well the network contoured its own validation patients, shown when it is first used."""
    spec = model.content.get("network", {})
    best = spec.get("best_metrics") or {}
    training = spec.get("training", {})
    averaged = (spec.get("final_weights") or {}).get("averaged_epochs")
    when = (f"weights averaged over epochs {averaged[0] + 1}-{averaged[1] + 1}" if averaged
            else f"at epoch {int(spec.get('best_epoch', -1)) + 1}")
    text = (f"network at {model.bundle_dir}: validation Dice GTVp {metric_value(best, 'val_dice_gtvp'):.3f}, "
            f"GTVn {metric_value(best, 'val_dice_gtvn'):.3f} {when} of "
            f"{training.get('epochs', '?')} ({training.get('n_val', '?')} validation patients)")
    gate = spec.get("quality_gate")
    if gate and not gate.get("passed", True):
        text += f"; FAILED its quality gate and was written with --force: {gate['message']}"
    return text


def _plausibility_warnings(model: NetworkModel, mask: sitk.Image, reference: sitk.Image,
                           volumes: Mapping[str, float]) -> list[str]:
    """Contours a radiologist must look at: volumes outside what the network was trained on, tumour in the air."""
    warnings = []
    spec = model.content.get("network", {})
    gate = spec.get("quality_gate")
    if gate and not gate.get("passed", True):
        warnings.append("this network failed its training quality gate (validation Dice GTVp "
                        f"{gate.get('val_dice_gtvp', float('nan')):.2f}, GTVn "
                        f"{gate.get('val_dice_gtvn', float('nan')):.2f}); check every contour")
    ranges = spec.get("training_volumes_ml", {})
    for name, label in (("gtvp", "GTVp"), ("gtvn", "GTVn")):
        volume, span = volumes.get(name, 0.0), ranges.get(name)
        if span and volume > 0 and not span["min"] / 2.0 <= volume <= span["max"] * 2.0:
            warnings.append(f"automatic {label} of {volume:.1f} mL is far outside the training range "
                            f"({span['min']:.1f}-{span['max']:.1f} mL); check the contours")
    most = (ranges.get("gtvn") or {}).get("max_components")  # bundles before 2026-12-05 do not record it
    if most is not None and volumes.get("gtvn", 0.0) > 0:
        # Trained on one phantom family, networks took another family's normal anatomy for nodes, one piece per
        # structure: its submandibular glands and intervertebral discs (up to 11 pieces per patient where the
        # training patients had at most 4); within a family no test patient had more than the training maximum.
        spacing = mask.GetSpacing()
        pieces = count_components(sitk.GetArrayViewFromImage(mask) == 2, float(np.prod(spacing)) / 1000.0)
        if pieces > most:
            warnings.append(f"automatic GTVn has {pieces} separate pieces, more than any of the network's training "
                            f"patients had ({most}); a network takes structures it never saw in training (glands, "
                            "discs, vessels) for nodes: check each piece")
    warnings += contour_warnings(mask, reference, "automatic ")
    return warnings


#: The cohort check (:func:`cohort_warnings`) needs this many segmented patients, a share this far from the
#: training share, and a two-sided binomial p below this before it speaks: clinics differ in how many of their
#: patients are node-positive, so only a gap that prevalence rarely explains is reported.
COHORT_CHECK_MIN_PATIENTS = 20
COHORT_CHECK_MIN_GAP = 0.15
COHORT_CHECK_ALPHA = 1e-3


def cohort_warnings(training_volumes_ml: Mapping[str, Any], volumes_ml: list[Mapping[str, float]]) -> list[str]:
    """Warnings about a whole cohort's automatic contours: a structure found in far more or far fewer patients
    than it was contoured in among the network's training patients.

    One patient's contours can look plausible while the cohort gives the network away: a network trained on
    another phantom family marked a node in each of 200 test patients (40 of them node-negative), taking that
    family's normal anatomy for nodes, and 198 of the 200 had no warning of their own.

    Parameters
    ----------
    training_volumes_ml : mapping
        The network bundle's ``network.training_volumes_ml`` (:func:`NPCPrognosisLib.deep.training.
        training_volumes`); a structure without ``share_present`` (bundles written before it was recorded) is not
        checked.
    volumes_ml : list of mapping of str to float
        Per segmented patient, the automatic volume (mL) of ``gtvp`` and ``gtvn``.

    Returns
    -------
    list of str
        One message per structure whose share differs; empty when the cohort looks like the training patients
        or is too small to tell.
    """
    from scipy.stats import binomtest

    n = len(volumes_ml)
    if n < COHORT_CHECK_MIN_PATIENTS:
        return []
    warnings = []
    for name, label, what in (("gtvp", "GTVp", "a primary tumour"), ("gtvn", "GTVn", "nodes")):
        expected = (training_volumes_ml.get(name) or {}).get("share_present")
        if expected is None:
            continue
        found = sum(float(v.get(name, 0.0)) > 0 for v in volumes_ml)
        share = found / n
        p = binomtest(found, n, float(expected)).pvalue  # 0 when the training share is 0 or 1 and missed
        if abs(share - expected) >= COHORT_CHECK_MIN_GAP and p < COHORT_CHECK_ALPHA:
            direction = "more" if share > expected else "fewer"
            warnings.append(
                f"the network found {what} ({label}) in {found} of {n} patients ({share:.0%}), far {direction} "
                f"than among its training patients ({expected:.0%} had contoured {label}; binomial p {p:.1g}): "
                "a network trained on other scanners often takes their normal anatomy (vessels, glands) for "
                "tumour or misses what it cannot see on these images. Review the contours of a sample of "
                "patients, and if they are wrong, contour some patients of this cohort and train a network on "
                "them (train-net)")
    return warnings


# ---------------------------------------------------------------------------------------------------- network

def _tta_plan(n: int) -> list[tuple[bool, float]]:
    """(flip left-right, intensity factor) per pass; pass 0 is the plain image."""
    plan = [(False, 1.0)]
    factors = [1.0, 0.95, 1.05, 0.9, 1.1]
    for k in range(1, int(n) + 1):
        plan.append((k % 2 == 1, factors[(k // 2) % len(factors)]))  # flip, then a new intensity, alternately
    return plan


def _head_values(out: Mapping[str, Any]) -> dict[str, Any]:
    """Head outputs of a batch of one: the risk, the binary head's probability when it exists, and the image
    measures the risk head's linear path reads."""
    import torch

    values: dict[str, Any] = {"risk": float(out["risk"][0]),
                              "measures": out["measures"][0].detach().float().cpu().numpy()}
    if "binary_logit" in out:
        values["binary_probability"] = float(torch.sigmoid(out["binary_logit"][0].float()))
    return values


def out_of_fold_head(model: NetworkModel, patient_id: str) -> np.ndarray | None:
    """Coefficients of the refitted risk head that did not see ``patient_id``, when the network trained on them.

    The network's own training patients would otherwise get in-sample deep scores (the head was fitted on them),
    which a nomogram fitted on the same patients would weigh as if they were honest. Patients are recognised by
    the salted hash the bundle stores (:func:`NPCPrognosisLib.deep.risk_head._out_of_fold_heads`): of the ID's
    :func:`~NPCPrognosisLib.io.patient_ids.id_key` (whatever its case and leading zeros) in networks whose record
    says so, of the ID as written in older ones. Bundles without out-of-fold heads give None.
    """
    from NPCPrognosisLib.io.patient_ids import recorded_hash

    oof = ((model.content.get("network") or {}).get("risk_head_refit") or {}).get("out_of_fold") or {}
    if not oof.get("available"):
        return None
    fold = oof["fold_of"].get(recorded_hash(patient_id, oof["id_salt"], oof.get("id_hash")))
    return None if fold is None else np.asarray(oof["measure_coefficients"][fold], float)


def _risk_with_head(model: NetworkModel, heads: Mapping[str, Any], coefficients: np.ndarray) -> float:
    """The risk with the linear path's coefficients replaced (the MLP path, zero after the refit, is kept)."""
    net = model.net
    mean = net.measure_mean.detach().float().cpu().numpy()
    sd = net.measure_sd.detach().float().cpu().numpy()
    full = net.risk_linear.weight.detach().float().cpu().numpy()[0]
    standard = (heads["measures"] - mean) / sd
    return float(heads["risk"] + standard @ (coefficients - full))


def _network_pass(model: NetworkModel, x: np.ndarray, want_saliency: bool):
    """Probabilities (3, X, Y, Z) on the working grid, the head outputs (``_head_values``), and optionally a
    HiResCAM saliency of the risk on the working grid (:func:`NPCPrognosisLib.deep.inference.grid_pass`)."""
    import torch

    net, device = model.net, model.device
    prob, out, box = grid_pass(net, x, model.inference, device)
    if not want_saliency:
        return prob, _head_values(out), None
    crop = torch.from_numpy(np.ascontiguousarray(x[(slice(None),) + box])[None]).to(device)
    crop = crop.contiguous(memory_format=torch.channels_last_3d)
    with torch.enable_grad():
        bottleneck, down, decoded, logits = net.encode_decode(crop)
        stage = down[1] if len(down) > 1 else down[0]
        features, measures = net.risk_features(crop, bottleneck, decoded, logits, detach=False)
        risk = net.heads(features, measures)["risk"]
        grads = torch.autograd.grad(risk[0], stage)[0]
    cam = torch.relu((grads * stage).sum(1, keepdim=True))  # HiResCAM: element-wise, not channel-averaged
    cam = torch.nn.functional.interpolate(cam, size=crop.shape[2:], mode="trilinear", align_corners=False)
    cam = cam[0, 0].detach().cpu().numpy()
    full = np.zeros(x.shape[1:], dtype=np.float32)
    full[box] = cam / cam.max() if cam.max() > 0 else cam
    return prob, _head_values(out), full


def segment_patient(model: NetworkModel, images: Mapping[str, sitk.Image], *, patient_id: str = "patient",
                    tta: int = 0, saliency: bool = False, progress: bool = False) -> SegmentationResult:
    """Segment one patient from raw T1W/T2W/CET1W and score their risk.

    The sequences are aligned on the CET1W grid and preprocessed with the network's own settings, then
    :func:`segment_preprocessed` runs; a caller that has already preprocessed them (``predict``) calls that directly.
    """
    from NPCPrognosisLib.io.images import align_patient

    aligned = align_patient(images, None, patient_id=patient_id)
    preprocessed = preprocess_images({s: aligned.images[s] for s in SEQUENCES if s in aligned.images},
                                     model.preprocess)
    result = segment_preprocessed(model, preprocessed, patient_id=patient_id, tta=tta, saliency=saliency,
                                  progress=progress)
    result.warnings[:0] = aligned.warnings
    return result


def segment_preprocessed(model: NetworkModel, preprocessed: Mapping[str, sitk.Image], *,
                         patient_id: str = "patient", tta: int = 0, saliency: bool = False,
                         progress: bool = False) -> SegmentationResult:
    """Segment sequences already aligned on the CET1W grid and preprocessed with ``model.preprocess``.

    Parameters
    ----------
    model : NetworkModel
        A loaded network bundle (:func:`load_network` or :func:`cached_network`).
    preprocessed : mapping of str to SimpleITK.Image
        ``t1``, ``t2``, ``t1c`` after N4 and normalisation, on the CET1W grid (the output's geometry).
    patient_id : str
        Named in warnings and errors; a patient the network trained on gets the out-of-fold deep score
        (:func:`out_of_fold_head`).
    tta : int, default 0
        Test-time augmentations (left-right flips, intensity scaling) for the uncertainty map and score spread.
    saliency : bool, default False
        Also compute the HiResCAM saliency of the risk.
    progress : bool, default False
        A progress bar over the passes.

    Returns
    -------
    result : SegmentationResult
        Mask on the CET1W grid, probabilities, uncertainty, saliency, deep score (and spread), volumes, warnings.
    """
    reference = preprocessed[REFERENCE_SEQUENCE]
    derivation = model.content.get("network", {}).get("training", {}).get("grid_derivation") or {}
    grid, outside = covering_grid(reference, model.grid, derivation.get("height_range_mm"))
    x, grid_image = grid_input(preprocessed, grid)
    warnings = [] if outside is None else [outside]
    warnings += typicality_warnings(model.content.get("network", {}).get("typicality"),
                                    neighbour_correlations(preprocessed), cross_correlations(x, grid.spacing))
    if model.synthetic_demo:
        warnings.append(SYNTHETIC_NETWORK_NOTICE)
    plan = _tta_plan(tta)
    steps = plan
    if progress:
        from tqdm import tqdm

        steps = tqdm(plan, desc=f"segmenting {patient_id}", unit="pass", leave=False)
    probs, risks, binary, cam = [], [], [], None
    own_head = out_of_fold_head(model, patient_id)
    for k, (flip, factor) in enumerate(steps):
        xk = x * factor
        if flip:
            xk = xk[:, ::-1].copy()
        prob, heads, cam_k = _network_pass(model, xk, saliency and k == 0)
        probs.append(prob[:, ::-1] if flip else prob)
        risks.append(heads["risk"] if own_head is None else _risk_with_head(model, heads, own_head))
        if "binary_probability" in heads:
            binary.append(heads["binary_probability"])
        cam = cam_k if k == 0 else cam
    prob = np.mean(probs, axis=0)
    if not np.isfinite(prob).all() or not np.isfinite(risks).all():
        from NPCPrognosisLib.errors import InputError

        raise InputError("the network produced non-finite outputs", patient_id=patient_id,
                         fix="check the images (constant or corrupted volumes?)")
    prob_ref = []
    for c in range(prob.shape[0]):
        channel = resample_onto(from_array_xyz(prob[c].astype(np.float32), grid_image), reference,
                                default=1.0 if c == 0 else 0.0)
        prob_ref.append(sitk.GetArrayFromImage(channel))
    prob_ref = np.stack(prob_ref)  # (3, z, y, x)
    mask = postprocess_labels(np.argmax(prob_ref, axis=0), model.postprocessing, reference)
    entropy = -(prob * np.log(np.clip(prob, 1e-8, 1.0))).sum(0) / math.log(prob.shape[0])
    uncertainty = resample_onto(from_array_xyz(entropy.astype(np.float32), grid_image), reference)
    saliency_img = None
    if cam is not None:
        saliency_img = resample_onto(from_array_xyz(cam.astype(np.float32), grid_image), reference)
    prob_img = sitk.Compose([sitk.GetImageFromArray(p.astype(np.float32)) for p in prob_ref])
    prob_img.CopyInformation(reference)
    voxel_ml = float(np.prod(reference.GetSpacing())) / 1000.0
    counts = np.bincount(sitk.GetArrayViewFromImage(mask).ravel(), minlength=3)
    volumes = {"gtvp": float(counts[1] * voxel_ml), "gtvn": float(counts[2] * voxel_ml)}
    if counts[1] == 0:
        warnings.append("no primary tumour (GTVp) was found; check the images or contour manually")
    warnings.extend(_plausibility_warnings(model, mask, reference, volumes))
    return SegmentationResult(mask=mask, probabilities=prob_img, uncertainty=uncertainty, saliency=saliency_img,
                              deep_score=float(np.mean(risks)),
                              deep_score_sd=float(np.std(risks, ddof=1)) if len(risks) > 1 else None,
                              volumes_ml=volumes, warnings=warnings,
                              binary_probability=float(np.mean(binary)) if binary else None,
                              deep_score_out_of_fold=own_head is not None)
