"""A loaded bundle as ready-to-use models: the one place bundle.json becomes objects again."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.errors import BundleError, InputError
from NPCPrognosisLib.imaging.preprocess import PreprocessConfig
from NPCPrognosisLib.io.bundle import read_bundle
from NPCPrognosisLib.io.clinical import ClinicalRecord, encode_clinical
from NPCPrognosisLib.io.manifest import centre_label
from NPCPrognosisLib.radiomics.features_table import (
    DEEP_SCORE,
    LOG_VOLUME_COLUMNS,
    LOG_VOLUME_PREFIX,
    check_settings,
    is_deep_feature,
    tumour_volumes,
)
from NPCPrognosisLib.radiomics.harmonization import ComBatModel
from NPCPrognosisLib.radiomics.signature import RadiomicsSignature
from NPCPrognosisLib.survival.nomogram import Nomogram


@dataclass
class LoadedBundle:
    path: Path
    document: dict[str, Any]
    signature: RadiomicsSignature
    nomograms: dict[str, Nomogram]
    #: The fusion model (``train --fusion mmoe``) with its weights, when the bundle has one.
    fusion: Any = None

    @property
    def endpoint(self) -> str:
        return self.document["endpoint"]

    @property
    def cutoffs(self) -> dict[str, float]:
        return {name: float(block["cutoff"]) for name, block in self.document["cutoffs"].items()}

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.document.get("preprocessing") or {})

    @property
    def ebv_fill(self) -> float:
        return float(self.document["clinical_encoding"]["log10_ebv_dna_fill"])

    @property
    def imputation_ranges(self) -> dict[str, list[float]] | None:
        """The training 10th and 90th percentile of each fillable covariate (:func:`~NPCPrognosisLib.pipeline.fit.
        imputation_ranges`); None for a bundle trained before they were stored."""
        return self.document["clinical_encoding"].get("imputation_range_p10_p90")

    @property
    def training_outcomes(self) -> tuple[np.ndarray, np.ndarray]:
        training = self.document["training"]
        return np.asarray(training["time"], float), np.asarray(training["event"], bool)

    @property
    def uses_deep_score(self) -> bool:
        return any(DEEP_SCORE in model.factors for model in self.nomograms.values())

    @property
    def uses_deep_features(self) -> bool:
        """Whether the Rad-score reads the network's deep radiomic features."""
        return any(is_deep_feature(c) for c in self.signature.features)

    @property
    def network_dir(self) -> Path | None:
        """The network bundle shipped inside this bundle (segmentation and deep score), if any."""
        folder = (self.document.get("network") or {}).get("folder")
        return self.path / folder if folder else None

    @property
    def combat(self) -> ComBatModel | None:
        """ComBat estimates of the signature's features when training harmonised radiomics across centres."""
        block = self.document.get("harmonization") or {}
        return ComBatModel.from_dict(block["model"]) if block.get("applied") else None

    def harmonised(self, features: pd.DataFrame, centres: Sequence[str | None] | None,
                   patient_ids: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
        """Features as the models expect them: harmonised with the training centres' ComBat estimates.

        A patient without a centre, or from a centre training never saw, cannot be harmonised (ComBat knows only
        the training centres' scanner effects): the raw features are used and a warning names the patient, so the
        difference is never silent.
        """
        model = self.combat
        if model is None:
            return features, []
        # one spelling of a centre everywhere ("1", "1.0" and 1.0 are centre 1), also against a bundle that stored
        # its training centres before labels were normalised
        trained = {centre_label(batch) for batch in model.batches}
        labels = [None] * len(features) if centres is None else [centre_label(c) for c in centres]
        known = np.array([label in trained for label in labels], dtype=bool)
        warnings = [f"patient {pid}: centre {label or '(none given)'} is not among the training centres "
                    f"({', '.join(model.batches)}); radiomics were not harmonised"
                    for pid, label, ok in zip(patient_ids, labels, known) if not ok]
        if known.any():
            harmonised = model.apply(features[known], [lab for lab, ok in zip(labels, known) if ok],
                                     patient_ids=[p for p, ok in zip(patient_ids, known) if ok])
            features = features.copy()
            features.loc[known, harmonised.columns] = harmonised.to_numpy()
        return features, warnings

    def factors(self, clinical: list[ClinicalRecord], features: pd.DataFrame,
                extras: Mapping[str, Any] | None = None, patient_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """The model inputs (encoded clinical covariates, Rad-score, deep score and, with a fusion model, its
        survival output from ``extras`` tables of ``patient_ids``) of aligned records and rows."""
        table = pd.DataFrame([encode_clinical(r, self.ebv_fill) for r in clinical])
        factors = model_factors(table, self.signature, features)
        if self.fusion is not None:
            from NPCPrognosisLib.pipeline.fusion import MMOE_SCORE

            factors[MMOE_SCORE] = self.fused(factors, features, extras, patient_ids).score
        return factors

    def fused(self, factors: pd.DataFrame, features: pd.DataFrame, extras: Mapping[str, Any] | None,
              patient_ids: Sequence[str] | None) -> Any:
        """The fusion model's outputs (FusionPrediction: survival output, probabilities, gate weights)."""
        from NPCPrognosisLib.pipeline.fusion import binary_scores_for

        scores = binary_scores_for(self.document.get("binary_endpoints") or {}, self.fusion.binary_tasks, features)
        ids = list(patient_ids) if patient_ids is not None else [f"row{i}" for i in range(len(factors))]
        return self.fusion.predict(factors, scores, extras or {}, ids)

    def missing_blocks_warning(self, extras: Mapping[str, Any] | None) -> str | None:
        """What a user should know when an extra table the fusion model was trained with was not given."""
        if self.fusion is None:
            return None
        absent = [name for name in self.fusion.extra_blocks if name not in (extras or {})]
        if not absent:
            return None
        return (f"the fusion model was trained with the {', '.join(absent)} table(s) but none was given "
                f"(--extra-features {absent[0]}=PATH): it used the other modalities only")

    def check_features(self, meta: dict[str, Any], source: str | Path) -> None:
        """Refuse features computed otherwise than the bundle's training features: with other radiomics settings,
        other image preprocessing (N4, normalisation) or another network's deep score and deep features, the same
        column would mean another thing. Only what both sides recorded is compared."""
        check_settings(self.document.get("radiomics") or {}, meta, source)
        ours, theirs = self.document.get("preprocessing"), meta.get("preprocessing")
        if ours and theirs and PreprocessConfig.from_dict(ours) != PreprocessConfig.from_dict(theirs):
            raise InputError(f"features were extracted with image preprocessing {theirs} but the bundle was trained "
                             f"on {ours}", path=source,
                             fix="re-extract with `npc-prognosis extract` at the settings the bundle records")
        expected = (self.document.get("network") or {}).get("sha256")
        found = meta.get("network_sha256")
        if expected and found and expected != found:
            raise InputError(f"the deep score and deep features were computed by network {found[:12]} but the bundle "
                             f"was trained with network {expected[:12]}", path=source,
                             fix="re-extract with --network set to the network inside the bundle (its 'network' "
                                 "folder)")


#: Factors that are risk scores fitted before the nomogram (the Rad-score cross-fitted on the training patients,
#: the deep score from the network): a nomogram mixing them with clinical factors is stacked
#: (:func:`NPCPrognosisLib.survival.nomogram.fit_nomogram`).
SCORE_FACTORS = ("rad_score", DEEP_SCORE)
#: Groups of factors a nomogram stacks as blocks of their own beside the clinical factors: the log tumour volumes
#: get their own out-of-fold score and weight, so a design that adds them to the clinical factors is not one joint
#: Cox fit of nine or more coefficients on ~60 events (in which the volumes and T stage share their signal) but
#: a weighing of two small models, as the Rad-score is weighed against the clinical score.
FACTOR_BLOCKS = {"volume": tuple(LOG_VOLUME_COLUMNS.values())}


def model_factors(clinical: pd.DataFrame, signature: RadiomicsSignature, features: pd.DataFrame) -> pd.DataFrame:
    """Every factor a model may use: encoded clinical covariates, the Rad-score, the log tumour volumes (the volume
    reference's factors, when the table has a GTVp volume) and, when present, the deep score."""
    factors = clinical.reset_index(drop=True).copy()
    factors["rad_score"] = signature.rad_score(features)
    for column, values in tumour_volumes(features.reset_index(drop=True)).items():
        factors[column] = values.to_numpy(float)
    if DEEP_SCORE in features.columns:
        factors[DEEP_SCORE] = features[DEEP_SCORE].to_numpy(float)
    return factors


def volume_factors(factors: pd.DataFrame) -> list[str]:
    """The log tumour volumes of :func:`model_factors` that vary across these patients: the factors of the Cox
    model on the tumour volumes alone (``volume``), the reference a Rad-score has to beat. Why a reference: a
    signature chosen from thousands of features is often a noisy stand-in for the tumour's size (Welch et al. 2019,
    "Vulnerabilities of radiomic signature development: the need for safeguards"); it is reported, never chosen."""
    return [c for c in factors.columns if c.startswith(LOG_VOLUME_PREFIX) and factors[c].std() > 0]


#: What a survival bundle must hold; checked when it is loaded, before any patient is processed.
REQUIRED_KEYS = ("endpoint", "signature", "models", "cutoffs", "clinical_encoding", "training", "radiomics",
                 "feature_columns")


def load_bundle(path: str | Path) -> LoadedBundle:
    """Read, verify and check a survival bundle completely, so a damaged one fails before hours of radiomics."""
    document = read_bundle(path)
    benefit = document.get("chemo_benefit") or {}
    if benefit.get("estimable") and benefit.get("effects"):  # in this version's words, whatever trained the bundle
        from NPCPrognosisLib.survival.benefit import model_conclusion

        document["chemo_benefit"] = {**benefit, "conclusion": model_conclusion(benefit)}
    missing = [key for key in REQUIRED_KEYS if key not in document]
    if missing:
        raise BundleError(f"bundle {path} lacks {missing}; retrain it with this version of NPCPrognosis")
    try:
        bundle = LoadedBundle(
            path=Path(path),
            document=document,
            signature=RadiomicsSignature.from_dict(document["signature"]),
            nomograms={name: Nomogram.from_dict(block) for name, block in document["models"].items()},
        )
        bundle.cutoffs, bundle.ebv_fill, bundle.training_outcomes, bundle.preprocess  # noqa: B018 - parse them now
        if document.get("fusion"):
            from NPCPrognosisLib.pipeline.fusion import load_fusion

            bundle.fusion = load_fusion(document["fusion"], path)
        if "nomogram" not in bundle.nomograms or set(bundle.cutoffs) != set(bundle.nomograms):
            raise KeyError("models/cutoffs")
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"bundle {path} lacks or garbles {exc}; retrain it with this version") from None
    return bundle
