"""Other modalities as named per-patient feature tables (pathology slides, lab panels) joined by ``patient_id``.

Whole-slide-image features come from pipelines run elsewhere (a multiple-instance-learning model, slide
measurements); this product only joins them. Each table is one named *block* (``--extra-features
pathology=slides.csv``); a patient without a row, or with an empty row, simply lacks that modality: the fusion
model masks the block for that patient instead of inventing values, and says so in the prediction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from NPCPrognosisLib.errors import InputError

#: Blocks the product computes itself; an extra table may not take their names.
RESERVED_BLOCKS = ("clinical", "radiomics", "deep")


@dataclass
class ExtraBlock:
    """One modality's table: ``values`` indexed by patient ID, one float column per feature."""

    name: str
    values: pd.DataFrame
    source: str

    @property
    def columns(self) -> list[str]:
        return list(self.values.columns)

    def aligned(self, patient_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Rows for ``patient_ids`` (NaN where a patient has no row) and who has the modality at all."""
        rows = self.values.reindex([str(p) for p in patient_ids]).to_numpy(float)
        return rows, ~np.isnan(rows).all(axis=1)


def parse_block_spec(spec: str) -> tuple[str, Path]:
    """``name=path`` (or a bare path, named after the file) as (name, path)."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = Path(spec).stem, spec
    name = name.strip()
    if not name or not name.replace("_", "").isalnum():
        raise InputError(f"block name {name!r} is not a simple name", column="--extra-features",
                         fix="use NAME=PATH with letters, digits and underscores, e.g. pathology=slides.csv")
    if name in RESERVED_BLOCKS:
        raise InputError(f"block name {name!r} is one the product computes itself", column="--extra-features",
                         fix=f"name the table something else than {', '.join(RESERVED_BLOCKS)}")
    return name, Path(path.strip())


def read_extra_block(spec: str) -> ExtraBlock:
    """Read one ``name=path`` table; every cell must be a number or empty.

    Parameters
    ----------
    spec : str
        ``pathology=slides.csv``: the block's name and its CSV file (``patient_id`` + numeric columns).

    Returns
    -------
    ExtraBlock
        The table indexed by patient ID.
    """
    name, path = parse_block_spec(spec)
    if not path.exists():
        raise InputError(f"{name} features table not found", path=path, column="--extra-features",
                         fix="give NAME=PATH of a CSV with a patient_id column")
    try:
        table = pd.read_csv(path, dtype={"patient_id": str})
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the {name} features table ({exc})", path=path) from None
    if "patient_id" not in table.columns:
        raise InputError(f"the {name} features table has no patient_id column", path=path,
                         fix="name the column of patient IDs patient_id (as in the manifest)")
    table["patient_id"] = table["patient_id"].astype(str).str.strip()
    duplicated = table["patient_id"][table["patient_id"].duplicated()].tolist()
    if duplicated:
        raise InputError(f"patient listed twice in the {name} features table", patient_id=duplicated[0], path=path,
                         fix="keep one row per patient (aggregate slides per patient first)")
    columns = [c for c in table.columns if c != "patient_id"]
    if not columns:
        raise InputError(f"the {name} features table has no feature column", path=path)
    for column in columns:
        numbers = pd.to_numeric(table[column], errors="coerce")
        bad = np.flatnonzero(numbers.isna().to_numpy() & table[column].notna().to_numpy())
        if len(bad):
            row = int(bad[0])
            raise InputError(f"non-numeric value {table[column].iloc[row]!r} in the {name} features table",
                             patient_id=table["patient_id"].iloc[row], path=path, column=str(column),
                             fix="features are numbers; leave the cell empty when a value is missing")
        if not np.isfinite(numbers.dropna().to_numpy(float)).all():
            row = int(np.flatnonzero(~np.isfinite(numbers.fillna(0).to_numpy(float)))[0])
            raise InputError(f"infinite value in the {name} features table", patient_id=table["patient_id"].iloc[row],
                             path=path, column=str(column), fix="leave the cell empty when a value is unknown")
        table[column] = numbers.astype(float)
    return ExtraBlock(name=name, values=table.set_index("patient_id")[columns], source=str(path))


def read_extra_blocks(specs: Sequence[str]) -> dict[str, ExtraBlock]:
    """Every ``--extra-features`` table, by block name (a name given twice is refused)."""
    blocks: dict[str, ExtraBlock] = {}
    for spec in specs:
        block = read_extra_block(spec)
        if block.name in blocks:
            raise InputError(f"two tables are named {block.name!r}", column="--extra-features",
                             fix="give each table its own NAME=PATH")
        blocks[block.name] = block
    return blocks


#: Prefix of an extra block's columns once joined to a features table: ``extra:<block>:<column>``, and
#: ``extra:<block>:present`` (1 for a patient with a row, 0 without). The prefix keeps them out of every
#: radiomics selection (:func:`NPCPrognosisLib.radiomics.features_table.feature_matrix`); the binary endpoints'
#: ridge takes them as blocks of their own.
EXTRA_PREFIX = "extra:"
PRESENT = "present"


def extra_column(block: str, column: str) -> str:
    """The name of an extra block's column in a joined features table."""
    return f"{EXTRA_PREFIX}{block}:{column}"


def extra_block_name(column: str) -> str | None:
    """The block a joined column belongs to (None for any other column)."""
    if not column.startswith(EXTRA_PREFIX):
        return None
    return column[len(EXTRA_PREFIX):].split(":", 1)[0]


def check_training_rows(extras: Mapping[str, ExtraBlock], patient_ids: Sequence[str],
                        patients: str = "training patient") -> None:
    """Refuse a table whose rows match none of the training patients (IDs written another way than in the
    manifest), which would otherwise train a model that treats every patient as without that modality; or, with
    ``patients`` "evaluated patient", none of a cohort scored by a model trained with it, which would score every
    patient as without it."""
    for name, block in extras.items():
        if not block.aligned(patient_ids)[1].any():
            raise InputError(f"the {name} features table has no row with values for any {patients} "
                             f"(its IDs, e.g. {', '.join(map(str, block.values.index[:2]))})",
                             path=block.source, column="patient_id",
                             fix="write the patient IDs as the manifest does (e.g. "
                                 f"{', '.join(map(str, list(patient_ids)[:2]))})")


def unmatched_rows_warnings(extras: Mapping[str, ExtraBlock], patient_ids: Sequence[str],
                            patients: str = "training patient") -> list[str]:
    """What a table that matches only some of the patients must say: the patients without a row count as without
    that modality, silently, however many of them are IDs written another way (:func:`check_training_rows` refuses
    only a table that matches none).

    The rule, per table: warn when a patient without a row has one under another spelling of the ID (the same
    :func:`~NPCPrognosisLib.io.patient_ids.loose_id_key`: case, leading zeros, spaces: 'p 7' and 'P007'), or, for a
    cohort, when fewer than half of the patients have a row with values; the warning counts them and names examples
    of the unmatched IDs on both sides. A patient whose row is simply absent (no slide taken) is not warned about alone.

    Parameters
    ----------
    extras : dict of str to ExtraBlock
        The ``--extra-features`` tables (:func:`read_extra_blocks`).
    patient_ids : sequence of str
        The patients the tables are joined to, as the manifest writes them.
    patients : str, default "training patient"
        What these patients are, for the message ("evaluated patient", "patient").

    Returns
    -------
    warnings : list of str
        One per table that matched too few patients; empty when every table matches as it should.
    """
    from NPCPrognosisLib.io.patient_ids import respelled_ids

    ids = [str(p) for p in patient_ids]
    known = set(ids)
    found = []
    for name, block in extras.items():
        present = block.aligned(ids)[1]
        rows = set(map(str, block.values.index))
        foreign = [r for r in map(str, block.values.index) if r not in known]
        without = [p for p in ids if p not in rows]
        respelled = respelled_ids(without, foreign, ids)
        few = len(ids) > 1 and present.sum() < len(ids) / 2
        if not respelled and not few:
            continue
        text = (f"the {name} features table ({block.source}) has a row with values for {int(present.sum())} of the "
                f"{len(ids)} {patients}s: the others count as without {name} data")
        if respelled:
            text += (f"; {len(respelled)} of them have a row under another spelling of their ID ("
                     + ", ".join(f"{p!r} is {r!r} in the table" for p, r in respelled[:3]) + ")")
        text += (f". Unmatched: {patients}s e.g. {', '.join(without[:3]) or 'none'}; table rows e.g. "
                 f"{', '.join(foreign[:3]) or 'none'}. Fix: write the table's patient IDs as the manifest does")
        found.append(text)
    return found


def check_rows(extras: Mapping[str, ExtraBlock], patient_ids: Sequence[str],
               patients: str = "training patient") -> list[str]:
    """Every check of how the tables' rows match the patients, in one call: refuse a table that matches none of them
    (:func:`check_training_rows`) and return the warnings of one that matches only some
    (:func:`unmatched_rows_warnings`).

    Parameters
    ----------
    extras : dict of str to ExtraBlock
        The ``--extra-features`` tables (:func:`read_extra_blocks`).
    patient_ids : sequence of str
        The patients the tables are joined to, as the manifest writes them.
    patients : str, default "training patient"
        What these patients are, for the messages.

    Returns
    -------
    warnings : list of str
        One per table that matched too few patients; empty when every table matches as it should.
    """
    check_training_rows(extras, patient_ids, patients)
    return unmatched_rows_warnings(extras, patient_ids, patients)


def with_extra_columns(features: pd.DataFrame, extras: Mapping[str, ExtraBlock],
                       patient_ids: Sequence[str]) -> pd.DataFrame:
    """A features table with every extra block's columns joined by patient ID.

    Why a presence column: a patient without a slide is not a patient with average slide values; a model that
    scores the missing values as typical still needs to know that they were missing.

    Parameters
    ----------
    features : DataFrame
        The radiomics features, one row per patient of ``patient_ids`` in that order.
    extras : dict of str to ExtraBlock
        The blocks (:func:`read_extra_blocks`).
    patient_ids : sequence of str
        The patients of the rows.

    Returns
    -------
    joined : DataFrame
        ``features`` with ``extra:<block>:<column>`` (NaN without a row or value) and ``extra:<block>:present``.
    """
    joined = [features.reset_index(drop=True)]
    for name, block in extras.items():
        if PRESENT in block.columns:
            raise InputError(f"the {name} features table has a column named {PRESENT!r}, a name the product "
                             "gives the block's presence flag", path=block.source, column=PRESENT,
                             fix="rename that column")
        rows, present = block.aligned(patient_ids)
        part = pd.DataFrame(rows, columns=[extra_column(name, c) for c in block.columns])
        part[extra_column(name, PRESENT)] = present.astype(float)
        joined.append(part)
    return pd.concat(joined, axis=1)
