"""The CLI on the compute resources: flavors, images, servers, server groups, quotas, hosts,
usage. These run against the API contract in CONTEXT.md; their endpoints are built on other
branches, so on the ``cli`` branch alone they fail until those branches are merged."""

from __future__ import annotations

import csv
import hashlib
import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.agent_factories import observe
from tests.cli.conftest import Mc, assert_readable_error, parse
from tests.conftest import ADMIN_TOKEN
from tests.factories import Account, bearer, make_account, unique

# Servers created through the API need a host to be placed on.
pytestmark = pytest.mark.usefixtures("pool")


def member(http: httpx.Client) -> Account:
    """A member of a fresh project (its own quota, its own servers)."""
    return make_account(http, bearer(ADMIN_TOKEN), "member")


def raw_file(tmp_path: Path, size: int = 3 * 1024 * 1024 + 17) -> Path:
    """A raw disk image of ``size`` random bytes (not a multiple of the upload chunk)."""
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(size))
    return path


def active_image(mc: Mc, token: str, tmp_path: Path) -> dict[str, str]:
    """An uploaded raw image of the caller's project."""
    return dict(parse(mc("--json", "image", "create", unique("img"), "--file",
                         str(raw_file(tmp_path)), token=token)))


def test_flavor_list_show_create_delete(mc: Mc) -> None:
    name = unique("flv")

    default = {f["name"] for f in parse(mc("--json", "flavor", "list"))}
    created = parse(mc("--json", "flavor", "create", name, "--vcpus", "2", "--ram-mb", "1024",
                       "--disk-gb", "5", "--spec", "aggregate:ssd=true"))
    shown = parse(mc("--json", "flavor", "show", name))

    assert {"tiny", "small", "medium", "large"} <= default
    assert shown == created
    assert (created["vcpus"], created["ram_mb"], created["disk_gb"]) == (2, 1024, 5)
    assert created["extra_specs"] == {"aggregate:ssd": "true"}
    assert mc("flavor", "delete", name).exit_code == 0
    assert name not in {f["name"] for f in parse(mc("--json", "flavor", "list"))}


def test_flavor_create_is_admin_only(mc: Mc, http: httpx.Client) -> None:
    result = mc("flavor", "create", unique("flv"), "--vcpus", "1", "--ram-mb", "64",
                "--disk-gb", "1", token=member(http).token)

    assert_readable_error(result, "admin_required")


def test_image_create_with_file_uploads_and_download_gives_the_same_bytes(
        mc: Mc, http: httpx.Client, tmp_path: Path) -> None:
    account = member(http)
    source = raw_file(tmp_path)
    name = unique("img")

    image = parse(mc("--json", "image", "create", name, "--file", str(source),
                     token=account.token))
    target = tmp_path / "copy.raw"
    downloaded = mc("image", "download", name, str(target), token=account.token)

    assert image["status"] == "active" and image["disk_format"] == "raw"
    assert image["size"] == source.stat().st_size
    assert image["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert downloaded.exit_code == 0, downloaded.output
    assert target.read_bytes() == source.read_bytes()
    assert name in {i["name"] for i in parse(mc("--json", "image", "list", token=account.token))}
    assert mc("image", "delete", name, token=account.token).exit_code == 0
    assert_readable_error(mc("image", "show", name, token=account.token), "not_found")


def test_image_create_then_upload_in_two_steps(mc: Mc, http: httpx.Client,
                                               tmp_path: Path) -> None:
    account = member(http)
    source = raw_file(tmp_path, 1024 * 1024)

    queued = parse(mc("--json", "image", "create", unique("img"), "--disk-format", "raw",
                      token=account.token))
    active = parse(mc("--json", "image", "upload", queued["id"], str(source),
                      token=account.token))

    assert queued["status"] == "queued"
    assert active["id"] == queued["id"] and active["status"] == "active"
    assert active["size"] == 1024 * 1024


def test_image_of_another_project_is_not_found(mc: Mc, http: httpx.Client,
                                               tmp_path: Path) -> None:
    owner, other = member(http), member(http)
    image = active_image(mc, owner.token, tmp_path)

    assert_readable_error(mc("image", "show", image["id"], token=other.token), "HTTP 404")


def test_server_create_list_show_events_delete_by_name(mc: Mc, http: httpx.Client,
                                                       tmp_path: Path) -> None:
    account = member(http)
    image = active_image(mc, account.token, tmp_path)
    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests user@host\n")
    user_data = tmp_path / "user-data"
    user_data.write_text("#cloud-config\nhostname: web\n")
    name = unique("web")

    server = parse(mc("--json", "server", "create", name, "--flavor", "tiny", "--image",
                      image["name"], "--key", str(key), "--user-data", str(user_data),
                      token=account.token))
    listed = parse(mc("--json", "server", "list", token=account.token))
    shown = parse(mc("--json", "server", "show", name, token=account.token))
    events = parse(mc("--json", "server", "events", name, token=account.token))

    assert server["status"] == "BUILD" and server["name"] == name
    assert server["flavor"]["name"] == "tiny" and server["image"]["id"] == image["id"]
    assert [s["id"] for s in listed] == [server["id"]]
    assert shown["id"] == server["id"]
    assert events and events[0]["action"]
    assert name in mc("server", "list", token=account.token).stdout

    deleted = mc("--json", "server", "delete", name, token=account.token)
    assert deleted.exit_code == 0, deleted.output


def test_two_servers_with_one_name_are_ambiguous(mc: Mc, http: httpx.Client,
                                                 tmp_path: Path) -> None:
    account = member(http)
    image = active_image(mc, account.token, tmp_path)
    name = unique("twin")
    for _ in range(2):
        parse(mc("--json", "server", "create", name, "--flavor", "tiny", "--image",
                 image["id"], token=account.token))

    assert_readable_error(mc("server", "show", name, token=account.token), "ambiguous_name")
    assert_readable_error(mc("server", "show", unique("nope"), token=account.token),
                          "server_not_found")


def test_server_create_with_unknown_flavor_fails_readably(mc: Mc, http: httpx.Client,
                                                         tmp_path: Path) -> None:
    account = member(http)
    image = active_image(mc, account.token, tmp_path)

    result = mc("server", "create", unique("web"), "--flavor", "no-such-flavor", "--image",
                image["id"], token=account.token)

    assert_readable_error(result, "flavor_not_found")


def test_server_action_invalid_in_build_answers_409(mc: Mc, http: httpx.Client,
                                                    tmp_path: Path) -> None:
    account = member(http)
    image = active_image(mc, account.token, tmp_path)
    server = parse(mc("--json", "server", "create", unique("web"), "--flavor", "tiny",
                      "--image", image["id"], token=account.token))

    result = mc("server", "start", server["id"], token=account.token)

    assert_readable_error(result, "HTTP 409")


def test_server_pause_and_unpause(mc: Mc, http: httpx.Client, pool: dict[str, str],
                                  tmp_path: Path) -> None:
    account = member(http)
    image = active_image(mc, account.token, tmp_path)
    name = unique("web")
    server = parse(mc("--json", "server", "create", name, "--flavor", "tiny", "--image",
                      image["id"], token=account.token))
    observe(http, pool, server["id"], "running")  # what the pool host's agent would report

    paused = parse(mc("--json", "server", "pause", name, token=account.token))
    assert (paused["status"], paused["task_state"]) == ("ACTIVE", "pausing")
    assert_readable_error(mc("server", "pause", name, token=account.token), "HTTP 409")
    observe(http, pool, server["id"], "paused")
    assert parse(mc("--json", "server", "show", name, token=account.token))["status"] == (
        "PAUSED")
    resumed = parse(mc("--json", "server", "unpause", name, token=account.token))
    assert (resumed["status"], resumed["task_state"]) == ("PAUSED", "unpausing")


def _report_when(http: httpx.Client, pool: dict[str, str], server_id: str, headers: dict[str, str],
                 task_state: str, observed: str) -> threading.Thread:
    """Play the pool host's agent: once the server waits in ``task_state``, report
    ``observed`` (bounded: gives up after 60 s, and the waiting CLI then fails)."""
    def agent() -> None:
        with httpx.Client(base_url=str(http.base_url), timeout=30) as own:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if own.get(f"/v1/servers/{server_id}", headers=headers).json().get(
                        "task_state") == task_state:
                    observe(own, pool, server_id, observed)
                    return
                time.sleep(0.1)
    thread = threading.Thread(target=agent, daemon=True)
    thread.start()
    return thread


def test_server_pause_and_unpause_wait_until_the_agent_confirms(
        mc: Mc, http: httpx.Client, pool: dict[str, str], tmp_path: Path) -> None:
    account = member(http)
    image = active_image(mc, account.token, tmp_path)
    name = unique("web")
    server = parse(mc("--json", "server", "create", name, "--flavor", "tiny", "--image",
                      image["id"], token=account.token))
    observe(http, pool, server["id"], "running")
    headers = bearer(account.token)

    agent = _report_when(http, pool, server["id"], headers, "pausing", "paused")
    paused = parse(mc("--json", "server", "pause", name, "--wait", "--timeout", "60",
                      token=account.token))
    agent.join()
    assert (paused["status"], paused["task_state"]) == ("PAUSED", None)

    agent = _report_when(http, pool, server["id"], headers, "unpausing", "running")
    resumed = parse(mc("--json", "server", "unpause", name, "--wait", "--timeout", "60",
                       token=account.token))
    agent.join()
    assert (resumed["status"], resumed["task_state"]) == ("ACTIVE", None)


def test_server_group_create_list_use_delete(mc: Mc, http: httpx.Client,
                                             tmp_path: Path) -> None:
    account = member(http)
    image = active_image(mc, account.token, tmp_path)
    name = unique("grp")

    group = parse(mc("--json", "server-group", "create", name, "--policy", "anti-affinity",
                     token=account.token))
    server = parse(mc("--json", "server", "create", unique("web"), "--flavor", "tiny",
                      "--image", image["id"], "--group", name, token=account.token))
    listed = parse(mc("--json", "server-group", "list", token=account.token))

    assert group["policy"] == "anti-affinity"
    assert server["server_group_id"] == group["id"]
    assert [g["name"] for g in listed] == [name]


def test_quota_show_and_set(mc: Mc, http: httpx.Client, tmp_path: Path) -> None:
    account = member(http)
    image = active_image(mc, account.token, tmp_path)
    parse(mc("--json", "server", "create", unique("web"), "--flavor", "tiny", "--image",
             image["id"], token=account.token))

    updated = parse(mc("--json", "quota", "set", account.project_name, "--instances", "3",
                       "--images", "7", "--image-bytes", str(10 * 1024**3)))
    mine = parse(mc("--json", "quota", "show", token=account.token))
    table = mc("quota", "show", account.project_id)

    assert updated["limits"]["instances"] == 3
    assert mine["project_id"] == account.project_id
    assert mine["limits"]["instances"] == 3
    # tiny: 1 vCPU, 512 MiB, 1 GiB
    assert (mine["limits"]["images"], mine["limits"]["image_bytes"]) == (7, 10 * 1024**3)
    assert mine["usage"] == {"instances": 1, "vcpus": 1, "ram_mb": 512, "disk_gb": 1,
                             "images": 1, "image_bytes": image["size"]}
    assert table.exit_code == 0 and "instances" in table.stdout
    assert "image_bytes" in table.stdout


def test_quota_set_is_admin_only(mc: Mc, http: httpx.Client) -> None:
    account = member(http)

    result = mc("quota", "set", account.project_id, "--instances", "100", token=account.token)

    assert_readable_error(result, "admin_required")


def test_host_list_and_enroll_token(mc: Mc, http: httpx.Client) -> None:
    hosts = parse(mc("--json", "host", "list"))
    token = mc("host", "enroll-token")

    assert isinstance(hosts, list)
    assert token.exit_code == 0, token.output
    assert token.stdout.strip() and len(token.stdout.strip().splitlines()) == 1
    assert_readable_error(mc("host", "list", token=member(http).token), "admin_required")


def test_usage_report_json_and_csv(mc: Mc, http: httpx.Client, tmp_path: Path) -> None:
    account = member(http)
    out = tmp_path / "usage.csv"

    report = parse(mc("--json", "usage", "report", "--month", "2026-11", token=account.token))
    written = mc("usage", "report", "--month", "2026-11", "--csv", str(out),
                 token=account.token)

    assert report["start"] == "2026-11-01T00:00:00Z" and report["end"] == "2026-12-01T00:00:00Z"
    assert written.exit_code == 0, written.output
    with out.open() as f:
        assert next(csv.reader(f))  # a header row
    assert_readable_error(mc("usage", "report", "--month", "2026-13"), "usage")
