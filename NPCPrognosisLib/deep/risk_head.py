"""The risk head's last layer refitted after training: a ridge Cox model on the whole training split, and the
same refit without each fold so that the network's own training patients get out-of-fold deep scores.

Why refit: the joint mini-batch Cox loss (risk sets of two) learns useful features but a noisy final weighting;
one ridge Cox fit on every training patient's image measures, its strength chosen by cross-validated C, is the
weighting those features support. The fitted coefficients are written into the network, so ``segment`` needs no
second model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from NPCPrognosisLib.deep.data import CasePatient
from NPCPrognosisLib.deep.network import IMAGE_MEASURES
from NPCPrognosisLib.deep.validation import case_outputs, safe_c_index
from NPCPrognosisLib.survival.splits import event_folds


def head_risks(model, outputs: Mapping[str, Any]) -> np.ndarray:
    """Risks from stored head inputs (:func:`case_outputs`) with the network's current head: after the refit the
    risks change while the contours do not, so the cases need not pass through the network again."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        features = torch.as_tensor(outputs["features"], dtype=torch.float32, device=device)
        measures = torch.as_tensor(outputs["measures"], dtype=torch.float32, device=device)
        return model.heads(features, measures)["risk"].float().cpu().numpy().astype(float)


def _mlp_outputs(model, outputs: Mapping[str, Any]) -> np.ndarray:
    """The risk head's MLP output for stored deep features (:func:`case_outputs`)."""
    import torch

    features = torch.as_tensor(outputs["features"], dtype=torch.float32, device=next(model.parameters()).device)
    with torch.no_grad():
        return model.risk_mlp(features)[:, 0].float().cpu().numpy().astype(float)


#: Folds of the risk-head refit: its ridge strength's cross-validation and its out-of-fold heads.
REFIT_FOLDS = 5


def _on_all_measures(coef, varying: np.ndarray) -> np.ndarray:
    """Coefficients fitted on the varying measures, as a vector over all ``network.IMAGE_MEASURES`` (0 elsewhere)."""
    linear = np.zeros(len(IMAGE_MEASURES))
    linear[varying] = coef
    return linear


def _fold_fits(design: np.ndarray, time: np.ndarray, event: np.ndarray, penalizer: float, seed: int,
               folds: int = REFIT_FOLDS, id_keys: Sequence[str] | None = None
               ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Ridge Cox fits without each fold (folds stratified by event): each case's fold, each fit's coefficients
    and the out-of-fold linear predictors. They score a ridge strength and, for the chosen one, are the
    out-of-fold heads (:func:`_out_of_fold_heads`).

    ``id_keys`` (:func:`~NPCPrognosisLib.io.patient_ids.id_key` of each case): cases whose IDs differ only in case
    or leading zeros share a fold, since the fold map recognises them by one key and must give both a head that saw
    neither. With distinct keys the folds are those of the cases themselves."""
    from NPCPrognosisLib.survival.cox import fit_cox

    fold = event_folds(event, folds, seed, id_keys)
    coefs, lp = [], np.empty(len(time))
    for k in range(folds):
        test = fold == k
        coef = fit_cox(design[~test], time[~test], event[~test], ties="efron", penalizer=penalizer).coef
        coefs.append(np.asarray(coef, float))
        lp[test] = design[test] @ coef
    return fold, coefs, lp


def refit_risk_head(model, cases: Sequence[CasePatient], device: str, penalties: Sequence[float], *,
                    min_events: int = 8, seed: int = 0, include_mlp: bool = False,
                    outputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Refit the risk head's linear path by a ridge Cox model on all ``cases``; returns what was done.

    Design: the standardised image measures (``network.IMAGE_MEASURES``) [and the MLP output with
    ``include_mlp``]; ridge strength by 5-fold cross-validated C. The fitted coefficients are written into the
    network (linear path replaced, measure mean/SD stored as buffers, last MLP layer scaled, to zero when the
    MLP is left out), so the network's risk equals the Cox linear predictor up to a constant. With fewer than
    ``min_events`` events the joint head is kept. ``outputs``: the cases' :func:`case_outputs`, when the caller
    has them (on a patched grid a pass costs a few windows per case).
    """
    import torch

    from NPCPrognosisLib.survival.cox import fit_cox

    time = np.array([c.time for c in cases], float)
    event = np.array([c.event for c in cases], bool)
    if int(event.sum()) < min_events:
        return {"refitted": False, "reason": f"{int(event.sum())} training events < {min_events}"}
    outputs = case_outputs(model, cases, device) if outputs is None else outputs
    mlp, measures = _mlp_outputs(model, outputs), outputs["measures"]
    mlp_mean, mlp_sd = float(mlp.mean()), float(mlp.std())
    mean, sd = measures.mean(0), measures.std(0)
    varying = sd > 1e-6
    sd = np.where(varying, sd, 1.0)
    use_mlp = include_mlp and mlp_sd > 1e-6
    design = ((measures - mean) / sd)[:, varying]
    if use_mlp:
        design = np.column_stack([(mlp - mlp_mean) / mlp_sd, design])
    from NPCPrognosisLib.io.patient_ids import id_key

    keys = [id_key(c.patient_id) for c in cases]
    fits = {float(p): _fold_fits(design, time, event, float(p), seed, id_keys=keys) for p in penalties}
    scores = {p: safe_c_index(time, event, lp) for p, (_, _, lp) in fits.items()}
    best = max(scores, key=lambda p: (np.nan_to_num(scores[p], nan=0.0), p))
    fit = fit_cox(design, time, event, ties="efron", penalizer=best)
    coef = list(fit.coef)
    mlp_coef = coef.pop(0) if use_mlp else 0.0
    linear = _on_all_measures(coef, varying)
    with torch.no_grad():
        last = model.risk_mlp[-1]
        scale = mlp_coef / mlp_sd if use_mlp else 0.0
        last.weight.mul_(scale)
        last.bias.copy_((last.bias - mlp_mean) * scale)
        model.risk_linear.weight.copy_(torch.as_tensor(linear, dtype=last.weight.dtype)[None])
        model.risk_linear.bias.zero_()
        model.measure_mean.copy_(torch.as_tensor(mean, dtype=model.measure_mean.dtype))
        model.measure_sd.copy_(torch.as_tensor(sd, dtype=model.measure_sd.dtype))
    refitted = head_risks(model, outputs)
    return {"refitted": True, "n": len(cases), "events": int(event.sum()), "penalizer": best, "mlp": use_mlp,
            "cv_c_index": {str(k): v for k, v in scores.items()},
            "train_c_index": safe_c_index(time, event, refitted),
            "coefficients": {"deep_mlp": mlp_coef, **{name: float(v) for name, v in zip(IMAGE_MEASURES, linear)}},
            "out_of_fold": _out_of_fold_heads(cases, fits[best], varying, scores[best], use_mlp)}


def _out_of_fold_heads(cases: Sequence[CasePatient], fold_fits: tuple[np.ndarray, list[np.ndarray], np.ndarray],
                       varying: np.ndarray, c_index: float, use_mlp: bool) -> dict[str, Any]:
    """The refit without each fold (``fold_fits`` of the chosen ridge strength, :func:`_fold_fits`): the deep score
    of a training patient from the head that did not see them.

    The refitted head is fitted on the training patients, so their deep scores are in-sample (on the bundled demo
    network: training C 0.72 against a cross-validated 0.64); a nomogram fitted on the same patients would then
    weigh in-sample scores. With these heads, scoring a patient the network trained on (recognised by a salted
    hash of the ID's :func:`~NPCPrognosisLib.io.patient_ids.id_key`, so the patient re-exported as 'npc-007' or
    'NPC-7' is still recognised) gives the out-of-fold score (``segment_preprocessed``). The measures'
    standardisation stays the full split's (unsupervised).
    """
    from NPCPrognosisLib.io.patient_ids import ID_KEY_HASH_METHOD, hash_id, id_key, new_id_salt

    if use_mlp:
        return {"available": False, "reason": "the MLP output entered the refit; it is in-sample (refit_include_mlp)"}
    fold, coefs, _ = fold_fits
    heads = [[float(v) for v in _on_all_measures(coef, varying)] for coef in coefs]
    salt = new_id_salt()
    return {"available": True, "folds": len(coefs), "measure_coefficients": heads,
            "fold_of": {hash_id(id_key(c.patient_id), salt): int(k) for c, k in zip(cases, fold)}, "id_salt": salt,
            "id_hash": ID_KEY_HASH_METHOD, "c_index": c_index}
