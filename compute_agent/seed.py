"""cloud-init NoCloud seed ISO (volume label ``cidata``), written in Python with pycdlib.

The ISO carries ``meta-data`` (instance-id, local-hostname), ``user-data`` (as given, or a
default ``#cloud-config`` with the SSH keys) and optionally ``network-config``. meta-data is
written as JSON, which is valid YAML and cannot be broken by any value.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import pycdlib

from compute_agent import host_files
from compute_agent.spec import ServerSpec

VOLUME_LABEL = "cidata"
_FILES = {  # NoCloud name -> ISO9660 level-1 name (Rock Ridge and Joliet carry the real name)
    "meta-data": "/METADATA.;1",
    "user-data": "/USERDATA.;1",
    "network-config": "/NETWORKC.;1",
}


def meta_data(instance_id: str, hostname: str) -> str:
    """The NoCloud meta-data document (JSON, therefore also valid YAML)."""
    return json.dumps({"instance-id": instance_id, "local-hostname": hostname}, indent=1) + "\n"


def default_user_data(hostname: str, ssh_keys: Sequence[str]) -> str:
    """A ``#cloud-config`` document setting the hostname and authorized SSH keys.

    The body is JSON (valid YAML) so key comments cannot inject YAML structure.
    """
    body = {"hostname": hostname, "ssh_authorized_keys": list(ssh_keys)}
    return "#cloud-config\n" + json.dumps(body, indent=1) + "\n"


def build_seed_iso(dest: Path, *, instance_id: str, hostname: str,
                   user_data: str | None = None, ssh_keys: Sequence[str] = (),
                   network_config: str | None = None) -> None:
    """Write a NoCloud seed ISO to ``dest`` atomically (temp file + rename), mode 0644.

    ``user_data`` None means the default ``#cloud-config`` with ``ssh_keys``.

    Raises:
        OSError: the file cannot be written.
    """
    files = {
        "meta-data": meta_data(instance_id, hostname).encode(),
        "user-data": (user_data if user_data is not None
                      else default_user_data(hostname, ssh_keys)).encode(),
    }
    if network_config is not None:
        files["network-config"] = network_config.encode()
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_LABEL)
    try:
        for name, data in files.items():
            iso.add_fp(io.BytesIO(data), len(data), _FILES[name], rr_name=name,
                       joliet_path="/" + name)
        tmp = dest.with_name(dest.name + ".tmp")
        with open(tmp, "wb") as out:
            iso.write_fp(out)
            out.flush()
            os.fsync(out.fileno())
    finally:
        iso.close()
    host_files.share_file(tmp)  # 0640: user_data may hold secrets
    tmp.replace(dest)


def write_seed(spec: ServerSpec, dest: Path, network_config: str | None = None) -> None:
    """Write the seed ISO of ``spec`` (instance-id = server id) to ``dest``.

    Raises:
        OSError: the file cannot be written.
    """
    build_seed_iso(dest, instance_id=spec.server_id, hostname=spec.hostname,
                   user_data=spec.user_data, ssh_keys=spec.ssh_keys,
                   network_config=network_config)


def read_seed(path: Path) -> tuple[str, dict[str, bytes]]:
    """Read a seed ISO back: (volume label, {Rock Ridge file name: content}).

    Raises:
        pycdlib.pycdlibexception.PyCdlibException: ``path`` is not a readable ISO.
    """
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        label = iso.pvd.volume_identifier.decode().rstrip()
        files: dict[str, bytes] = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.rock_ridge.name().decode()
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path="/" + name)
            files[name] = buf.getvalue()
        return label, files
    finally:
        iso.close()
