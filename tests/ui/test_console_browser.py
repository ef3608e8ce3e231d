"""The web console in a real headless Chromium against a real API process and simulated hosts.

What a user sees: log in, create a server through the form (after asking the scheduler),
watch it turn ACTIVE without reloading, read its console, stop it, delete it, find it in the
usage page; as an operator: capacity bars that move after a create, disabling a host, an
enrollment token with the install command. Hostile names render as text; members reach no
operator page and no other project's server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import insert

from api.db import make_engine, new_id, utcnow
from api.models import Server
from compute_agent.simulate import SimulatedHost
from tests.e2e.stack import ADMIN, wait_status, wait_until
from tests.factories import IMAGE_BYTES, unique
from tests.ui.conftest import HTTP, SCREENSHOTS, Login, make_login

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

WAIT = 120  # a bound on a hang, not a timing assertion


def wait(browser: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    """Wait for ``condition`` (rows swapped by htmx may go stale under it: retried)."""
    try:
        return WebDriverWait(browser, WAIT, poll_frequency=0.2,
                             ignored_exceptions=(StaleElementReferenceException,
                                                 NoSuchElementException)).until(condition)
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what} on {browser.current_url}: "
                             f"{browser.find_element(By.TAG_NAME, 'body').text[:2000]}") from None


def text_of(browser: WebDriver, css: str) -> str:
    return str(browser.find_element(By.CSS_SELECTOR, css).text)


def login(browser: WebDriver, api: str, who: Login) -> None:
    browser.delete_all_cookies()
    browser.get(f"{api}/ui/login")
    browser.find_element(By.ID, "user").send_keys(who.user)
    browser.find_element(By.ID, "password").send_keys(who.password)
    browser.find_element(By.ID, "project").send_keys(who.project)
    browser.find_element(By.ID, "login").click()
    wait(browser, lambda b: b.find_elements(By.ID, "who"), "logged in")


def shot(browser: WebDriver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def public_catalog(api: str) -> tuple[dict[str, Any], dict[str, Any]]:
    r = HTTP.post(f"{api}/v1/flavors", headers=ADMIN, json={
        "name": unique("ui-small"), "vcpus": 1, "ram_mb": 512, "disk_gb": 1})
    assert r.status_code == 201, r.text
    flavor = r.json()
    r = HTTP.post(f"{api}/v1/images", headers=ADMIN, json={
        "name": unique("ui-img"), "disk_format": "raw", "visibility": "public"})
    assert r.status_code == 201, r.text
    image = r.json()
    r = HTTP.put(f"{api}/v1/images/{image['id']}/file", headers=ADMIN,
                  content=IMAGE_BYTES["raw"])
    assert r.status_code == 200, r.text
    return flavor, r.json()


def console_log(fleet: list[SimulatedHost], server_id: str) -> Path:
    """Where the server's serial console log is on the simulated host that runs it."""
    for host in fleet:
        for path in Path(host.agent.settings.instances_dir).glob(f"{server_id}/*"):
            if path.name.startswith("console"):
                return path
    raise AssertionError(f"no console log path for {server_id}")


def host_row(browser: WebDriver, name: str) -> Any:
    return browser.find_element(By.CSS_SELECTOR, f'tr[data-host-name="{name}"]')


def allocated_vcpus(browser: WebDriver, name: str) -> int:
    cell = host_row(browser, name).find_element(By.CSS_SELECTOR, 'div[data-rc="VCPU"]')
    return int(cell.get_attribute("data-allocated"))


def test_tenant_and_operator_flows(browser: WebDriver, api: str,
                                   fleet: list[SimulatedHost]) -> None:
    flavor, image = public_catalog(api)
    tenant = make_login(api)
    operator = make_login(api, role="admin")
    zone = fleet[0].agent.settings.availability_zone

    # The operator sees every host's capacity before the create.
    login(browser, api, operator)
    browser.get(f"{api}/ui/admin/hosts")
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR,
                                            f'tr[data-host-name="{fleet[0].name}"]'), "hosts")
    before = {h.name: allocated_vcpus(browser, h.name) for h in fleet}

    # The tenant creates a server through the form, asking the scheduler first.
    login(browser, api, tenant)
    browser.find_element(By.ID, "new-server").click()
    name = unique("web")
    browser.find_element(By.ID, "name").send_keys(name)
    Select(browser.find_element(By.ID, "flavor")).select_by_value(flavor["id"])
    Select(browser.find_element(By.ID, "image")).select_by_value(image["id"])
    Select(browser.find_element(By.ID, "availability_zone")).select_by_value(zone)
    browser.find_element(By.ID, "check").click()
    result = wait(browser, lambda b: b.find_elements(By.ID, "simulate-result"), "simulate")
    assert result[0].text.startswith("Fits"), result[0].text
    shot(browser, "create-server")
    browser.find_element(By.ID, "create").click()
    wait(browser, ec.presence_of_element_located((By.ID, "server-status")), "detail page")
    server_id = browser.current_url.rstrip("/").rsplit("/", 1)[1]
    # A marker that a reload would erase: the status must change under it.
    browser.execute_script("window.__noReload = true;")
    wait(browser, lambda b: text_of(b, "#server-status") == "ACTIVE", "ACTIVE")
    assert browser.execute_script("return window.__noReload === true;")

    # The guest "prints" on its serial console; the page follows it.
    log = console_log(fleet, server_id)
    log.write_text(f"minicloud-guest: hostname={name}\n")
    wait(browser, lambda b: f"hostname={name}" in text_of(b, "#console"), "console line")
    assert browser.execute_script("return window.__noReload === true;")

    # Its metrics graph draws the API's series once the agent has reported samples.
    wait_until(lambda: HTTP.get(f"{api}/v1/servers/{server_id}/metrics",
                                 params={"name": "cpu_util", "step": 60},
                                 headers=tenant.headers).json()["points"], WAIT, "samples")
    browser.refresh()
    wait(browser, lambda b: int(b.find_element(By.ID, "metric-cpu_util")
                                .get_attribute("data-points") or 0) > 0, "cpu graph")
    assert browser.execute_script(
        "return window.Chart.getChart('metric-cpu_util').data.datasets[0].data.length") > 0
    shot(browser, "server-detail")

    # The operator's capacity bars moved on the host that runs it.
    placed = HTTP.get(f"{api}/v1/servers/{server_id}", headers=ADMIN).json()["host"]
    login(browser, api, operator)
    browser.get(f"{api}/ui/admin/hosts")
    wait(browser, lambda b: allocated_vcpus(b, placed) == before[placed] + 1, "bar moved")
    shot(browser, "hosts")

    # ... disables the other host (confirming the dialog) and sees it disabled.
    other = next(h.name for h in fleet if h.name != placed)
    wait(browser, lambda b: host_row(b, other).find_element(
        By.CSS_SELECTOR, "button.host-toggle").click() or True, "toggle clicked")
    browser.switch_to.alert.accept()
    wait(browser, lambda b: host_row(b, other).find_element(
        By.CSS_SELECTOR, "td[data-enabled]").get_attribute("data-enabled") == "false",
        "host disabled")
    host_id = wait(browser, lambda b: host_row(b, other).get_attribute("data-host-id"),
                   "host id")
    assert HTTP.get(f"{api}/v1/hosts/{host_id}", headers=ADMIN).json()["enabled"] is False
    HTTP.patch(f"{api}/v1/hosts/{host_id}", headers=ADMIN, json={"enabled": True})

    # ... and creates an enrollment token with the command to paste on a new node.
    browser.find_element(By.ID, "enroll-token").click()
    command = wait(browser, lambda b: b.find_elements(By.ID, "enroll-command"), "command")
    token = text_of(browser, "#enroll-token-value")
    assert f"--token {token}" in command[0].text
    assert "deploy/install-compute.sh" in command[0].text

    # Back as the tenant: stop, then delete, each confirmed.
    login(browser, api, tenant)
    browser.get(f"{api}/ui/servers/{server_id}")
    browser.find_element(By.ID, "action-stop").click()
    browser.switch_to.alert.accept()
    wait(browser, lambda b: text_of(b, "#server-status") == "SHUTOFF", "SHUTOFF")
    wait_status(api, tenant.headers, server_id, "SHUTOFF")
    browser.find_element(By.ID, "action-delete").click()
    browser.switch_to.alert.accept()
    wait(browser, lambda b: b.current_url.endswith("/ui/servers"), "back to the list")
    wait_until(lambda: HTTP.get(f"{api}/v1/servers/{server_id}",
                                 headers=tenant.headers).status_code == 404, WAIT, "deleted")

    # The usage page counts it.
    browser.get(f"{api}/ui/usage")
    rows = wait(browser, lambda b: b.find_elements(
        By.CSS_SELECTOR, f'#usage-servers tr[data-server-id="{server_id}"]'), "usage row")
    assert server_id in rows[0].text
    vcpu_hours = float(rows[0].find_elements(By.TAG_NAME, "td")[2].text)
    assert vcpu_hours > 0
    assert float(text_of(browser, "#usage-vcpu-hours")) >= vcpu_hours
    shot(browser, "usage")

    # Logging out revokes the token.
    cookie = browser.get_cookie("mc_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    browser.find_element(By.ID, "logout").click()
    wait(browser, lambda b: "/ui/login" in b.current_url, "login page")
    r = HTTP.get(f"{api}/v1/auth/tokens/current",
                  headers={"Authorization": f"Bearer {cookie['value']}"})
    assert r.status_code == 401


HOSTILE = ['<script>window.__xss=1</script>', '"><img src=x onerror="window.__xss=1">',
           "[/]", "x" * 255, "\u202eevil\u202c-rtl-\u05e9\u05dc\u05d5\u05dd"]


def test_hostile_names_render_as_text(browser: WebDriver, api: str,
                                      fleet: list[SimulatedHost]) -> None:
    flavor, image = public_catalog(api)
    tenant = make_login(api)
    zone = fleet[0].agent.settings.availability_zone
    for hostile in HOSTILE:
        r = HTTP.post(f"{api}/v1/servers", headers=tenant.headers, json={
            "name": hostile, "flavor": flavor["id"], "image": image["id"],
            "availability_zone": zone})
        assert r.status_code == 202, r.text
    login(browser, api, tenant)
    browser.get(f"{api}/ui/servers")
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "a.server-name")) >= 5,
         "servers listed")
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "a.server-name")]
    for hostile in HOSTILE:
        assert hostile.strip() in [n.strip() for n in names] or any(
            hostile[:40] in n for n in names), hostile
    assert not browser.find_elements(By.CSS_SELECTOR, 'img[src="x"]')
    assert browser.execute_script("return window.__xss === undefined;")
    # The detail page of the <script> one shows its name as the title.
    link = next(e for e in browser.find_elements(By.CSS_SELECTOR, "a.server-name")
                if e.text == HOSTILE[0])
    link.click()
    wait(browser, lambda b: text_of(b, "#server-title") == HOSTILE[0], "title as text")
    assert browser.execute_script("return window.__xss === undefined;")


def test_members_reach_no_operator_page_and_no_other_project(
        browser: WebDriver, api: str, fleet: list[SimulatedHost]) -> None:
    flavor, image = public_catalog(api)
    owner = make_login(api)
    stranger = make_login(api)
    r = HTTP.post(f"{api}/v1/servers", headers=owner.headers, json={
        "name": unique("private"), "flavor": flavor["id"], "image": image["id"],
        "availability_zone": fleet[0].agent.settings.availability_zone})
    assert r.status_code == 202, r.text
    theirs = r.json()["id"]

    login(browser, api, stranger)
    assert not browser.find_elements(By.CSS_SELECTOR, 'a[href="/ui/admin/hosts"]')
    browser.get(f"{api}/ui/admin/hosts")
    assert text_of(browser, "#error-title") == "Forbidden"
    assert not browser.find_elements(By.ID, "hosts")
    browser.get(f"{api}/ui/servers/{theirs}")
    assert text_of(browser, "#error-title") == "Not found"
    assert theirs not in browser.page_source or "server-status" not in browser.page_source
    # The answers' status codes, as the browser got them.
    jar = {"mc_session": browser.get_cookie("mc_session")["value"]}
    assert HTTP.get(f"{api}/ui/admin/hosts", cookies=jar).status_code == 403
    assert HTTP.get(f"{api}/ui/servers/{theirs}", cookies=jar).status_code == 404
    # A forged form (no CSRF token) changes nothing.
    r = HTTP.post(f"{api}/ui/servers/{theirs}/action", cookies=jar,
                   data={"action": "delete"})
    assert r.status_code == 403
    assert HTTP.get(f"{api}/v1/servers/{theirs}", headers=owner.headers).status_code == 200


def test_servers_page_of_a_big_project_loads_one_page(
        browser: WebDriver, api: str, database_url: str, fleet: list[SimulatedHost]) -> None:
    """1,000 servers: the first page shows 25 and links to the next; only that page is asked
    of the API (rows inserted in one statement: the list is what is tested, not 1,000 builds)."""
    tenant = make_login(api)
    flavor, image = public_catalog(api)
    user_id = HTTP.get(f"{api}/v1/auth/tokens/current",
                        headers=tenant.headers).json()["user"]["id"]
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(insert(Server), [dict(
            id=new_id(), project_id=tenant.project_id, user_id=user_id, name=f"bulk-{n:04d}",
            flavor_id=flavor["id"], vcpus=1, ram_mb=512, disk_gb=1, image_id=image["id"],
            status="ACTIVE", addresses=[], generation=0, created_at=utcnow(),
            updated_at=utcnow()) for n in range(1000)])
    engine.dispose()
    login(browser, api, tenant)
    rows = browser.find_elements(By.CSS_SELECTOR, "#servers tbody tr[data-server-id]")
    assert len(rows) == 25
    first = {r.get_attribute("data-server-id") for r in rows}
    browser.find_element(By.ID, "next-page").click()
    wait(browser, lambda b: b.find_elements(By.ID, "first-page"), "second page")
    second = {r.get_attribute("data-server-id") for r in
              browser.find_elements(By.CSS_SELECTOR, "#servers tbody tr[data-server-id]")}
    assert len(second) == 25 and not first & second
    browser.get(f"{api}/ui/servers")
    shot(browser, "servers")


def test_image_upload_with_progress_and_credential_login(
        browser: WebDriver, api: str, tmp_path: Path) -> None:
    """An application credential logs in; an image uploads through the page with its progress
    bar, ends active in the list; the usage CSV downloads with the session."""
    tenant = make_login(api)
    r = HTTP.post(f"{api}/v1/application-credentials", headers=tenant.headers,
                   json={"name": unique("ui-cred")})
    assert r.status_code == 201, r.text
    secret = r.json()["secret"]
    browser.delete_all_cookies()
    browser.get(f"{api}/ui/login")
    browser.find_element(By.ID, "secret").send_keys(secret)
    browser.find_element(By.ID, "login-credential").click()
    wait(browser, lambda b: b.find_elements(By.ID, "who"), "logged in with the credential")
    assert tenant.user in text_of(browser, "#who")

    disk = tmp_path / "disk.raw"
    disk.write_bytes(IMAGE_BYTES["raw"] + b"\0" * (3 * 1024 * 1024))
    browser.get(f"{api}/ui/images")
    name = unique("uploaded")
    browser.find_element(By.ID, "image-name").send_keys(name)
    Select(browser.find_element(By.ID, "disk-format")).select_by_value("raw")
    browser.find_element(By.ID, "image-file").send_keys(str(disk))
    browser.find_element(By.ID, "upload").click()
    wait(browser, lambda b: any(e.text == name for e in
                                b.find_elements(By.CSS_SELECTOR, "td.image-name")),
         "the uploaded image listed")
    images = HTTP.get(f"{api}/v1/images", headers=tenant.headers).json()
    listed = images["images"] if isinstance(images, dict) else images
    mine = next(i for i in listed if i["name"] == name)
    assert mine["status"] == "active"
    # The CSV comes from the API with the browser's session (no token in the URL).
    jar = {"mc_session": browser.get_cookie("mc_session")["value"]}
    r = HTTP.get(f"{api}/ui/usage.csv", cookies=jar)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]


def test_scaling_group_page_follows_the_group(browser: WebDriver, api: str,
                                              fleet: list[SimulatedHost]) -> None:
    """A tenant's group grows to its desired size on the page without a reload; setting the
    desired size through the form shrinks it, and the activities say so."""
    flavor, image = public_catalog(api)
    tenant = make_login(api)
    r = HTTP.post(f"{api}/v1/scaling-groups", headers=tenant.headers, json={
        "name": unique("grp"), "min_size": 0, "max_size": 3, "desired": 2,
        "launch": {"flavor": flavor["id"], "image": image["id"],
                   "availability_zone": fleet[0].agent.settings.availability_zone}})
    assert r.status_code == 201, r.text
    group = r.json()
    login(browser, api, tenant)
    browser.get(f"{api}/ui/scaling-groups")
    browser.find_element(By.CSS_SELECTOR, f'tr[data-group-id="{group["id"]}"] a').click()
    wait(browser, ec.presence_of_element_located((By.ID, "group-size")), "group page")
    browser.execute_script("window.__noReload = true;")
    wait(browser, lambda b: text_of(b, "#group-size").startswith("2 member(s)"), "2 members")
    field = browser.find_element(By.ID, "desired")
    field.clear()
    field.send_keys("1")
    browser.find_element(By.ID, "set-desired").click()
    wait(browser, lambda b: "Desired size set to 1" in text_of(b, "#flash"), "flash")
    browser.execute_script("window.__noReload = true;")
    wait(browser, lambda b: text_of(b, "#group-size").startswith("1 member(s)"), "1 member")
    assert browser.execute_script("return window.__noReload === true;")
    assert "1" in text_of(browser, "#activities")
    # A size beyond max is refused with the API's explanation (the browser's own number
    # limits bypassed: the API decides).
    browser.execute_script("document.getElementById('desired').removeAttribute('max');")
    field = browser.find_element(By.ID, "desired")
    field.clear()
    field.send_keys("4")
    browser.find_element(By.ID, "set-desired").click()
    flash = wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#flash.error"), "refusal")
    assert "max" in flash[0].text.lower()
    r = HTTP.delete(f"{api}/v1/scaling-groups/{group['id']}", headers=tenant.headers)
    assert r.status_code == 202, r.text


def test_evacuate_and_drain_through_the_hosts_page(
        api: str, fleet: list[SimulatedHost]) -> None:
    """The hosts page offers Evacuate only for down hosts; a forged request for an up host
    gets the API's refusal on the page, and the host keeps its servers."""
    operator = make_login(api, role="admin")
    with httpx.Client(base_url=api, timeout=120) as web:
        page = web.get("/ui/login")
        csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        r = web.post("/ui/login", data={"csrf": csrf, "next": "/ui/admin/hosts",
                                        "user": operator.user, "password": operator.password,
                                        "project": operator.project, "method": "password"},
                     follow_redirects=True)
        assert r.status_code == 200 and 'id="hosts"' in r.text
        row = r.text.split(f'data-host-name="{fleet[0].name}"', 1)[1].split("</tr>", 1)[0]
        assert "host-evacuate" not in row  # it is up: no Evacuate button
        session_csrf = r.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        host_id = HTTP.get(f"{api}/v1/hosts", headers=ADMIN, params={"limit": 1000}).json()
        host_id = next(h["id"] for h in host_id if h["name"] == fleet[0].name)
        r = web.post(f"/ui/admin/hosts/{host_id}/evacuate", data={"csrf": session_csrf})
        assert r.status_code == 409
        assert 'class="flash error"' in r.text
        # Drain, then stop draining, through the page: the API's maintenance state follows.
        r = web.post(f"/ui/admin/hosts/{host_id}/drain", data={"csrf": session_csrf})
        assert r.status_code == 200 and "Draining:" in r.text, r.text[-2000:]
        shown = HTTP.get(f"{api}/v1/hosts/{host_id}", headers=ADMIN).json()
        assert shown["maintenance"] in ("draining", "drained")
        row = r.text.split(f'data-host-name="{fleet[0].name}"', 1)[1].split("</tr>", 1)[0]
        assert "data-maintenance" in row
        r = web.post(f"/ui/admin/hosts/{host_id}/drain",
                     data={"csrf": session_csrf, "cancel": "1"})
        assert r.status_code == 200 and "Drain cancelled" in r.text
        assert HTTP.get(f"{api}/v1/hosts/{host_id}",
                         headers=ADMIN).json()["maintenance"] is None
