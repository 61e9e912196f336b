"""Dataset readers, encoder choices and report tables for ``examples/replicate_paper.py``."""
