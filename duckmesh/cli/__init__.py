"""The ``duckmesh`` command line (``main.py``)."""
