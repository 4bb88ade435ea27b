"""Runs a script with TensorFlow's CPU split into N logical devices, for multi-replica tests.

    python tests/logical_cpus.py N scripts/linear_eval.py --strategy=mirrored ...

`tf.distribute.MirroredStrategy()` then mirrors over the N devices, as it would over N GPUs:
the command under test is the user's, unchanged; only the machine looks different. Logical
devices must be configured before TensorFlow initialises, hence this wrapper.
"""

import os
import runpy
import sys

if __name__ == "__main__":
    count, script = int(sys.argv[1]), sys.argv[2]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.helpers import logical_cpus

    logical_cpus(count)
    sys.argv = [script, *sys.argv[3:]]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
