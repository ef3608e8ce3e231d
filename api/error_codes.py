"""Every ``code`` a problem document can carry: declared once, with its HTTP status and meaning.

A new code is one line here plus one row in docs/api.md's error table;
tests/api/test_error_codes.py checks that every code raised in ``api/`` is registered with the
status it is raised with, and that the table lists exactly these codes. A published code never
changes meaning.

``python -m api.error_codes`` prints the table for docs/api.md.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    """One problem type: ``status`` None means "the status of the HTTP error it stands for"."""

    code: str
    status: int | None
    meaning: str


REGISTRY: tuple[ErrorCode, ...] = (
    # 400: the request cannot be read
    ErrorCode("bad_request", 400, "The request is malformed."),
    ErrorCode("malformed_json", 400, "The body is not valid JSON."),
    ErrorCode("invalid_marker", 400, "The pagination marker is not an object of this listing."),
    # 401: who is asking is not established
    ErrorCode("unauthorized", 401, "Authentication is required."),
    ErrorCode("missing_token", 401, "No `Authorization: Bearer <token>` header."),
    ErrorCode("invalid_token", 401, "The token or application credential is unknown."),
    ErrorCode("token_expired", 401, "The token or application credential has expired."),
    ErrorCode("invalid_credentials", 401,
              "Wrong user name or password, or no role on that project."),
    ErrorCode("invalid_enrollment_token", 401,
              "The host enrollment token is unknown, used or expired."),
    ErrorCode("invalid_host_credential", 401,
              "Not the credential of an existing host (unknown, rotated or revoked)."),
    ErrorCode("project_scope_required", 401,
              "The token is not scoped to a project (OpenStack identity)."),
    # 403: known caller, not allowed
    ErrorCode("forbidden", 403, "The caller may not do this."),
    ErrorCode("admin_required", 403, "This needs the admin role."),
    ErrorCode("read_only_role", 403, "The reader role cannot change anything."),
    ErrorCode("image_not_owned", 403, "Only the owning project changes an image."),
    ErrorCode("app_credential_forbidden", 403,
              "An application credential may not create credentials or change the password."),
    ErrorCode("wrong_password", 403, "Password change: the current password is wrong."),
    # 404: absent, or another project's (never disclosed)
    ErrorCode("not_found", 404, "No such path or object."),
    ErrorCode("server_not_found", 404, "No such server, or it belongs to another project."),
    ErrorCode("project_not_found", 404, "No such project, or not the caller's."),
    ErrorCode("user_not_found", 404, "No such user."),
    ErrorCode("keypair_not_found", 404, "No such key pair of the caller."),
    ErrorCode("token_not_found", 404,
              "The token to validate is unknown or expired (OpenStack identity)."),
    ErrorCode("role_not_found", 404, "The user has no role on that project."),
    ErrorCode("credential_not_found", 404, "No such application credential of the caller."),
    ErrorCode("flavor_not_found", 404, "No such flavor visible to the project."),
    ErrorCode("access_not_found", 404, "The flavor is not shared with that project."),
    ErrorCode("image_not_found", 404, "No such image visible to the project."),
    ErrorCode("server_group_not_found", 404, "No such server group of the project."),
    ErrorCode("host_not_found", 404, "No such host."),
    ErrorCode("evacuation_not_found", 404, "The host was never evacuated."),
    ErrorCode("rate_card_not_found", 404, "No such rate card."),
    ErrorCode("ledger_entry_not_found", 404, "No ledger entry under that key."),
    ErrorCode("period_open", 404, "The billing period is not closed, so it has no report."),
    # 405, 413, 415: the HTTP layer
    ErrorCode("method_not_allowed", 405, "The path does not accept this method."),
    ErrorCode("payload_too_large", 413, "The body is larger than allowed."),
    ErrorCode("image_too_large", 413,
              "The image is larger than `MINICLOUD_MAX_IMAGE_BYTES`."),
    ErrorCode("unsupported_media_type", 415, "The body's Content-Type is not accepted."),
    # 409: a valid request at the wrong moment
    ErrorCode("conflict", 409,
              "A concurrent request changed the same object; retry."),
    ErrorCode("quota_exceeded", 409,
              "The project's quota does not allow it (`resource`, `requested`, `used`, `limit`)."),
    ErrorCode("no_valid_host", 409, "No host can take the server (reasons per filter)."),
    ErrorCode("placement_busy", 409, "Too many concurrent placements; retry."),
    ErrorCode("invalid_state", 409,
              "The server's state does not accept the action (`server_status`, `task_state`)."),
    ErrorCode("state_changed", 409, "The server changed while the request ran; retry."),
    ErrorCode("host_up", 409,
              "The host is up: delete without force and its agent removes the server."),
    ErrorCode("host_not_empty", 409, "The host still has servers."),
    ErrorCode("host_not_down", 409,
              "The host still heartbeats: only a down host can be evacuated."),
    ErrorCode("fencing_required", 409,
              "Agent only: servers of this host were evacuated; fence them first "
              "(`server_ids`, `GET /v1/agent/fencing`)."),
    ErrorCode("inventory_missing", 409, "The host's agent has not reported that resource yet."),
    ErrorCode("image_not_active", 409, "The image has no bytes yet."),
    ErrorCode("image_not_queued", 409,
              "The image has bytes already, or an upload is running."),
    ErrorCode("image_deleted", 409, "The image was deleted during the upload."),
    ErrorCode("image_in_use", 409, "Servers or other images use the image."),
    ErrorCode("image_name_ambiguous", 409,
              "Several visible images have that name (`ids`); use an id."),
    ErrorCode("image_data_missing", 409, "The image's bytes are missing from the store."),
    ErrorCode("flavor_exists", 409, "A flavor has that name."),
    ErrorCode("flavor_in_use", 409, "Live servers use the flavor."),
    ErrorCode("flavor_is_public", 409, "A public flavor needs no sharing."),
    ErrorCode("project_exists", 409, "A project has that name."),
    ErrorCode("project_in_use", 409, "The caller is logged into that project."),
    ErrorCode("project_not_empty", 409, "The project still has servers."),
    ErrorCode("user_exists", 409, "A user has that name."),
    ErrorCode("user_in_use", 409, "Users cannot delete or disable themselves."),
    ErrorCode("host_exists", 409,
              "A host of that name is enrolled (the enrollment token is not used up)."),
    ErrorCode("keypair_exists", 409, "The caller has a key pair with that name."),
    ErrorCode("credential_exists", 409,
              "The caller has an application credential with that name."),
    ErrorCode("not_a_token", 409,
              "Logout revokes tokens; delete an application credential by id."),
    ErrorCode("already_bootstrapped", 409, "The admin user exists already."),
    ErrorCode("server_group_in_use", 409, "The server group still has servers (`members`)."),
    ErrorCode("resize_same_flavor", 409, "The server has that flavor already."),
    ErrorCode("resize_disk_shrink", 409, "The new flavor's disk is smaller: disks never shrink."),
    ErrorCode("rate_card_exists", 409, "A rate card starts at that time."),
    ErrorCode("rate_card_in_force", 409,
              "The rate card is (or was) in force; add a new card instead."),
    ErrorCode("currency_mismatch", 409, "Every rate card uses the same currency."),
    ErrorCode("period_closed", 409, "The billing period is closed."),
    ErrorCode("period_not_ended", 409, "The month has not ended yet."),
    # 422: a field is wrong
    ErrorCode("invalid_input", 422, "A field is invalid; `errors` lists each one."),
    ErrorCode("flavor_too_small", 422, "The flavor is smaller than the image needs."),
    ErrorCode("naive_datetime", 422, "A time without a time zone."),
    ErrorCode("expiry_in_past", 422, "`expires_at` is in the past."),
    ErrorCode("invalid_image_reference", 422,
              "A kernel or ramdisk property that is not an active, visible image of that kind."),
    ErrorCode("image_format_mismatch", 422, "The uploaded bytes do not match `disk_format`."),
    ErrorCode("image_empty", 422, "The upload is empty."),
    # 507: the server's storage
    ErrorCode("insufficient_storage", 507,
              "The image store is out of space; nothing was kept (the image stays queued)."),
    ErrorCode("invalid_reserved", 422, "A reserved amount exceeds the host's total."),
    ErrorCode("invalid_ledger_entry", 422, "A ledger entry is incomplete or inconsistent."),
    ErrorCode("invalid_rate_card", 422,
              "A rate card's currency, prices or start time are invalid."),
    ErrorCode("valid_from_in_past", 422, "A new rate card cannot start in the past."),
    ErrorCode("key_name_with_key_data", 422, "Give `key_name` or `key_data`, not both."),
    ErrorCode("unknown_flavor", 422, "A rate card prices a flavor that does not exist."),
    ErrorCode("invalid_window", 422, "The report window is empty or longer than 367 days."),
    ErrorCode("invalid_period", 422, "The period is not `YYYY-MM`."),
    ErrorCode("weak_bootstrap_token", 422,
              "The bootstrap credential needs at least 24 characters."),
    ErrorCode("unknown_metric", 422, "No guest metric has that name (`names` lists them)."),
    ErrorCode("invalid_metric_range", 422,
              "A metrics range needs start before end, a positive step and at most 1000 "
              "steps."),
    # 429: too many requests for now (``Retry-After`` says when to retry)
    ErrorCode("too_many_requests", 429, "Too many requests; retry after `Retry-After` seconds."),
    ErrorCode("login_throttled", 429,
              "Too many failed logins for that user or address; retry after `Retry-After`."),
    # 5xx: the server's side
    ErrorCode("internal_error", 500, "A bug: report it with the `request_id`."),
    ErrorCode("image_store_full", 503,
              "The image store is out of space (`/readyz`); uploads fail until space is freed."),
    ErrorCode("database_unavailable", 503,
              "The database does not answer (`/readyz`); retry after `Retry-After` seconds."),
    ErrorCode("database_busy", 503,
              "No database connection came free within the pool timeout, or a lock within "
              "the lock timeout; retry after `Retry-After` seconds."),
    ErrorCode("agent_busy", 503,
              "Too many agent enrollments, inventories or heartbeats at once; retry after "
              "`Retry-After` seconds."),
    # scaling groups (docs/scaling.md)
    ErrorCode("scaling_group_not_found", 404,
              "No such scaling group, or it belongs to another project."),
    ErrorCode("scaling_member_not_found", 404, "The server is not a live member of the group."),
    ErrorCode("scaling_group_name_in_use", 409, "The project already has a group of that name."),
    ErrorCode("scaling_group_deleting", 409, "The scaling group is being deleted."),
    ErrorCode("scaling_group_changed", 409,
              "The scaling group changed while the request ran (e.g. its reconciler); retry."),
    ErrorCode("scaling_size_invalid", 422, "Sizes break `min_size <= desired <= max_size`."),
    ErrorCode("http_error", None, "Any other HTTP error, with its own status."),
    # migration (api.mobility)
    ErrorCode("migration_same_host", 409, "The named destination is the server's own host."),
    ErrorCode("migration_not_found", 404,
              "No migration step of that server for this host (agent file relay)."),
    ErrorCode("migration_file_checksum", 400,
              "A migration file's bytes do not match the sha256 its sender announced."),
    ErrorCode("migration_endpoint_missing", 409,
              "A live migration needs a destination whose agent registered a migration "
              "endpoint; the named host (or every candidate) has none."),
    ErrorCode("migration_not_abortable", 409,
              "The server has no live migration in flight that can still be aborted."),
)

ERROR_CODES: dict[str, ErrorCode] = {e.code: e for e in REGISTRY}
"""The registry by code."""


def status_of(code: str) -> int:
    """The HTTP status a registered code is answered with; raises KeyError for an unknown
    code or one without a fixed status."""
    status = ERROR_CODES[code].status
    if status is None:
        raise KeyError(code)
    return status


def markdown_table() -> str:
    """The error table of docs/api.md, by status then code."""
    rows = sorted(REGISTRY, key=lambda e: (e.status or 999, e.code))
    lines = ["| status | code | meaning |", "|-------:|------|---------|"]
    lines += [f"| {e.status or 'any'} | `{e.code}` | {e.meaning} |" for e in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
