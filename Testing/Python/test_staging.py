"""Sets of files written whole (``io.staging``): what a run stopped by a hard kill leaves, and what the next run does
with it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from NPCPrognosisLib.io.segment_outputs import SegmentOutputs

ROOT = Path(__file__).resolve().parents[2]

#: A process that writes a patient's mask into the staging folder, then waits to be killed (or, with "exit", dies
#: at once without leaving the block: ``os._exit`` runs no ``finally``, as ``kill -9`` does not).
_WRITER = textwrap.dedent("""
    import os, sys, time
    from NPCPrognosisLib.io.segment_outputs import SegmentOutputs
    from NPCPrognosisLib.pipeline.segment import outputs_written_whole

    with outputs_written_whole(SegmentOutputs.of_patient(sys.argv[1], "P1")) as staged:
        staged.mask.write_bytes(b"half of this run's mask")
        print("written", flush=True)
        if sys.argv[2] == "exit":
            os._exit(137)
        time.sleep(60)
""")


def _writer(folder: Path, how: str) -> subprocess.Popen:
    """A writer process (:data:`_WRITER`) once it has written into its staging folder."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    process = subprocess.Popen([sys.executable, "-c", _WRITER, str(folder), how], stdout=subprocess.PIPE, text=True,
                               env=env)
    assert process.stdout.readline().strip() == "written"
    return process


def _hidden(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_the_next_run_removes_the_staging_folder_a_hard_kill_left_and_says_so(tmp_path, caplog):
    """``kill -9`` during ``segment`` left its hidden ``.segment-*`` folder with a half-written mask in the output
    folder for good (each re-run added another). The next run into the folder now removes it and logs which."""
    from NPCPrognosisLib.pipeline.segment import outputs_written_whole

    killed = _writer(tmp_path, "exit")
    assert killed.wait(timeout=30) == 137
    [left] = _hidden(tmp_path)
    assert (tmp_path / left / "P1_mask.nii.gz").read_bytes() == b"half of this run's mask"
    outputs = SegmentOutputs.of_patient(tmp_path, "P2")
    with caplog.at_level(logging.WARNING), outputs_written_whole(outputs) as staged:
        staged.mask.write_bytes(b"P2's mask")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["P2_mask.nii.gz"]
    [message] = [r.getMessage() for r in caplog.records if "staging" in r.getMessage()]
    assert message.startswith(f"removed 1 hidden staging folder(s) that a stopped run left in {tmp_path} ({left})")


def test_a_running_writers_staging_folder_and_the_users_own_files_are_left_alone(tmp_path, caplog):
    """Two ``segment`` runs into one folder (a shell loop started in the background) must not remove each other's
    staging folder, nor anything of the user's that merely starts like one; nor one of a cluster worker on another
    machine sharing the disk, whose process cannot be asked."""
    from NPCPrognosisLib.io.staging import remove_stale_staging

    running = _writer(tmp_path, "wait")
    try:
        [live] = _hidden(tmp_path)
        (tmp_path / ".segment-notes").mkdir()  # not a staging folder's name
        (tmp_path / ".segment-abcd1234").write_text("a file, not a folder")
        (tmp_path / ".segment-1@another-host-abcd1234").mkdir()
        before = _hidden(tmp_path)
        with caplog.at_level(logging.WARNING):
            assert remove_stale_staging(tmp_path) == []
        assert _hidden(tmp_path) == before and live in before
        assert not caplog.records
    finally:
        running.kill()
        running.wait(timeout=30)
    assert [path.name for path in remove_stale_staging(tmp_path)] == [live]  # killed: now it is stale
    # an earlier version's staging folder (no owner in its name) is a stopped run's: the version is gone
    (tmp_path / ".segment-k2x_9q0z").mkdir()
    assert [path.name for path in remove_stale_staging(tmp_path)] == [".segment-k2x_9q0z"]
    assert _hidden(tmp_path) == [".segment-1@another-host-abcd1234", ".segment-abcd1234", ".segment-notes"]


def test_a_staging_folder_of_this_process_is_stale_only_when_it_is_not_open(tmp_path):
    """A process ID is used again (a container's run is often process 1 every time): a folder carrying this
    process's ID that it has not open is a killed run's; one it has open (another thread's block) is not."""
    import os

    from NPCPrognosisLib.io.staging import _this_host, files_written_whole, remove_stale_staging

    earlier = tmp_path / f".segment-{os.getpid()}@{_this_host()}-zzzzzzzz"
    earlier.mkdir()
    with files_written_whole([tmp_path / "P1_seg.dcm"]) as (staged,):
        assert not earlier.exists()  # removed when the block started
        [open_folder] = _hidden(tmp_path)
        assert open_folder.startswith(f".segment-{os.getpid()}@") and staged.parent.name == open_folder
        assert remove_stale_staging(tmp_path) == []
        staged.write_bytes(b"SEG")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["P1_seg.dcm"]


def test_files_written_whole_refuses_files_of_two_folders(tmp_path):
    from NPCPrognosisLib.io.staging import files_written_whole

    with pytest.raises(ValueError, match="share one folder"), files_written_whole(
            [tmp_path / "a" / "P1_seg.dcm", tmp_path / "b" / "P1_rtstruct.dcm"]):
        pass
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
