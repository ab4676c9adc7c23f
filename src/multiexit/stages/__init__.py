"""One module (or package) per pipeline stage, in DAG order: :mod:`.prepare`, :mod:`.train_heads`,
:mod:`.fit_cast`, :mod:`.generate`, :mod:`.score`, :mod:`.lm_eval`. Each stage's scripts/ CLI is a
thin wrapper over its module.
"""
