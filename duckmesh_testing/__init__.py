"""Test, scenario and load harnesses for DuckMesh; not needed to run the server.

Shipped in the same distribution as ``duckmesh`` but imported only by
``duckmesh bench``, ``duckmesh scenario replay``, ``scenarios/`` and the
tests. Its own dependencies (httpx) come with the ``testing`` extra:
``pip install 'duckmesh[testing]'``.

- ``procs``: free ports and ``duckmesh serve`` child processes.
- ``scenario``: the property-based scenario runner's engine.
- ``bench``: named load scenarios and the benchmark plumbing.
"""
