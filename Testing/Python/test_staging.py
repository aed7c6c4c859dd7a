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


#: A process that fills an atomic write's temporary file, then waits to be killed.
_ATOMIC_WRITER = textwrap.dedent("""
    import sys, time
    from NPCPrognosisLib.io.atomic import atomic_path

    with atomic_path(sys.argv[1]) as tmp:
        tmp.write_bytes(b"half of a table")
        print("written", flush=True)
        time.sleep(60)
""")


def _atomic_writer(target: Path) -> subprocess.Popen:
    """A writer process (:data:`_ATOMIC_WRITER`) once it has written into its temporary file."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    process = subprocess.Popen([sys.executable, "-c", _ATOMIC_WRITER, str(target)], stdout=subprocess.PIPE,
                               text=True, env=env)
    assert process.stdout.readline().strip() == "written"
    return process


def test_the_next_command_removes_the_unfinished_file_a_hard_kill_left_and_says_so(tmp_path, caplog):
    """``kill -9`` during an atomic write left its hidden ``.<name>.<pid>-<hex>.tmp`` file beside the outputs for
    good. The next command into the folder removes it and warns naming it; a writer still running, another
    machine's (its process cannot be asked), an earlier version's (no host in its name) and the user's own hidden
    files are left alone."""
    import numpy as np
    import pandas as pd

    from NPCPrognosisLib.cli import main
    from NPCPrognosisLib.io.atomic import remove_stale_writes
    from NPCPrognosisLib.io.staging import _this_host

    killed = _atomic_writer(tmp_path / "features.csv")
    [left] = _hidden(tmp_path)
    assert left.startswith(f".features.csv.{killed.pid}@{_this_host()}-") and left.endswith(".tmp.csv")
    killed.kill()
    killed.wait(timeout=30)
    running = _atomic_writer(tmp_path / "other.csv")
    try:
        [live] = sorted(set(_hidden(tmp_path)) - {left})
        others = [".x.csv.1@another-host-abcd1234.tmp.csv", f".x.csv.{killed.pid}-abcd1234.tmp.csv", ".notes.tmp"]
        for name in others:
            (tmp_path / name).write_text("kept")
        rng = np.random.default_rng(0)
        pd.DataFrame({"t": rng.exponential(10, 40), "e": rng.random(40) < 0.7, "x": rng.normal(size=40)}).to_csv(
            tmp_path / "table.csv", index=False)
        with caplog.at_level(logging.WARNING):
            assert main(["cox", "--table", str(tmp_path / "table.csv"), "--time-col", "t", "--event-col", "e",
                         "--covariates", "x", "--out", str(tmp_path / "cox.json")]) == 0
        assert _hidden(tmp_path) == sorted([live, *others])
        [message] = [r.getMessage() for r in caplog.records if "stopped run" in r.getMessage()]
        assert message.startswith(f"removed 1 hidden unfinished file(s) that a stopped run left in {tmp_path} ({left})")
    finally:
        running.kill()
        running.wait(timeout=30)
    assert remove_stale_writes(tmp_path) == [tmp_path / live]  # killed: now it is stale


def test_a_commands_output_folder_is_cleaned_below_and_a_bundles_hidden_folder_beside_it(tmp_path, dead_owner):
    """A folder output is the command's with its subfolders (a cohort's per-patient folders, the cohort page's
    figures); a bundle is written in a hidden folder beside it, named as an atomic write's file. A file output's
    folder is the user's: only that folder, not below it."""
    from NPCPrognosisLib.cli import build_parser, output_folders
    from NPCPrognosisLib.io.atomic import remove_stale_writes, work_in_progress_prefix
    from NPCPrognosisLib.io.bundle import write_bundle

    dead = f"{dead_owner}-"  # '<dead pid>@<this host>-'
    bundle = tmp_path / "bundle"
    left_bundle = tmp_path / f".bundle.{dead}k2x_9q0z.tmp"
    (left_bundle / "network").mkdir(parents=True)
    (bundle / "figures").mkdir(parents=True)
    left_figure = bundle / "figures" / f".km.png.{dead}0123abcd.tmp.png"
    left_figure.write_bytes(b"half a plot")
    args = build_parser().parse_args(["train", "--manifest", "m.csv", "--features", "f.csv", "--endpoint", "dmfs",
                                      "--out", str(bundle)])
    assert output_folders("train", args) == [(bundle, True), (tmp_path, False)]
    args = build_parser().parse_args(["cox", "--table", "t.csv", "--time-col", "t", "--event-col", "e",
                                      "--covariates", "x", "--out", str(bundle / "cox.json")])
    assert output_folders("cox", args) == [(bundle, False)]
    assert remove_stale_writes(bundle) == []  # a file output's folder: not below it
    assert remove_stale_writes(bundle, recursive=True) == [left_figure]
    assert remove_stale_writes(tmp_path) == [left_bundle]
    # write_bundle's own hidden folder is named so, and not removed while it is written (this process's ID)
    from NPCPrognosisLib.io import bundle as bundle_module

    seen = []

    def to_json(value):  # called inside the block, with the hidden folder made
        seen.extend(path.name for path in tmp_path.iterdir() if path.name.startswith(".written."))
        assert remove_stale_writes(tmp_path) == []
        return real(value)

    real = bundle_module.to_json
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bundle_module, "to_json", to_json)
        write_bundle(tmp_path / "written", {"x": 1})
    [hidden] = seen
    assert hidden.startswith(work_in_progress_prefix(tmp_path / "written")) and hidden.endswith(".tmp")
    assert (tmp_path / "written" / "bundle.json").exists() and not (tmp_path / hidden).exists()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads a process's state from /proc")
def test_pool_workers_end_when_their_run_is_killed(tmp_path):
    """``kill -9`` of ``train`` left its two robustness workers running: each finished its patient, wrote it to the
    cache, then slept for good on handing back a result nobody read, holding its memory. A worker now ends as soon
    as the process that started it does."""
    import signal
    import time

    run = ("import os, time\n"
           "from NPCPrognosisLib.processes import worker_pool\n"
           "pool = worker_pool(1)\n"
           "print(pool.submit(os.getpid).result(), flush=True)\n"
           "pool.submit(time.sleep, 120)\n"
           "time.sleep(120)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    killed = subprocess.Popen([sys.executable, "-c", run], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    worker = int(killed.stdout.readline())
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)

    def running(pid: int) -> bool:  # an ended process not yet reaped by whoever adopted it is a zombie (Z)
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        return "\nState:\tZ" not in state

    deadline = time.monotonic() + 30  # a bound, not a timing: the old worker slept its 120 s, then for good
    while running(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    if running(worker):
        os.kill(worker, signal.SIGKILL)
        pytest.fail(f"worker {worker} still ran after its run was killed")
