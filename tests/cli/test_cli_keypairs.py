"""``minicloud keypair`` and ``server create --key-name`` against a live API."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.cli.conftest import Mc, assert_readable_error, parse
from tests.conftest import ADMIN_TOKEN
from tests.factories import IMAGE_BYTES, bearer, make_account, unique

pytestmark = pytest.mark.usefixtures("pool")

PUBLIC_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
              " me@laptop")


def test_keypair_generate_import_list_show_delete_and_boot(mc: Mc, http: httpx.Client,
                                                           tmp_path: Path) -> None:
    account = make_account(http, bearer(ADMIN_TOKEN), "member")
    private = tmp_path / "id_gen"
    made = parse(mc("--json", "keypair", "create", "gen", "--private-key-file", str(private),
                    token=account.token))
    assert "private_key" not in made and made["public_key"].startswith("ssh-ed25519 ")
    assert private.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert private.stat().st_mode & 0o777 == 0o600
    pub = tmp_path / "id.pub"
    pub.write_text(PUBLIC_KEY + "\n")
    imported = parse(mc("--json", "keypair", "create", "laptop", "--public-key", str(pub),
                        token=account.token))
    assert imported["public_key"] == PUBLIC_KEY
    assert [k["name"] for k in parse(mc("--json", "keypair", "list",
                                        token=account.token))] == ["gen", "laptop"]
    assert parse(mc("--json", "keypair", "show", "laptop",
                    token=account.token))["fingerprint"] == imported["fingerprint"]

    image = http.post("/v1/images", headers=account.headers,
                      json={"name": unique("img"), "disk_format": "raw"}).json()
    r = http.put(f"/v1/images/{image['id']}/file", content=IMAGE_BYTES["raw"],
                 headers=account.headers)
    assert r.status_code == 200, r.text
    server = parse(mc("--json", "server", "create", unique("vm"), "--flavor", "tiny",
                      "--image", image["id"], "--key-name", "laptop", token=account.token))
    r = http.get(f"/compute/v2.1/servers/{server['id']}",
                 headers={"X-Auth-Token": account.token})
    assert r.json()["server"]["key_name"] == "laptop"

    missing = mc("server", "create", unique("vm"), "--flavor", "tiny", "--image", image["id"],
                 "--key-name", "nope", token=account.token)
    assert_readable_error(missing, "keypair_not_found")
    assert mc("keypair", "delete", "gen", token=account.token).exit_code == 0
    gone = mc("keypair", "show", "gen", token=account.token)
    assert_readable_error(gone, "keypair_not_found")
