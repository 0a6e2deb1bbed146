import pytest

# The contract suite lives outside test_*.py: let pytest explain its failed asserts.
pytest.register_assert_rewrite("tests.bus.contract", "tests.bus.naive_bus")
