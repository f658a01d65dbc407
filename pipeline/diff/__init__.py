"""`python -m pipeline.diff`: what differs between two runs (__main__.py)."""
