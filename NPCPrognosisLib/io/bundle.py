"""Model bundles: a directory of JSON (and safetensors weights) with a checksum of every file.

A bundle carries a patient's prognosis from the cohort it was trained on to a clinic that did not see that
cohort, so it must be inert (JSON, never pickle: loading a bundle can never execute code) and tamper-evident
(a changed coefficient or weight file is refused rather than silently used).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from NPCPrognosisLib.errors import BundleError
from NPCPrognosisLib.io.atomic import to_json, work_in_progress_folder

FORMAT = "npc-prognosis-bundle"
FORMAT_VERSION = 1
MANIFEST_FILE = "bundle.json"
CHECKSUM_FILE = "SHA256SUMS"


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def software_versions() -> dict[str, str]:
    """Versions of the libraries whose numbers end up in a prediction (read without importing them)."""
    from importlib import metadata

    from NPCPrognosisLib import __version__

    versions = {"npc-prognosis": __version__}
    for dist in ("numpy", "SimpleITK", "pyradiomics", "scikit-survival", "scikit-learn", "torch", "monai"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_bundle(out_dir: str | Path, content: Mapping[str, Any],
                 extra_files: Mapping[str, str | Path] | None = None) -> Path:
    """Write ``content`` as bundle.json plus ``extra_files`` (name -> source path), then checksums.

    Written into a temporary sibling folder and renamed at the end, so an interrupted run never leaves a
    half-written bundle where a valid one is expected.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # named as an atomic write's file, so that the next command removes what a hard kill leaves
    with work_in_progress_folder(out_dir) as tmp:
        document = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "software": software_versions(),
            **dict(content),
        }
        (tmp / MANIFEST_FILE).write_text(to_json(document), encoding="utf-8")
        for name, source in (extra_files or {}).items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        lines = [f"{sha256(p)}  {p.relative_to(tmp).as_posix()}" for p in sorted(tmp.rglob("*")) if p.is_file()]
        (tmp / CHECKSUM_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
        if out_dir.exists():
            backup = out_dir.with_name(f".{out_dir.name}.old")
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(out_dir, backup)
            os.replace(tmp, out_dir)
            shutil.rmtree(backup)
        else:
            os.replace(tmp, out_dir)
    return out_dir


def verify_bundle(bundle_dir: str | Path) -> None:
    """Every listed file exists and matches its checksum, and no unlisted file sits beside them."""
    bundle_dir = Path(bundle_dir)
    sums = bundle_dir / CHECKSUM_FILE
    if not bundle_dir.is_dir() or not sums.exists():
        raise BundleError(f"{bundle_dir} is not a model bundle (no {CHECKSUM_FILE}); train one with "
                          "`npc-prognosis train` (a segmentation network with `npc-prognosis train-net`) or use the "
                          "shipped demo bundle")
    listed = {}
    for number, line in enumerate(sums.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or len(parts[0]) != 64 or any(c not in "0123456789abcdef" for c in parts[0]):
            raise BundleError(f"{sums} line {number} is not '<sha256>  <file>' ({line[:60]!r}): the checksum list was "
                              "edited or damaged; re-copy the bundle or retrain")
        name = parts[1].strip()
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"{sums} line {number} names {name!r}, outside the bundle: a bundle vouches only for "
                              "its own files; re-copy the bundle or retrain")
        listed[name] = parts[0]
    if MANIFEST_FILE not in listed:
        raise BundleError(f"{sums} does not list {MANIFEST_FILE}")
    for name, digest in listed.items():
        path = bundle_dir / name
        if not path.exists():
            raise BundleError(f"bundle file {path} is missing: the bundle was copied in part or edited; re-copy "
                              "the whole bundle folder or retrain")
        if sha256(path) != digest:
            raise BundleError(f"checksum mismatch for {path}: the bundle was modified or corrupted; "
                              "re-copy it or retrain")
    extra = [p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*")
             if p.is_file() and p.name != CHECKSUM_FILE and p.relative_to(bundle_dir).as_posix() not in listed]
    if extra:
        raise BundleError(f"bundle {bundle_dir} holds unlisted file(s) {extra[:3]}")


def read_bundle(bundle_dir: str | Path) -> dict[str, Any]:
    """Verify, then parse bundle.json; refuse other formats or versions."""
    verify_bundle(bundle_dir)
    try:  # the checksums only say the file is as written, not that a hand or another tool wrote JSON
        document = json.loads((Path(bundle_dir) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{Path(bundle_dir) / MANIFEST_FILE} is not valid JSON ({exc}); re-copy the bundle or "
                          "retrain") from None
    if not isinstance(document, dict):
        raise BundleError(f"{Path(bundle_dir) / MANIFEST_FILE} holds a JSON {type(document).__name__}, not a bundle "
                          "document; re-copy the bundle or retrain")
    if document.get("format") != FORMAT:
        raise BundleError(f"{bundle_dir} is not an {FORMAT} (format {document.get('format')!r})")
    if document.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"bundle format version {document.get('format_version')!r} is not supported by this "
                          f"version of NPCPrognosis (expects {FORMAT_VERSION}); retrain or upgrade")
    return document


def network_checksum(network_dir: str | Path) -> str:
    """SHA-256 of a network bundle's weights: the identity that features extracted with it are tied to."""
    content = json.loads((Path(network_dir) / MANIFEST_FILE).read_bytes())
    weights = Path(network_dir) / content.get("network", {}).get("weights", "network.safetensors")
    return hashlib.sha256(weights.read_bytes()).hexdigest()
