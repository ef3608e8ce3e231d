"""The unmodified ``openstack`` CLI and openstacksdk drive minicloud (docs/openstack.md).

They run from their own virtualenv (``.venv-osc``, made by ``deploy/test.sh``; pinned in
``deploy/lib.sh``) as separate processes, against a real ``minicloud-api`` process, with a
real agent on libvirt's test driver so servers really become ACTIVE, stop, start and reboot.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.db import backend
from tests.e2e.stack import ADMIN, REPO, start_test_driver_agent
from tests.factories import unique

# The real clients speak HTTP to the OpenStack layer, whose database side runs on both
# engines in tests/api/test_openstack_api.py; these slow client runs (about 4 minutes) run in
# the SQLite pass only, so that CI keeps under its 30 minutes.
pytestmark = [pytest.mark.libvirt, pytest.mark.slow,
              pytest.mark.skipif(backend() != "sqlite",
                                 reason="client compatibility: run in the SQLite pass")]

OSC_VENV = Path(os.environ.get("MINICLOUD_OSC_VENV", REPO / ".venv-osc"))
OPENSTACK = OSC_VENV / "bin" / "openstack"
OSC_PYTHON = OSC_VENV / "bin" / "python"


@dataclass
class Cloud:
    """A running API with one test-driver host in its own zone, and a tenant on it."""

    api: str
    zone: str
    flavor: str
    project_id: str
    project: str
    user_id: str
    user: str
    password: str
    image_file: Path

    def env(self, auth_url_path: str = "/identity", **extra: str) -> dict[str, str]:
        """The environment of a password-authenticated ``openstack`` run."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        return base | {
            "OS_AUTH_URL": self.api + auth_url_path, "OS_IDENTITY_API_VERSION": "3",
            "OS_USERNAME": self.user, "OS_PASSWORD": self.password,
            "OS_PROJECT_NAME": self.project, "OS_USER_DOMAIN_NAME": "Default",
            "OS_PROJECT_DOMAIN_NAME": "Default", "OS_REGION_NAME": "RegionOne"} | extra


def _tenant(api: str) -> tuple[str, str, str, str, str]:
    project = unique("osproj")
    r = httpx.post(f"{api}/v1/projects", json={"name": project}, headers=ADMIN)
    assert r.status_code == 201, r.text
    project_id = r.json()["id"]
    user, password = unique("osuser"), "pw-" + uuid.uuid4().hex
    r = httpx.post(f"{api}/v1/users", json={"name": user, "password": password,
                                            "project_id": project_id, "role": "member"},
                   headers=ADMIN)
    assert r.status_code == 201, r.text
    return project_id, project, r.json()["id"], user, password


@pytest.fixture(scope="module")
def cloud(live_api: Callable[[int], list[str]],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    # No skip: a missing client virtualenv is a broken test setup (deploy/test.sh makes it).
    assert OPENSTACK.is_file(), f"{OPENSTACK} is missing: run deploy/test.sh to create it"
    api = live_api(1)[0]
    home = tmp_path_factory.mktemp("osc")
    zone = unique("az")
    agent = start_test_driver_agent(api, home / "agent", az=zone, vcpus=8, ram_mb=16384)
    flavor = unique("m1")
    r = httpx.post(f"{api}/v1/flavors", json={"name": flavor, "vcpus": 1, "ram_mb": 256,
                                             "disk_gb": 1}, headers=ADMIN)
    assert r.status_code == 201, r.text
    image_file = home / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image_file), "16M"],
                   check=True)
    yield Cloud(api, zone, flavor, *_tenant(api), image_file)
    agent.stop()


def osc(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``openstack *args``; with ``ok`` it must succeed."""
    done = subprocess.run([str(OPENSTACK), *args], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    if ok:
        assert done.returncode == 0, f"openstack {' '.join(args)}:\n{done.stderr}{done.stdout}"
    return done


def osc_json(env: dict[str, str], *args: str) -> Any:
    """Run ``openstack *args -f json`` and parse the answer."""
    return json.loads(osc(env, *args, "-f", "json").stdout)


def _flow(cloud: Cloud, env: dict[str, str]) -> None:
    """Acceptance 1's CLI flow, as one tenant."""
    token = osc_json(env, "token", "issue")
    assert token["project_id"] == cloud.project_id and token["user_id"] == cloud.user_id
    catalog = {c["Type"]: c for c in osc_json(env, "catalog", "list")}
    assert {"identity", "compute", "image"} <= set(catalog)
    assert any(e["url"] == f"{cloud.api}/compute/v2.1" and e["interface"] == "public"
               and e["region"] == "RegionOne" for e in catalog["compute"]["Endpoints"])

    assert cloud.flavor in {f["Name"] for f in osc_json(env, "flavor", "list")}
    flavor = osc_json(env, "flavor", "show", cloud.flavor)
    assert (flavor["vcpus"], flavor["ram"], flavor["disk"]) == (1, 256, 1)

    key = unique("key")
    generated = osc(env, "keypair", "create", key).stdout
    assert "PRIVATE KEY" in generated
    assert key in {k["Name"] for k in osc_json(env, "keypair", "list")}

    image_name = unique("img")
    image = osc_json(env, "image", "create", "--file", str(cloud.image_file), "--disk-format",
                     "qcow2", "--container-format", "bare", image_name)
    assert image["status"] == "active" and image["size"] == cloud.image_file.stat().st_size
    assert image_name in {i["Name"] for i in osc_json(env, "image", "list")}
    shown = osc_json(env, "image", "show", image_name)
    assert shown["id"] == image["id"] and shown["disk_format"] == "qcow2"
    assert len(shown["checksum"]) == 32

    name = unique("vm")
    server = osc_json(env, "server", "create", "--flavor", cloud.flavor, "--image", image_name,
                      "--key-name", key, "--availability-zone", cloud.zone, "--wait", name)
    assert server["status"] == "ACTIVE" and server["key_name"] == key
    listed = {s["Name"]: s for s in osc_json(env, "server", "list")}
    assert listed[name]["Status"] == "ACTIVE" and listed[name]["Flavor"] == cloud.flavor
    shown = osc_json(env, "server", "show", name)
    assert shown["id"] == server["id"] and shown["OS-EXT-AZ:availability_zone"] == cloud.zone
    assert "OS-EXT-SRV-ATTR:host" not in shown or shown["OS-EXT-SRV-ATTR:host"] is None

    osc(env, "server", "stop", name)
    _wait_status(env, name, "SHUTOFF")
    # Stopping a stopped server: Nova's 409, and the CLI says why.
    again = osc(env, "server", "stop", name, ok=False)
    assert again.returncode != 0 and "Cannot stop a server in SHUTOFF" in again.stderr
    osc(env, "server", "start", name)
    _wait_status(env, name, "ACTIVE")
    osc(env, "server", "reboot", "--wait", name)
    osc(env, "server", "reboot", "--hard", "--wait", name)
    assert osc_json(env, "server", "show", name)["status"] == "ACTIVE"
    osc(env, "console", "log", "show", name)
    osc(env, "console", "log", "show", "--lines", "5", name)

    group = unique("grp")
    made = osc_json(env, "server", "group", "create", "--policy", "anti-affinity", group)
    assert made["policies"] == ["anti-affinity"]
    assert group in {g["Name"] for g in osc_json(env, "server", "group", "list")}

    quota = {q["Resource"]: q for q in osc_json(env, "quota", "show", "--usage")}
    assert quota["instances"]["In Use"] >= 1 and quota["cores"]["Limit"] == 20
    limits = {row["Name"]: row["Value"] for row in osc_json(env, "limits", "show",
                                                             "--absolute")}
    assert limits["total_instances_used"] >= 1 and limits["max_total_cores"] == 20
    usage = osc_json(env, "usage", "show")
    assert server["id"] in {s["instance_id"] for s in usage["Servers"]}
    assert any(u["Project"] in (cloud.project, cloud.project_id)
               for u in osc_json(env, "usage", "list"))

    osc(env, "server", "delete", "--wait", name)
    assert name not in {s["Name"] for s in osc_json(env, "server", "list")}
    gone = osc(env, "server", "show", name, ok=False)
    assert gone.returncode != 0 and f"No Server found for {name}" in gone.stderr
    osc(env, "server", "group", "delete", group)
    osc(env, "image", "delete", image_name)
    assert image_name not in {i["Name"] for i in osc_json(env, "image", "list")}
    osc(env, "keypair", "delete", key)
    assert key not in {k["Name"] for k in osc_json(env, "keypair", "list")}


def _wait_status(env: dict[str, str], name: str, status: str) -> None:
    from tests.e2e.stack import WAIT, wait_until

    wait_until(lambda: osc_json(env, "server", "show", name)["status"] == status, WAIT,
               f"{name} {status}", poll=1.0)


@pytest.mark.parametrize("auth_path", ["/identity", "/identity/v3"])
def test_cli_flow_with_a_password(cloud: Cloud, auth_path: str) -> None:
    _flow(cloud, cloud.env(auth_path))


def test_cli_flow_with_an_application_credential(cloud: Cloud) -> None:
    cred = osc_json(cloud.env(), "application", "credential", "create", unique("ci"))
    env = {k: v for k, v in cloud.env().items()
           if k not in ("OS_USERNAME", "OS_PASSWORD", "OS_PROJECT_NAME",
                        "OS_USER_DOMAIN_NAME", "OS_PROJECT_DOMAIN_NAME")}
    env |= {"OS_AUTH_TYPE": "v3applicationcredential",
            "OS_APPLICATION_CREDENTIAL_ID": cred["ID"],
            "OS_APPLICATION_CREDENTIAL_SECRET": cred["Secret"]}
    _flow(cloud, env)
    # By name and user name, as keystoneauth also allows.
    env.pop("OS_APPLICATION_CREDENTIAL_ID")
    env |= {"OS_APPLICATION_CREDENTIAL_NAME": cred["Name"], "OS_USERNAME": cloud.user,
            "OS_USER_DOMAIN_NAME": "Default"}
    assert osc_json(env, "token", "issue")["user_id"] == cloud.user_id
    wrong = osc(env | {"OS_APPLICATION_CREDENTIAL_SECRET": "not-the-secret"}, "server", "list",
                ok=False)
    assert wrong.returncode != 0 and "Invalid application credential" in wrong.stderr


def test_cli_negative_cases_exit_non_zero_with_the_message(cloud: Cloud) -> None:
    wrong = osc(cloud.env(OS_PASSWORD="wrong-password"), "token", "issue", ok=False)
    assert wrong.returncode != 0 and "Wrong user name or password" in wrong.stderr
    missing = osc(cloud.env(), "server", "show", "no-such-server", ok=False)
    assert missing.returncode != 0 and "No Server found for no-such-server" in missing.stderr
    image = osc(cloud.env(), "image", "show", "no-such-image", ok=False)
    assert image.returncode != 0 and "no-such-image" in image.stderr
    create = osc(cloud.env(), "server", "create", "--flavor", "no-such-flavor", "--image",
                 "no-such-image", "vm", ok=False)
    assert create.returncode != 0 and "No Image found for no-such-image" in create.stderr


def test_cli_tenant_cannot_see_another_projects_server(cloud: Cloud) -> None:
    env = cloud.env()
    image_name = unique("img")
    osc(env, "image", "create", "--file", str(cloud.image_file), "--disk-format", "qcow2",
        "--container-format", "bare", image_name)
    name = unique("vm")
    server = osc_json(env, "server", "create", "--flavor", cloud.flavor, "--image", image_name,
                      "--availability-zone", cloud.zone, "--wait", name)
    _, other_project, _, other_user, other_password = _tenant(cloud.api)
    other = cloud.env(OS_USERNAME=other_user, OS_PASSWORD=other_password,
                      OS_PROJECT_NAME=other_project)
    for args in (("server", "show", server["id"]), ("image", "show", image_name),
                 ("server", "delete", server["id"])):
        seen = osc(other, *args, ok=False)
        assert seen.returncode != 0, args
    assert osc_json(other, "server", "list") == []
    osc(env, "server", "delete", "--wait", name)
    osc(env, "image", "delete", image_name)


SDK_SCRIPT = textwrap.dedent("""
    import json, sys
    import openstack

    cfg = json.loads(sys.argv[1])
    conn = openstack.connect(auth_url=cfg["auth_url"], username=cfg["user"],
                             password=cfg["password"], project_name=cfg["project"],
                             user_domain_name="Default", project_domain_name="Default",
                             region_name="RegionOne")
    out = {}
    # Proxy layer.
    image = conn.image.create_image(cfg["image_name"], filename=cfg["image_file"],
                                    disk_format="qcow2", container_format="bare",
                                    allow_duplicates=True)
    out["image_status"] = conn.image.get_image(image.id).status
    out["image_listed"] = image.id in [i.id for i in conn.image.images()]
    flavor = conn.compute.find_flavor(cfg["flavor"], ignore_missing=False)
    server = conn.compute.create_server(name=cfg["name"] + "-proxy", flavor_id=flavor.id,
                                        image_id=image.id,
                                        availability_zone=cfg["zone"])
    server = conn.compute.wait_for_server(server, wait=300)
    out["proxy_status"] = server.status
    conn.compute.stop_server(server)
    out["stopped"] = conn.compute.wait_for_server(server, status="SHUTOFF", wait=300).status
    conn.compute.start_server(server)
    out["started"] = conn.compute.wait_for_server(server, status="ACTIVE", wait=300).status
    out["proxy_listed"] = server.id in [s.id for s in conn.compute.servers()]
    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, wait=300)
    out["proxy_gone"] = conn.compute.find_server(server.id) is None
    # Cloud layer, as Ansible's openstack.cloud modules call it.
    made = conn.create_server(cfg["name"] + "-cloud", image=cfg["image_name"],
                              flavor=cfg["flavor"], availability_zone=cfg["zone"],
                              wait=True, timeout=300)
    out["cloud_status"] = made.status
    out["cloud_listed"] = made.id in [s.id for s in conn.list_servers()]
    out["cloud_deleted"] = conn.delete_server(made.id, wait=True, timeout=300)
    out["cloud_gone"] = conn.get_server(made.id) is None
    conn.image.delete_image(image)
    out["image_gone"] = conn.image.find_image(image.id) is None
    print(json.dumps(out))
""")


def test_openstacksdk_proxy_and_cloud_layers(cloud: Cloud) -> None:
    cfg = {"auth_url": cloud.api + "/identity", "user": cloud.user,
           "password": cloud.password, "project": cloud.project, "flavor": cloud.flavor,
           "zone": cloud.zone, "image_file": str(cloud.image_file),
           "image_name": unique("sdkimg"), "name": unique("sdkvm")}
    done = subprocess.run([str(OSC_PYTHON), "-c", SDK_SCRIPT, json.dumps(cfg)],
                          capture_output=True, text=True, timeout=900, check=False,
                          env={k: v for k, v in os.environ.items() if not k.startswith("OS_")})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "image_status": "active", "image_listed": True, "proxy_status": "ACTIVE",
        "stopped": "SHUTOFF", "started": "ACTIVE", "proxy_listed": True,
        "proxy_gone": True, "cloud_status": "ACTIVE", "cloud_listed": True,
        "cloud_deleted": True, "cloud_gone": True, "image_gone": True}
