"""The corpus: CodeSearchNet-style records of Python functions with docstrings."""
