"""Settings: defaults < YAML < environment < CLI flags, with clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from genoserve.core.settings import SettingsError, load_settings


def test_defaults_match_the_documented_ports() -> None:
    settings = load_settings()
    assert settings.server.port == 50051
    assert settings.server.metrics_port == 9095
    assert settings.server.max_message_bytes == 64 * 1024 * 1024
    assert settings.runtime.model_dir == Path("models")


def test_precedence_yaml_env_flags(tmp_path: Path) -> None:
    config = tmp_path / "genoserve.yaml"
    config.write_text("server:\n  port: 6000\n  grace_period_s: 5\nruntime:\n  batching:\n    max_batch_size: 8\n")
    env = {"GENOSERVE_SERVER__PORT": "7000", "GENOSERVE_RUNTIME__BATCHING__MAX_QUEUE_DELAY_US": "250"}
    settings = load_settings(config, env, {"server.port": 8000, "server.host": None})
    assert settings.server.port == 8000  # flag beats env beats yaml
    assert settings.server.grace_period_s == 5.0  # yaml beats default
    assert settings.runtime.batching.max_batch_size == 8
    assert settings.runtime.batching.max_queue_delay_us == 250  # env, nested
    assert settings.server.host == "localhost"  # an unset flag does not mask the default
    assert load_settings(config, env).server.port == 7000


def test_flat_aliases_and_json_lists() -> None:
    settings = load_settings(env={"GENOSERVE_PORT": "1234", "GENOSERVE_RUNTIME__MODELS": '["a", "b"]'})
    assert settings.server.port == 1234
    assert settings.runtime.models == ("a", "b")


def test_bad_values_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"server\.port"):
        load_settings(env={"GENOSERVE_SERVER__PORT": "not-a-port"})
    with pytest.raises(SettingsError, match=r"runtime\.device"):
        load_settings(overrides={"runtime.device": "tpu"})
    config = tmp_path / "typo.yaml"
    config.write_text("server:\n  prot: 1\n")
    with pytest.raises(SettingsError, match=r"server\.prot"):
        load_settings(config)


def test_tls_needs_cert_and_key_together() -> None:
    with pytest.raises(SettingsError, match=r"cert_file and tls\.key_file"):
        load_settings(overrides={"server.tls.cert_file": "/tmp/cert.pem"})
    with pytest.raises(SettingsError, match="mTLS"):
        load_settings(overrides={"server.tls.client_ca_file": "/tmp/ca.pem"})


def test_unreadable_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"missing\.yaml"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(bad)


def test_families_from_env_and_flags() -> None:
    assert load_settings(env={"GENOSERVE_RUNTIME__FAMILIES": '["binding"]'}).runtime.families == ("binding",)
    assert load_settings(overrides={"runtime.families": ["variants", "embedding"]}).runtime.families == (
        "variants",
        "embedding",
    )
