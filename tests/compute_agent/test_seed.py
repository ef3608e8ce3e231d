"""NoCloud seed ISO: label, files and contents, read back with pycdlib."""

from __future__ import annotations

import json
from pathlib import Path

from compute_agent.seed import build_seed_iso, read_seed, write_seed
from tests.compute_agent.factories import make_spec

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBd5 alice@example"


def test_seed_has_label_cidata_and_meta_data_with_instance_id_and_hostname(
        tmp_path: Path) -> None:
    spec = make_spec(name="Web 1")
    write_seed(spec, tmp_path / "seed.iso")

    label, files = read_seed(tmp_path / "seed.iso")
    assert label == "cidata"
    assert sorted(files) == ["meta-data", "user-data"]
    assert json.loads(files["meta-data"]) == {"instance-id": spec.server_id,
                                              "local-hostname": "web-1"}


def test_user_data_is_passed_through_byte_for_byte(tmp_path: Path) -> None:
    user_data = "#!/bin/sh\necho '</x>' \"$(id)\" ../../etc ünïcode\n"
    spec = make_spec(user_data=user_data, ssh_keys=(KEY,))
    write_seed(spec, tmp_path / "seed.iso")

    assert read_seed(tmp_path / "seed.iso")[1]["user-data"] == user_data.encode()


def test_default_user_data_is_cloud_config_with_the_ssh_keys(tmp_path: Path) -> None:
    hostile_key = 'ssh-rsa AAAA x"\n: ]}{ evil: [yes'.replace("\n", " ")
    spec = make_spec(name="db", ssh_keys=(KEY, hostile_key))
    write_seed(spec, tmp_path / "seed.iso")

    text = read_seed(tmp_path / "seed.iso")[1]["user-data"].decode()
    header, _, body = text.partition("\n")
    assert header == "#cloud-config"
    # The body is JSON (hence YAML): the hostile comment stays one string.
    assert json.loads(body) == {"hostname": "db", "ssh_authorized_keys": [KEY, hostile_key]}


def test_network_config_is_optional(tmp_path: Path) -> None:
    build_seed_iso(tmp_path / "seed.iso", instance_id="i-1", hostname="h",
                   network_config="version: 2\n")
    assert read_seed(tmp_path / "seed.iso")[1]["network-config"] == b"version: 2\n"


def test_hostile_values_cannot_break_meta_data(tmp_path: Path) -> None:
    build_seed_iso(tmp_path / "seed.iso", instance_id='x"\ninstance-id: y', hostname="h\n- z")
    meta = json.loads(read_seed(tmp_path / "seed.iso")[1]["meta-data"])
    assert meta == {"instance-id": 'x"\ninstance-id: y', "local-hostname": "h\n- z"}


def test_seed_is_written_atomically_and_readable_by_qemu_only(tmp_path: Path) -> None:
    dest = tmp_path / "seed.iso"
    write_seed(make_spec(), dest)
    write_seed(make_spec(name="again"), dest)  # replacing an existing seed works

    assert [p.name for p in tmp_path.iterdir()] == ["seed.iso"]
    assert dest.stat().st_mode & 0o777 == 0o640  # it holds user_data
    assert json.loads(read_seed(dest)[1]["meta-data"])["local-hostname"] == "again"
