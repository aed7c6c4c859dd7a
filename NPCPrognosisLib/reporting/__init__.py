"""Reports people read: the patient sheet (HTML and PDF) and the cohort study page (HTML, PNG/SVG, CSV).

Everything here renders what earlier stages computed; nothing is re-estimated, so a report can never disagree
with ``prediction.json`` or ``metrics.json``.
"""
