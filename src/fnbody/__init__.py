"""fnbody: write the body of a Python function from its signature and docstring."""

__version__ = "0.1.0"
