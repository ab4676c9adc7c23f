"""What the pipeline reads: models (:mod:`.models`: Hub names, packaged models, local folders),
training text (:mod:`.corpora`) and open-ended generation prompt sets (:mod:`.prompts`).
"""
