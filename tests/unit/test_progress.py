"""Batch jobs log progress when no terminal shows a bar."""

from __future__ import annotations

import logging

import pytest

from pipeline.progress import progress


def test_logs_done_total_and_eta_when_not_a_tty(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline"):
        assert list(progress(list(range(4)), "job", every_seconds=0.0)) == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("[job] 1/4 chunks (25%)") and "left" in lines[0]
    assert len(lines) == 3  # no line once everything is done
