"""The files ``segment`` writes for one patient (mask, DICOM SEG, RT Structure Set, uncertainty and saliency maps),
named in one place.

The single-patient command, the cohort runner and the Slicer panel's contour export all name them here, and a
failed run removes exactly these (:func:`~NPCPrognosisLib.pipeline.segment.outputs_removed_if_failed`). Standard
library only: the Slicer panel imports it in Slicer's own process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.atomic import patient_file

#: Files a single patient's mask may be written as (what SimpleITK writes a label map to).
MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class SegmentOutputs:
    """The files ``segment`` writes for one patient, all named from one stem.

    The single-patient command, the cohort runner and the Slicer panel's contour export name them here, so a
    file one of them writes is the file the others (and the removal of a failed run's outputs) look for.

    Attributes
    ----------
    mask : Path
        The label map.
    seg, rtstruct : Path
        ``<stem>_seg.dcm`` and ``<stem>_rtstruct.dcm`` (DICOM SEG, RT Structure Set; for a DICOM CET1W only).
    uncertainty, saliency : Path
        ``<stem>_uncertainty.nii.gz`` (with test-time augmentation) and ``<stem>_saliency.nii.gz`` (on request).
    """

    mask: Path
    seg: Path
    rtstruct: Path
    uncertainty: Path
    saliency: Path

    @classmethod
    def from_stem(cls, stem: str | Path, mask: str | Path | None = None) -> SegmentOutputs:
        """The files of ``stem``; the mask is ``<stem>_mask.nii.gz`` unless named.

        Parameters
        ----------
        stem : str or Path
            Folder and name the files share.
        mask : str or Path, optional
            The mask's own path (the command line's ``--out``).

        Returns
        -------
        SegmentOutputs
        """
        stem = str(stem)
        return cls(mask=Path(mask if mask is not None else f"{stem}_mask.nii.gz"), seg=Path(f"{stem}_seg.dcm"),
                   rtstruct=Path(f"{stem}_rtstruct.dcm"), uncertainty=Path(f"{stem}_uncertainty.nii.gz"),
                   saliency=Path(f"{stem}_saliency.nii.gz"))

    @classmethod
    def of_patient(cls, folder: str | Path, patient_id: str) -> SegmentOutputs:
        """A cohort patient's files in ``folder``: ``<patient_id>_mask.nii.gz`` and the rest named alike (an ID such
        as '../x' stays inside the folder).

        Parameters
        ----------
        folder : str or Path
            The output folder.
        patient_id : str
            The manifest's ID.

        Returns
        -------
        SegmentOutputs
        """
        return cls.from_stem(patient_file(folder, patient_id, ""))

    @classmethod
    def beside_mask(cls, mask: str | Path) -> SegmentOutputs:
        """The files of a single patient's ``--out`` mask: the others take its name without the image suffix
        (``A0.nii.gz`` -> ``A0_seg.dcm``).

        Parameters
        ----------
        mask : str or Path
            The mask file the user named.

        Returns
        -------
        SegmentOutputs

        Raises
        ------
        InputError
            ``mask`` is a folder or has no suffix SimpleITK writes a label map to; checked before the network runs,
            not when its mask cannot be written.
        """
        mask = Path(mask)
        suffix = next((s for s in MASK_SUFFIXES if mask.name.lower().endswith(s)), None)
        if suffix is None or mask.is_dir():
            raise InputError(f"--out {mask} is not a mask file", path=mask, column="--out",
                             fix=f"name the mask file, ending in one of {', '.join(MASK_SUFFIXES)} "
                                 "(e.g. P1_mask.nii.gz)")
        return cls.from_stem(str(mask)[: -len(suffix)], mask)

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file of the patient, mask first."""
        return (self.mask, self.seg, self.rtstruct, self.uncertainty, self.saliency)
