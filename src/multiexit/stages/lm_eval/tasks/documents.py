"""Document helpers referenced by the local task templates (``!function documents.<name>``)."""


def non_empty_documents(dataset):
    """Drop blank lines and strip surrounding whitespace (one document per line)."""
    return dataset.filter(lambda doc: bool(doc["text"].strip())).map(lambda doc: {"text": doc["text"].strip()})
