"""Passwords never leave the machine: a tracking URI may carry one (`http://alice:pw@host`, which
MLflow itself accepts), and it would otherwise reach params, run names, tags, artifacts and the
terminal. Every text the pipeline writes or prints that may hold a URI goes through `masked`."""

import re

# user:password@ in any URL's authority (scheme://user:password@host): the password part. Also where
# its colons are escaped: Hydra passes a sweep's point `tracking.uri=http\://alice\:pw@host`, and JSON
# writes that backslash twice.
_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*\\*://[^/\s:@]+:)(?P<password>[^/\s@]+)(?=@)")


def masked(text: str) -> str:
    """text with the password of every URL in it replaced by ***: http://alice:***@host."""
    return _PASSWORD.sub(r"\g<head>***", text)
