"""inodewatch: tell which version of a shared object a running process really runs."""

__version__ = "0.1.0"
