"""benchmarks/serve_load/ in short: ``camexport serve`` under a few hundred requests of the real-weights graph."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.serve_load import serve_load as load


@pytest.mark.slow
def test_the_load_benchmark_in_short(efficientnet_graph: Path) -> None:
    """benchmarks/serve_load/ with a few hundred requests: no 5xx, no client error, the malformed requests all
    refused with their 4xx, the good answers unchanged by them, no file descriptor left by gone clients."""
    result = load.run(efficientnet_graph, load.QUICK, log=lambda _line: None)
    json.dumps(result)  # what the full run commits
    for level in result["levels"]:
        assert (
            level["server_errors"] == 0
            and level["client_errors"] == 0
            and level["statuses"] == {"200": level["requests"]}
        )
    assert max(level["batches"]["mean_batch"] for level in result["levels"]) > 2  # batching happened
    mixed = result["malformed"]["mixed"]
    assert mixed["statuses"] == {"200": 120, "400": 18, "413": 6, "415": 6} and mixed["client_errors"] == 0
    assert result["malformed"]["good_answers_differing"] == 0 and result["malformed"]["good_answers_checked"] == 270
    assert result["soak"]["server_or_client_errors"] == 0
    assert result["disconnects"]["open_files_growth"] == 0 and result["disconnects"]["answers_after_ok"]
