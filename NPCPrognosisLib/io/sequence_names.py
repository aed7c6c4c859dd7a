"""Which MRI sequence a series' own words name: the guard against manifest columns that were swapped.

A manifest whose ``t1`` column points at the T2W image is read without complaint: every image is a valid volume,
and the radiomics of a T2W image are then used as T1W ones. A DICOM series usually says what it is
(SeriesDescription, ProtocolName, SequenceName; ContrastBolusAgent), and a file name often does, but in each
vendor's and each centre's own words ("T1 FS POST", "t1_tse_tra_fs_Gd", "AX T2 FSE", "ce-T1", "STIR"), and many say
nothing certain: a T1W series after contrast is often just "t1_tse_tra_fs". So the reading is conservative: a
sequence is named only on explicit words (a T2 or T1 weighting; a contrast word or a pre-contrast word next to a T1
weighting), contradicting words make it unknown, and an unknown series is never judged.

A weighting is also named by the vendors' names of sequences that have only one (the cross-vendor acronym tables of
Siemens' "MRI Acronyms" and mriquestions.com): the 3D T1 gradient echoes VIBE, FSPGR / SPGR, BRAVO, LAVA, THRIVE,
MPRAGE, TFE, Quick 3D and TIGRE are T1W ("VIBE post" is CET1W); FRFSE, HASTE and SSFSE are T2W. Sequences of any
weighting (TSE / FSE, SPACE, CUBE, VISTA, PROPELLER, BLADE, DIXON, IDEAL, FFE, FLASH) name none by themselves. A FLAIR
follows its own weighting word (GE's "T1 FLAIR" is a T1W spin echo, "T2 FLAIR" a T2W one with the fluid dark) and a
bare FLAIR, like a bare STIR, names nothing. Series that are none of the columns' images stay unknown whatever
weighting they name: T2* and SWI (a "T2" word with a gradient echo: "t2_fl2d_hemo", "T2 FFE", "T2 GRE"), maps,
diffusion and ADC, balanced SSFP (TrueFISP, FIESTA, CISS, B-TFE), localisers. A wrong refusal stops a correctly
placed patient, so a name that some centres use otherwise is left unknown
(Testing/Python/data/series_descriptions.csv is the list this was measured on, with its sources).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from NPCPrognosisLib.contract import SEQUENCE_TITLES, SEQUENCES
from NPCPrognosisLib.errors import InputError

#: T2* and quantitative maps are neither weighted image the columns mean: their T1/T2 words are not weightings. Nor
#: are diffusion (DWI, ADC, trace), susceptibility (SWI, SWAN), balanced SSFP (TrueFISP, FIESTA, CISS, B-TFE: a T2/T1
#: mixture), angiography ("3D_TOF_SPGR") or localiser series.
_NOT_WEIGHTED = re.compile(r"t2 ?\*|t2 ?star|\bmaps?\b|\bmapping\b|\brho\b|\bt1 ?rho|\b[er]?dwi\w*|\b[de]?adc\b|"
                           r"\bdiff\w*|\btrace\w*|\bep2d\w*|\bdti\b|\bswi\w*|\bswan\b|\btrue ?fisp\b|\btrufi\w*|"
                           r"\bfiesta\w*|\bciss\w*|\bb ?tfe\b|\bb ?ffe\b|\bbalanced\b|\bssfp\b|\btof\b|\bmra\b|"
                           r"\bangio\w*|\blocali[sz]er\b|\bscout\b|\b(?:smart)?survey\b")
#: Gradient-echo words: with a T2 word they mean a T2*-weighted series ("t2_fl2d_tra_hemo", "T2 FFE", "T2 GRE").
_GRADIENT_ECHO = re.compile(r"\b(?:gre|m?ffe|fl[23]d\w*|flash|medic|merge|hemo|fe|fgre)\b")
#: A TNM stage in a file name ("P07_T2N1_t1.nii.gz") is not a sequence.
_STAGE = re.compile(r"(?<![a-z0-9])t[0-4x][abc]?n[0-3x][abc]?(?:m[01x])?(?![a-z0-9])")
#: A weighting word, also run together with a plane or a Philips SENSE prefix ("AXT2", "3DT1", "sT2W_TSE").
_WEIGHTING = r"(?<![a-z0-9])(?:s|ax|oax|cor|sag|2d|3d)?"
_T1 = re.compile(_WEIGHTING + r"(?:ce)?t1(?![0-9])")
_T2 = re.compile(_WEIGHTING + r"t2(?![0-9])")
#: Sequences that are T1-weighted whatever the centre: the 3D T1 gradient echoes (VIBE, StarVIBE; FSPGR, SPGR, BRAVO,
#: LAVA, LAVA-Flex; THRIVE, e-THRIVE; MPRAGE; TFE; Canon's Quick 3D; Hitachi's TIGRE).
_T1_SEQUENCE = re.compile(r"\b(?:star|radial ?)?vibe\b|\bf?spgr|\bbravo\b|\blava\b|\b(?:e ?)?thrive\b|\bmp ?rage\b|"
                          r"\b(?:3d)?tfe\b|\bquick ?3d\b|\btigre\b")
#: Sequences that are T2-weighted whatever the centre: GE's FRFSE, single-shot HASTE and SSFSE.
_T2_SEQUENCE = re.compile(r"\bfrfse\w*|\bhaste\b|\bss ?fse\w*")
#: Words after "pre" or "post" that make them about treatment or processing, not contrast ("post-RT", "pre-op").
_NOT_CONTRAST = (r"op|operative|surg\w*|rt|radio\w*|radiation|therapy|treat\w*|tx|chemo\w*|crt|ccrt|ict|ic|nact|"
                 r"biopsy|proc\w*|scan|sat\w*")
#: Words that say no contrast was given; matched (and removed) before the contrast words, so "non contrast" is one.
#: German "KM" (Kontrastmittel) and French "inj" (injection) count as contrast words.
_INJECTION = r"km|inj(?:ect|ected|ection)?"
_PRE_CONTRAST = re.compile(r"\bpre ?(?:contrast|gd|gad|c|" + _INJECTION + r")\b|\bpre\b(?! (?:" + _NOT_CONTRAST +
                           r")\b)|\bnativ(?:e)?\b|\b(?:non|no|without|wo|w o|sans|ohne|vor) ?(?:contrast|gd|gad|gado|"
                           r"gadolinium|enhanced|enhancement|ce|" + _INJECTION + r")\b|\bunenhanced\b|\bplain\b")
#: Words that say contrast was given: an agent, "post", "+C", "CE", or a T1 weighting written with them ("T1C").
_CONTRAST = re.compile(r"\b(?:gd|gad|gado|gadolinium|dotarem|gadovist|gadavist|magnevist|multihance|prohance|"
                       r"clariscan|omniscan|eovist|primovist|elucirem|vueway|contrast|enhanced|enh|ce|" + _INJECTION +
                       r")\b|\bpost(?:contrast|gd|gad|c)?\b(?! (?:" + _NOT_CONTRAST + r")\b)|" + _WEIGHTING +
                       r"(?:ce)?t1w?(?:c|ce|gd|gad|post)\b|\bcet1|\+ ?(?:c|gd|gad|contrast)\b|\bc ?\+")


def _words(text: str, patient_id: str | None = None) -> str:
    """Lower case, one space between words; '+' and '*' kept (they mean contrast and T2*), a TNM stage and the
    patient's ID removed (a file name carries both, and "T2N1" or an ID "T1-017" names no sequence)."""
    text = str(text).lower()
    if patient_id:  # as a whole word only: an ID "1" must not take the 1 of "t1"
        text = re.sub(rf"(?<![a-z0-9]){re.escape(str(patient_id).lower())}(?![a-z0-9])", " ", text)
    text = re.sub(r"[^a-z0-9+*]+", " ", text)
    return " ".join(_STAGE.sub(" ", text).split())


def possible_sequences(text: str, *, patient_id: str | None = None) -> tuple[str, ...]:
    """The manifest columns a series description or file name allows.

    Parameters
    ----------
    text : str
        A SeriesDescription, ProtocolName or SequenceName, or an image file's name.
    patient_id : str, optional
        The patient's ID, removed from ``text`` first (file names carry it).

    Returns
    -------
    tuple of str
        ``("t2",)`` for a T2 weighting; ``("t1c",)`` or ``("t1",)`` for a T1 weighting with words for or against
        contrast; ``("t1", "t1c")`` for a T1 weighting that says neither, or both; every sequence (unknown) when the
        words name no weighting, both, or a series that is none of the columns' images (T2*, SWI, a quantitative
        map, diffusion, balanced SSFP, a localiser). A weighting is a T1 / T2 word or a sequence that has only one
        (VIBE, FSPGR, BRAVO, LAVA, THRIVE, MPRAGE, TFE: T1W; FRFSE, HASTE, SSFSE: T2W).
    """
    words = _words(text, patient_id)
    if _NOT_WEIGHTED.search(words):
        return SEQUENCES
    t1 = bool(_T1.search(words) or _T1_SEQUENCE.search(words))
    t2 = bool(_T2.search(words) or _T2_SEQUENCE.search(words))
    if t1 == t2 or (t2 and _GRADIENT_ECHO.search(words)):  # neither, both ("T1 T2 fusion"), or a T2* gradient echo
        return SEQUENCES
    if t2:
        return ("t2",)
    without = bool(_PRE_CONTRAST.search(words))
    with_contrast = bool(_CONTRAST.search(_PRE_CONTRAST.sub(" ", words)))
    if with_contrast != without:
        return ("t1c",) if with_contrast else ("t1",)
    return ("t1", "t1c")


def sequences_said(texts: Iterable[str], *, patient_id: str | None = None) -> tuple[str, ...]:
    """The columns that every text naming something allows (the header's description fields together); every
    sequence when none names anything or they contradict each other."""
    allowed = set(SEQUENCES)
    for text in texts:
        allowed &= set(possible_sequences(text, patient_id=patient_id))
    return tuple(s for s in SEQUENCES if s in allowed) or SEQUENCES


def sequence_title(sequences: tuple[str, ...]) -> str:
    """``("t1", "t1c")`` -> 'T1W or CET1W': what a reading names, in the clinic's words."""
    return " or ".join(SEQUENCE_TITLES[s] for s in sequences)


#: The header fields of :func:`~NPCPrognosisLib.io.dicom_series.series_identity` whose words describe the series.
DESCRIPTION_FIELDS = {"description": "SeriesDescription", "protocol": "ProtocolName", "sequence": "SequenceName"}
#: ContrastBolusAgent values that say no agent was given.
NO_AGENT = {"", "none", "no", "nil", "n a", "na", "0", "no contrast", "without"}


def contrast_agent(identity: Mapping[str, str]) -> str | None:
    """The series' ContrastBolusAgent (0018,0010) when it names an agent; None when absent, empty or 'none'."""
    value = str(identity.get("contrast_agent") or "").strip()
    return None if _words(value) in NO_AGENT else value


def check_series_sequences(identities: Mapping[str, Mapping[str, str]], patient_id: str,
                           paths: Mapping[str, str | Path | None]) -> None:
    """Refuse DICOM series whose own header names another sequence than their manifest column.

    Two kinds of evidence, each only when unambiguous: the description fields of one series name a sequence the
    column does not allow (:func:`sequences_said`: a ``t1`` series described as T2W, or as T1W after contrast), or
    the ``t1c`` series carries no ContrastBolusAgent while a ``t1`` or ``t2`` series of the same patient does (the
    contrast-enhanced series sits in the wrong column; either alone proves nothing, as many scanners never fill the
    tag). A series whose words say nothing certain passes.

    Parameters
    ----------
    identities : mapping of str to mapping
        Column (``t1``, ``t2``, ``t1c``) to :func:`~NPCPrognosisLib.io.dicom_series.series_identity` of its DICOM
        series; columns given as image files are left out.
    patient_id : str
        The patient, named in the error.
    paths : mapping of str to path
        Column to the path given, named in the error.

    Raises
    ------
    InputError
        Naming the patient, the column, its path, what the header says and the fix.
    """
    for column, identity in identities.items():
        said = sequences_said([identity[k] for k in DESCRIPTION_FIELDS if identity.get(k)], patient_id=patient_id)
        if column in said:
            continue
        words = "; ".join(f"{tag} {identity[k]!r}" for k, tag in DESCRIPTION_FIELDS.items() if identity.get(k))
        raise InputError(f"the {column} column's series is described as {sequence_title(said)} ({words}), not "
                         f"{SEQUENCE_TITLES[column]}", patient_id=patient_id, path=paths.get(column), column=column,
                         fix=f"put this series in the {' or '.join(said)} column and the {SEQUENCE_TITLES[column]} "
                             f"series in the {column} column (the columns look swapped); if the description is "
                             "wrong, convert the series to NIfTI (e.g. dcm2niix) and give that file")
    if "t1c" not in identities or contrast_agent(identities["t1c"]):
        return
    for column in ("t1", "t2"):
        agent = contrast_agent(identities[column]) if column in identities else None
        if agent:
            raise InputError(f"the {column} series was acquired with a contrast agent (ContrastBolusAgent {agent!r}) "
                             "and the t1c series without one", patient_id=patient_id, path=paths.get(column),
                             column=column,
                             fix=f"swap the {column} and t1c paths in this patient's row: the contrast-enhanced "
                                 "T1W series belongs in the t1c column")


#: File endings of images that carry no header words (DICOM folders are read by their tags instead).
IMAGE_FILE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def file_name_sequences(path: str | Path, patient_id: str | None = None) -> tuple[str, ...]:
    """The columns an image file's name allows (:func:`possible_sequences` of the name without its ending and
    the patient's ID); every sequence for a DICOM folder or a name that says nothing certain."""
    name = Path(str(path)).name
    ending = next((e for e in IMAGE_FILE_ENDINGS if name.lower().endswith(e)), None)
    if ending is None:
        return SEQUENCES
    return possible_sequences(name[:-len(ending)], patient_id=patient_id)


def file_name_warnings(rows: Iterable[tuple[str, Mapping[str, str | Path | None]]]) -> list[str]:
    """One warning per column whose image file names name another sequence, listing the patients.

    A warning, not a refusal: a file name is written by whoever exported it, and a wrong one is likelier than a
    wrong DICOM header.

    Parameters
    ----------
    rows : iterable of (str, mapping)
        Each patient's ID and its columns' paths.

    Returns
    -------
    list of str
        Empty when every name allows its column.
    """
    found: dict[str, list[str]] = {}
    for patient_id, paths in rows:
        for column in SEQUENCES:
            path = paths.get(column)
            said = file_name_sequences(path, patient_id) if path else SEQUENCES
            if column not in said:
                found.setdefault(column, []).append(f"{patient_id} ({Path(str(path)).name}: "
                                                    f"{sequence_title(said)})")
    return [f"{len(named)} patient(s)' {column} file names name another sequence than {SEQUENCE_TITLES[column]}: "
            f"{', '.join(named[:5])}{f' and {len(named) - 5} more' if len(named) > 5 else ''}; if the columns were "
            "swapped, swap them back (the files were read as given)" for column, named in found.items()]
