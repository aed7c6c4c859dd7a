"""The contract every stage shares: label values, structure names, sequences, endpoints.

One definition each, imported everywhere, so the segmentation network, radiomics, the Slicer segments and the
reports can never disagree on what label 2 or ``t1c`` means.
"""

from __future__ import annotations

#: Label values of a mask: 1 = primary tumour (GTVp), 2 = metastatic lymph nodes (GTVn); 0 is background.
LABELS: dict[str, int] = {"gtvp": 1, "gtvn": 2}
#: Every class of the network's output, background included, in channel order.
LABEL_NAMES: dict[str, int] = {"background": 0, **LABELS}
#: Radiomics regions of interest: each structure and their union (the whole tumour burden).
ROIS: dict[str, tuple[int, ...]] = {"gtvp": (LABELS["gtvp"],), "gtvn": (LABELS["gtvn"],),
                                    "gtv": (LABELS["gtvp"], LABELS["gtvn"])}
#: Segment names and conventional display colours (RGB 0-1), in label order.
SEGMENTS: tuple[dict, ...] = (
    {"name": "GTVp", "label": LABELS["gtvp"], "color": (0.86, 0.16, 0.16)},  # primary tumour: red
    {"name": "GTVn", "label": LABELS["gtvn"], "color": (0.20, 0.78, 0.25)},  # metastatic nodes: green
)

#: MRI sequences in the network's channel order: T1W, T2W, contrast-enhanced T1W.
SEQUENCES: tuple[str, ...] = ("t1", "t2", "t1c")
SEQUENCE_TITLES: dict[str, str] = {"t1": "T1W", "t2": "T2W", "t1c": "CET1W"}
#: The sequence tumours are contoured on; it defines the grid of masks and of every output image.
REFERENCE_SEQUENCE = "t1c"

#: Survival endpoints: distant metastasis-free, overall and progression-free survival.
ENDPOINTS: tuple[str, ...] = ("dmfs", "os", "pfs")
ENDPOINT_TITLES: dict[str, str] = {"dmfs": "distant metastasis-free survival", "os": "overall survival",
                                   "pfs": "progression-free survival"}
