"""Measuring models: the retrieval protocol with zero-shot and classification (``protocol.py``) and
the comparison of deployments of a safe model over an existing collection (``deployment.py``)."""
