"""DUCKMESH_BOOTSTRAP_API_KEY: the placeholder of the Kubernetes secret
template and obviously weak values are refused at config load, in one line."""

from __future__ import annotations

import re
import secrets

import pytest

from duckmesh.config import ConfigError, load_config
from tests.fixtures import REPO


def _template_placeholder() -> str:
    text = (REPO / "ops/kubernetes/secret.template.yaml").read_text()
    match = re.search(r'DUCKMESH_BOOTSTRAP_API_KEY:\s*"([^"]+)"', text)
    assert match is not None, "the template no longer sets the bootstrap key"
    return match.group(1)


def _load(key: str) -> str:
    return load_config(environ={"DUCKMESH_BOOTSTRAP_API_KEY": key}).bootstrap_api_key


@pytest.mark.parametrize(
    "key",
    [
        _template_placeholder(),
        "changeme" * 5,
        "replace-me-with-a-real-key-please-0123",
        "a" * 32,
        "0123" * 10,
        "dmk_" + "k" * 40,
        "abababababababababababababababababab",
    ],
)
def test_placeholder_and_weak_keys_are_refused(key: str) -> None:
    with pytest.raises(ConfigError, match="DUCKMESH_BOOTSTRAP_API_KEY") as info:
        _load(key)
    message = str(info.value)
    assert "\n" not in message
    assert key not in message  # the (possibly real) value is never echoed


def test_short_keys_are_still_refused() -> None:
    with pytest.raises(ConfigError, match="at least 32"):
        _load(secrets.token_urlsafe(16))


def test_random_keys_are_accepted() -> None:
    for _ in range(200):
        for key in (secrets.token_urlsafe(32), secrets.token_hex(16), secrets.token_hex(20)):
            assert _load(key) == key
    assert _load("") == ""  # no key: the first start prints a generated one
