"""A benchmark rewrites its own latest run in RESULTS.md and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import common


def test_a_run_replaces_its_section_head_and_keeps_its_subsections(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## fm\n\nold fm run\n\n"
                       "## serving latency\n\nold serving run\n\n"
                       "### A change measured by hand (abc123)\n\nits table\n\n"
                       "### Another (def456)\n\nits table\n\n## cuda\n\nold cuda run\n")
    monkeypatch.setattr(common, "RESULTS", results)
    monkeypatch.setattr(common, "cpu_model", lambda: "a CPU")
    common.record("serving latency", "make bench-serve", {"p99_ms": 5}, "| new table |")
    text = results.read_text()
    assert "old serving run" not in text and "| new table |" in text
    assert text.index("| new table |") < text.index("### A change measured by hand")
    for kept in ("old fm run", "### A change measured by hand (abc123)",
                 "### Another (def456)", "old cuda run"):
        assert text.count(kept) == 1, kept
    common.record("new bench", "make bench-new", {}, "| first |")  # a new one goes last
    assert results.read_text().rstrip().endswith("```")
    assert results.read_text().index("## new bench") > results.read_text().index("## cuda")
