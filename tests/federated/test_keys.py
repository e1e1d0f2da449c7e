from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ecgdig.errors import ConfigError
from ecgdig.federated.keys import (
    add_site,
    create_registry,
    generate_site_key,
    load_public_key,
    load_registry,
    load_site_key,
    public_key_fingerprint,
)


def test_keygen_writes_private_key_0600_and_public_json(tmp_path: Path) -> None:
    # Execute
    paths = generate_site_key("site-a", tmp_path / "keys")

    # Assert
    assert paths.private_key.name == "site-a.key.pem"
    assert stat.S_IMODE(paths.private_key.stat().st_mode) == 0o600
    assert paths.private_key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    record = json.loads(paths.public_key.read_text())
    assert record["algorithm"] == "Ed25519" and record["site_id"] == "site-a"
    key = load_site_key(paths.private_key)
    assert key.site_id == "site-a"
    assert load_public_key(paths.public_key) == ("site-a", key.public_key)
    assert paths.fingerprint == public_key_fingerprint(key.public_key)
    assert "Ed25519PrivateKey" not in repr(key)


def test_keygen_never_overwrites_by_default(tmp_path: Path) -> None:
    generate_site_key("site-a", tmp_path)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_site_key("site-a", tmp_path)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    paths = generate_site_key("site-a", tmp_path)
    paths.private_key.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_site_key(paths.private_key)


def test_public_key_with_wrong_fingerprint_is_refused(tmp_path: Path) -> None:
    paths = generate_site_key("site-a", tmp_path)
    record = json.loads(paths.public_key.read_text())
    record["fingerprint"] = "0000-0000-0000-0000-0000-0000-0000-0000"
    paths.public_key.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="fingerprint does not match"):
        load_public_key(paths.public_key)


def test_registry_add_and_conflicts(tmp_path: Path) -> None:
    # Prepare
    registry_path = tmp_path / "fed" / "registry.json"
    create_registry(registry_path, "fed-1")
    a = generate_site_key("site-a", tmp_path / "a")
    a_again = generate_site_key("site-a", tmp_path / "a2")
    b = generate_site_key("site-b", tmp_path / "b")

    # Execute
    add_site(registry_path, a.public_key)
    registry = add_site(registry_path, b.public_key)

    # Assert
    assert list(registry.sites) == ["site-a", "site-b"]
    assert load_registry(registry_path) == registry
    with pytest.raises(ConfigError, match="already registered with another key"):
        add_site(registry_path, a_again.public_key)
    assert (
        add_site(registry_path, a_again.public_key, replace=True).sites["site-a"] != registry.sites["site-a"]
    )
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        create_registry(registry_path, "fed-1")


def test_same_key_under_two_ids_is_refused(tmp_path: Path) -> None:
    registry_path = tmp_path / "registry.json"
    create_registry(registry_path, "fed-1")
    a = generate_site_key("site-a", tmp_path)
    add_site(registry_path, a.public_key)
    record = json.loads(a.public_key.read_text())
    record["site_id"] = "site-z"
    clone = tmp_path / "site-z.pub.json"
    clone.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="already registered for site 'site-a'"):
        add_site(registry_path, clone)
