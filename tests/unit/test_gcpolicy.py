"""wire.gcpolicy: the start-up heap leaves the collector's reach; new garbage does not."""

import subprocess
import sys

SCRIPT = """
import gc, weakref
import gateway.app  # a real process's start-up heap
from wire.gcpolicy import freeze_startup_heap
freeze_startup_heap()
frozen = gc.get_freeze_count()
class Node: pass
a, b = Node(), Node()
a.other, b.other = b, a  # a cycle made after start-up
alive = weakref.ref(a)
del a, b
gc.collect()
print(frozen, alive() is None)
"""


def test_startup_objects_frozen_and_later_cycles_still_collected() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert int(out[0]) > 10_000, out  # the imported modules' objects
    assert out[1] == "True", out
