"""How entry points fail: named errors as one line (exit 2), bugs with their traceback, and in a job of
several ranks one failing rank ends the job instead of leaving the others waiting in a collective."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mused_fm.entry import run_entry
from mused_fm.errors import RecipeError

from train_helpers import ROOT, child_env, free_port, run_launcher

WORKER = ROOT / "tests" / "failing_rank_worker.py"


def test_a_named_error_is_one_line_and_exit_2(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {dpeth: 3}\n")
    proc = run_launcher("train", str(recipe), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {recipe}: unknown key 'model.dpeth'. Did you mean 'model.depth'?"
    ]


def test_in_process_named_errors_return_2_and_bugs_keep_their_traceback(monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def named() -> int:
        raise RecipeError("bad key")

    assert run_entry(named) == 2 and capsys.readouterr().err == "error: bad key\n"

    def bug() -> int:
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError, match="a bug"):
        run_entry(bug)


def _launcher(name: str):
    spec = importlib.util.spec_from_file_location(f"launch_{name}", ROOT / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_bug_in_a_launcher_keeps_its_traceback(monkeypatch, capsys):
    """launch/train.py with the trainer raising a RuntimeError: it propagates, not `error: ...` and exit 2."""
    import mused_fm.train.loop

    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def broken(recipe):
        raise RuntimeError("a bug in the trainer")

    monkeypatch.setattr(mused_fm.train.loop, "train", broken)
    with pytest.raises(RuntimeError, match="a bug in the trainer"):
        _launcher("train").main([str(ROOT / "recipes" / "demo.yaml")])
    assert "error:" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kind", "says"), [("named", "error: rank 1 cannot go on"), ("bug", "RuntimeError: rank 1 has a bug")]
)
def test_one_failing_rank_ends_the_job(kind, says):
    """Rank 1 fails (its teardown would block) while rank 0 waits in all_reduce: the launcher ends the job.

    The exit code is the first failing process's: rank 1's, or rank 0's when gloo reports the lost peer first.
    """
    launcher = Path(sys.executable).with_name("deepspeed")
    cmd = [str(launcher), "--num_gpus", "2", "--master_port", str(free_port()), str(WORKER), kind]
    job = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output = job.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)  # the launcher and both ranks
        pytest.fail("the job outlived its failing rank by two minutes: " + job.communicate()[0][-3000:])
    assert job.returncode != 0, output[-3000:]
    assert output.count(says) == 1, output[-3000:]
    # rank 1's own traceback (prefixed by torch.distributed) only for a bug; rank 0 reports the lost peer
    assert ("[rank1]: Traceback (most recent call last)" in output) == (kind == "bug"), output[-3000:]
