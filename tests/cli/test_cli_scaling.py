"""The CLI on scaling groups: create, list, show, set (with --wait), protect, activities,
delete, against a live API process. The reconciler's passes are run by the test (as in
tests/api/test_scaling_groups.py) and the pool host's agent reports the members running."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.agent_factories import observe
from tests.api.test_scaling_groups import run
from tests.cli.conftest import Mc, assert_readable_error, parse
from tests.cli.test_cli_resources import active_image, member
from tests.factories import unique

pytestmark = pytest.mark.usefixtures("pool")


def test_group_create_show_set_wait_protect_activities_delete(
    mc: Mc, http: httpx.Client, client: TestClient, pool: dict[str, str], tmp_path: Path
) -> None:
    account = member(http)
    image = active_image(mc, account.token, tmp_path)
    name = unique("web")
    created = parse(mc("--json", "group", "create", name, "--flavor", "tiny", "--image",
                       image["name"], "--max", "3", "--desired", "1", "--target-cpu", "50",
                       "--schedule", "night|0 20 * * *|min=0,desired=1",
                       token=account.token))
    assert (created["desired"], created["max_size"], created["policy"]["target"]) == (1, 3, 50)
    assert created["scheduled_actions"] == [
        {"name": "night", "cron": "0 20 * * *", "min_size": 0, "max_size": None,
         "desired": 1}]
    listed = parse(mc("--json", "group", "list", token=account.token))
    assert [g["name"] for g in listed] == [name]

    # `set --desired 2 --wait` follows the group until both members run: meanwhile the
    # reconciler launches and the agent reports each member running.
    stop = threading.Event()

    def fleet() -> None:
        while not stop.is_set():
            run(client)
            group = http.get(f"/v1/scaling-groups/{created['id']}",
                             headers=account.headers).json()
            for m in group["members"]:
                if m["status"] == "BUILD":
                    observe(client, pool, m["server_id"], "running")
            stop.wait(0.2)

    worker = threading.Thread(target=fleet, daemon=True)
    worker.start()
    try:
        result = mc("--json", "group", "set", name, "--desired", "2", "--no-policy", "--wait",
                    "--timeout", "120", token=account.token)
    finally:
        stop.set()
        worker.join(timeout=30)
    settled = parse(result)
    assert settled["desired"] == 2 and settled["policy"] is None
    assert sorted(m["status"] for m in settled["members"]) == ["ACTIVE", "ACTIVE"]

    shown = mc("group", "show", name, token=account.token)
    assert shown.exit_code == 0 and f"{name}-1" in shown.stdout and f"{name}-2" in shown.stdout
    protected = mc("group", "protect", name, f"{name}-1", token=account.token)
    assert protected.exit_code == 0 and "is protected" in protected.stdout
    assert parse(mc("--json", "group", "show", name, token=account.token))["members"][0][
        "protected"] is True

    activities = parse(mc("--json", "group", "activities", name, token=account.token))
    assert {"set", "launch"} <= {a["kind"] for a in activities}
    assert "launch" in mc("group", "activities", name, token=account.token).stdout

    deleted = mc("group", "delete", name, token=account.token)
    assert deleted.exit_code == 0 and "Deleting scaling group" in deleted.stdout
    servers = http.get("/v1/servers", headers=account.headers).json()["servers"]
    assert {s["status"] for s in servers} == {"DELETING"}
    for s in servers:  # the agent confirms; the next pass removes the group
        observe(client, pool, s["id"], "absent")
    run(client)
    assert http.get(f"/v1/scaling-groups/{created['id']}",
                    headers=account.headers).status_code == 404


def test_group_errors_are_readable(mc: Mc, http: httpx.Client, tmp_path: Path) -> None:
    account = member(http)
    assert_readable_error(mc("group", "show", "nope", token=account.token),
                          "scaling_group_not_found")
    image = active_image(mc, account.token, tmp_path)
    bad = mc("group", "create", "web", "--flavor", "tiny", "--image", image["id"], "--max",
             "1", "--desired", "2", token=account.token)
    assert_readable_error(bad, "scaling_size_invalid")
    usage = mc("group", "create", "web", "--flavor", "tiny", "--image", image["id"], "--max",
               "1", "--schedule", "no-cron-here", token=account.token)
    assert_readable_error(usage, "usage")
