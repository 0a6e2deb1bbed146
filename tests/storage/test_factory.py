"""Choosing the object store from the configuration (DUCKMESH_OBJECT_STORE_URL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from duckmesh.config import ConfigError, load_config
from duckmesh.storage import LocalObjectStore
from duckmesh.storage.factory import open_object_store
from duckmesh.storage.s3 import S3ObjectStore


def test_default_and_file_urls_are_local(tmp_path: Path) -> None:
    default = open_object_store(load_config({"DUCKMESH_DATA_DIR": str(tmp_path)}))
    assert isinstance(default, LocalObjectStore)
    assert default.root == (tmp_path / "objects").resolve()
    elsewhere = open_object_store(
        load_config({"DUCKMESH_OBJECT_STORE_URL": f"file://{tmp_path}/store"})
    )
    assert isinstance(elsewhere, LocalObjectStore)
    assert elsewhere.root == (tmp_path / "store").resolve()


def test_s3_url_names_bucket_prefix_and_cache(tmp_path: Path) -> None:
    env = {
        "DUCKMESH_DATA_DIR": str(tmp_path),
        "DUCKMESH_OBJECT_STORE_URL": "s3://bkt/some/prefix/",
        "DUCKMESH_S3_ENDPOINT_URL": "http://127.0.0.1:9",
        "DUCKMESH_S3_REGION": "eu-west-1",
        "DUCKMESH_S3_PATH_STYLE": "false",
        "DUCKMESH_OBJECT_CACHE_BYTES": "1048576",
    }
    store = open_object_store(load_config(env))
    assert isinstance(store, S3ObjectStore)
    assert store.base == "bkt/some/prefix"
    assert store.cache.root == (tmp_path / "cache").resolve()
    assert store.cache.max_bytes == 1048576
    assert store.fs.region == "eu-west-1"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DUCKMESH_OBJECT_STORE_URL", "http://bucket/prefix"),
        ("DUCKMESH_OBJECT_STORE_URL", "s3://"),
        ("DUCKMESH_OBJECT_STORE_URL", "/var/data"),
        ("DUCKMESH_S3_ENDPOINT_URL", "minio:9000"),
        ("DUCKMESH_OBJECT_CACHE_BYTES", "-1"),
    ],
)
def test_bad_settings_are_refused_at_load(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config({name: value})
