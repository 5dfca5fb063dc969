"""Vector collections: safe search (``search.py``) and the blue-green reindex (``reindex/``)."""
