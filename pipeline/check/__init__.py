"""Compose and validate, in the driver, before anything starts: every point of the command line
composed (compose.py), held to the guide's rules (rules.py), the user's model and data (inputs.py),
this machine (preflight.py) and its memory (fit.py); gate.py asks them in order."""
