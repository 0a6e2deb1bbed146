"""Named load scenarios and the plumbing of ``duckmesh bench`` and scenarios/.

``load`` defines the scenarios (``steady``, ``burst``, ``many-tenants``,
``big-batches``) and runs them against a fresh server process; ``harness``
holds the server process, percentiles and JSON reports. Not imported by the
server itself.
"""
