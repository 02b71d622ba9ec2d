"""``gctnet.compare``: the main job, kept under its public name.

The code lives in :mod:`gctnet.experiments.compare`; this module *is* that module (``gctnet.compare
is gctnet.experiments.compare``), so ``gctnet.compare.run`` and every other name work as before.
"""

import sys

from .experiments import compare as _compare

sys.modules[__name__] = _compare
