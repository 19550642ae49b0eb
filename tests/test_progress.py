"""qsmbench.progress: a tqdm bar on a terminal, periodic log lines with the time left elsewhere."""

import logging

import pytest

from qsmbench import progress


def test_format_seconds():
    assert progress.format_seconds(0) == "0:00"
    assert progress.format_seconds(75) == "1:15"
    assert progress.format_seconds(3725) == "1:02:05"


def test_log_lines_report_steps_and_time_left(caplog, monkeypatch):
    clock = iter([100.0, 110.0, 120.0, 130.0, 140.0, 150.0, 160.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="qsmbench.progress"):
        p = progress.Progress(4, "fit", bar=False, log_every_s=15.0)   # t0 = 100
        p.update(1, {"loss": 0.5})       # t = 110: 10 s since the start, below 15 s: no line
        p.update(1, {"loss": 0.25})      # t = 120: a line; 2 steps in 20 s -> 20 s left
        p.close()                        # t = 130 (line) ...
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "fit: 2/4 steps (50 %), 0:20 elapsed, about 0:20 left; loss 0.25"
    assert lines[-1].startswith("fit: 2/4 steps (50 %), 0:30 elapsed")
    assert len(lines) == 2


def test_a_bar_on_a_terminal(capsys):
    pytest.importorskip("tqdm")
    with progress.Progress(3, "train", bar=True) as p:
        for _ in range(3):
            p.update(1, {"epoch": 1})
        assert p._tqdm is not None and p._tqdm.n == 3   # tqdm redraws at most every 0.1 s
    err = capsys.readouterr().err
    assert "train" in err and "/3" in err
