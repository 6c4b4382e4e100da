"""Memory freed after a burst goes back to the system (the operator's RSS follows its load)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]

BURST = """
from finetune_operator import memory

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

blocks, kept = [], []
for i in range(20000):  # ~80 MB of 4 KB blocks (C heap), a few small ones kept among them
    blocks.append(bytes(4000) + bytes([i % 256]))
    if i % 50 == 0:
        kept.append(bytes(600) + bytes([i % 256]))
del blocks
before = rss_mb()
print(memory.return_free_memory(), before, rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, glibc malloc")
def test_memory_freed_after_a_burst_is_returned() -> None:
    done = subprocess.run(
        [sys.executable, "-c", BURST],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO / "operator")},
        capture_output=True,
        text=True,
        check=True,
    )
    trimmed, before, after = done.stdout.split()
    assert trimmed == "True"
    assert float(before) - float(after) > 50, done.stdout  # MB handed back
