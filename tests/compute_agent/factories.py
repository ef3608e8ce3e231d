"""Plain factory functions for compute-agent tests."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from compute_agent.spec import ServerSpec


def make_spec(**overrides: Any) -> ServerSpec:
    """A valid ServerSpec (tiny flavor, qcow2 image, no NIC, TCG) with ``overrides`` applied."""
    fields: dict[str, Any] = {
        "server_id": str(uuid.uuid4()),
        "project_id": str(uuid.uuid4()),
        "name": "web-1",
        "vcpus": 1,
        "ram_mb": 256,
        "disk_gb": 1,
        "image_path": Path("/var/lib/minicloud/images/base.qcow2"),
        "image_format": "qcow2",
        "flavor_id": str(uuid.uuid4()),
        "flavor_name": "tiny",
        "image_id": str(uuid.uuid4()),
        "virt_type": "qemu",
    }
    fields.update(overrides)
    return ServerSpec(**fields)
