import os

from hypothesis import settings

pytest_plugins = ["tests.fixtures"]

# CI runs every property test on the same examples (a failure there is a
# regression, not a new draw); locally each run draws new ones. Any failure
# prints its example, which `@example` then pins.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
