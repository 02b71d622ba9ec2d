"""Experiments built from many training runs: the comparison (:mod:`~gctnet.experiments.compare`,
also ``gctnet.compare``) and the paper's fine-tuning experiment (:mod:`~gctnet.experiments.finetune`,
also ``gctnet.finetune``).

Both make sure each of their runs exists with one runner (:mod:`~gctnet.experiments.runner`: the run
folder's status, the check that an existing run was made with the settings asked for, training or
resuming it, the check that it finished) and report with one statistics and formatting module
(:mod:`~gctnet.experiments.stats`).  Nothing is imported here, so ``gctnet.experiments.stats`` stays
light for the training engine's progress lines.
"""
