"""``gctnet.finetune``: the paper's fine-tuning experiment, kept under its public name.

The code lives in :mod:`gctnet.experiments.finetune`; this module *is* that module.
"""

import sys

from .experiments import finetune as _finetune

sys.modules[__name__] = _finetune
