"""``npc-prognosis cox``: a Cox model of any table, as the JSON a researcher reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.survival.checks import check_survival_arrays
from NPCPrognosisLib.survival.cox import fit_cox
from NPCPrognosisLib.survival.metrics import harrell_c


def cox_table(
    df: Any, time_col: str, event_col: str, covariates: Sequence[str], ties: str = "breslow"
) -> dict:
    """The JSON that ``npc-prognosis cox`` prints: fit summary plus Harrell's C on the fitting data."""
    if not isinstance(df, pd.DataFrame):
        raise InputError("cox_table needs a pandas DataFrame", fix="read the CSV with pandas first")
    for col in (time_col, event_col):
        if col not in df.columns:
            raise InputError("column not found", column=col, fix=f"columns are {list(df.columns)}")
    model = fit_cox(df, df[time_col].to_numpy(), df[event_col].to_numpy(), list(covariates), ties=ties)
    t, e = check_survival_arrays(df[time_col].to_numpy(), df[event_col].to_numpy())
    return {
        "n": model.n,
        "events": model.events,
        "ties": model.ties,
        "log_likelihood": model.log_likelihood,
        "concordance": harrell_c(t, e, model.linear_predictor(df)),
        "coefficients": model.summary(),
    }
