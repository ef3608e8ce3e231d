"""Agent settings, the stored credential and the choice of virt type."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from compute_agent.config import (
    AgentSettings,
    Credential,
    load_credential,
    resolve_virt_type,
    save_credential,
)
from compute_agent.main import parser, settings_from


def test_credential_is_written_0600_in_a_0700_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cred = Credential("http://api", "host-id", "node1", "mchc_secret")
    path = save_credential(state, cred)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert load_credential(state) == cred
    assert [p.name for p in state.iterdir()] == ["credential.json"]  # no temp file left


def test_missing_and_broken_credential_files(tmp_path: Path) -> None:
    assert load_credential(tmp_path) is None
    (tmp_path / "credential.json").write_text("{}")
    with pytest.raises(ValueError, match="not a minicloud credential"):
        load_credential(tmp_path)


@pytest.mark.parametrize(("setting", "dev_kvm", "guest_starts", "expected"), [
    ("qemu", True, True, "qemu"),          # explicit wins
    ("kvm", False, False, "kvm"),
    ("auto", True, True, "kvm"),
    ("auto", True, False, "qemu"),         # nested KVM offered but its guest prints nothing
    ("auto", False, True, "qemu"),         # /dev/kvm unusable
])
def test_virt_type(monkeypatch: pytest.MonkeyPatch, setting: str, dev_kvm: bool,
                   guest_starts: bool, expected: str) -> None:
    monkeypatch.setattr("compute_agent.config.kvm_usable", lambda: dev_kvm)
    assert resolve_virt_type(setting, lambda: (guest_starts, "probe")) == expected


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINICLOUD_AGENT_NETWORK", "isolated")
    monkeypatch.setenv("MINICLOUD_AGENT_HEARTBEAT_INTERVAL", "7")
    s = settings_from(parser().parse_args(["--api", "http://x:1", "--network", "none",
                                           "--reserved-ram-mb", "512"]))
    assert (s.api_url, s.network_name, s.heartbeat_interval, s.reserved_ram_mb) == \
        ("http://x:1", None, 7.0, 512)
    assert AgentSettings().network == "isolated"
