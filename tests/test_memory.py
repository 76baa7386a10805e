"""The model processes' allocator policy (rtprep.core.memory): freed large arrays are reused,
not page-faulted in again from the kernel."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = """
import json, resource, sys
import numpy as np
from rtprep.core.memory import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "on" else False
def faults_of_one_array():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(100 * 2**20 // 8)  # 100 MB, over glibc's largest mmap threshold (32 MB)
    del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_array()  # the first one faults in either case
print(json.dumps({"applied": applied, "faults": faults_of_one_array()}))
"""

def _probe(mode: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_large_array_is_reused_without_page_faults() -> None:
    off, on = _probe("off"), _probe("on")
    assert on["applied"] is True
    # without the policy the array is mapped afresh and faults again (25,600 pages, or ~50
    # huge pages and their neighbours where numpy asks for transparent huge pages); with it,
    # the heap's pages are reused
    assert int(off["faults"]) >= 20
    assert int(on["faults"]) * 10 < int(off["faults"])


_CHILD_PEAK = """
import json
from rtprep.core.memory import peak_rss_kb
print(json.dumps({"own": peak_rss_kb()}))
"""

_PARENT = """
import json, subprocess, sys
import numpy as np
from rtprep.core.memory import peak_rss_kb
a = np.ones(300 * 2**20 // 8)  # 300 MB, touched
out = subprocess.run([sys.executable, "-c", sys.argv[1]], check=True, capture_output=True,
                     text=True).stdout
print(json.dumps({"parent": peak_rss_kb(), "child": json.loads(out.strip().splitlines()[-1])}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status")
def test_peak_rss_is_the_process_own_not_its_parents() -> None:
    out = subprocess.run([sys.executable, "-c", _PARENT, _CHILD_PEAK], check=True,
                         capture_output=True, text=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    parent, own = res["parent"], res["child"]["own"]
    assert parent >= 300 * 1024  # kB: the 300 MB array counts
    # the child never held the array: its own peak is an interpreter's (tens of MB); its
    # ru_maxrss would say >= 300 MB here, the parent's high-water mark carried over exec
    assert own < 200 * 1024
