"""`python -m pipeline.rerun`: a run, a sweep or a search again, from what it recorded (__main__.py)."""
