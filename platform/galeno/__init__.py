"""Galeno: build Spanish biomedical-clinical language models end to end.

Importing this package is free of side effects: it does not start Ray, touch a GPU,
configure logging or create folders (every Ray worker imports it).
"""

__version__ = "0.1.0"
