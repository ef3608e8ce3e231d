"""Image v2 subset at /image: discovery, create, upload, download, list, show, delete and the
schemas, over ``api.images.service`` (and the /v1 upload path, whose three-step commit it
reuses as is)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import Principal, SessionDep, SettingsDep
from api.errors import InvalidInput, NotFound
from api.images import routes as image_routes
from api.images import service as images
from api.images.schemas import ImageCreate, ImageProperties
from api.images.store import ImageStore
from api.models import Image
from api.openstack.auth import BaseUrl, OsUser, OsWriter, os_id

router = APIRouter(prefix="/image", tags=["openstack image"], include_in_schema=False)

# Where the Glance-only data of an image lives in ``images.properties``: the extra properties
# a client set, and the MD5/SHA-512 of the bytes (minicloud itself keeps the SHA-256).
GLANCE_KEY = "glance"
# Glance's own fields a create may carry; anything else is an extra property.
_CORE = {"name", "disk_format", "container_format", "visibility", "min_disk", "min_ram",
         "protected", "tags", "os_hidden"}
# Glance properties with a minicloud meaning (``ImageProperties``).
_MAPPED = {"kernel_id": "kernel_id", "ramdisk_id": "ramdisk_id",
           "architecture": "architecture", "os_command_line": "kernel_cmdline"}
MAX_EXTRA = 128
DEFAULT_LIMIT = 25


def _version(base: str, ident: str, status: str) -> dict[str, Any]:
    return {"id": ident, "status": status,
            "links": [{"rel": "self", "href": f"{base}/image/v2/"}]}


@router.get("")
@router.get("/")
@router.get("/versions")
def versions(base: BaseUrl) -> JSONResponse:
    """The image versions (anonymous; 300 as Glance answers)."""
    return JSONResponse({"versions": [_version(base, "v2.9", "CURRENT")]}, status_code=300)


def stamp(at: Any) -> str | None:
    """Glance's timestamp format."""
    return at.strftime("%Y-%m-%dT%H:%M:%SZ") if at is not None else None


def view(image: Image) -> dict[str, Any]:
    """An image as Glance shows it."""
    props = dict(image.properties or {})
    glance = props.pop(GLANCE_KEY, {}) or {}
    out: dict[str, Any] = dict(glance.get("extra", {}))
    for os_name, ours in _MAPPED.items():
        if ours in props:
            out[os_name] = props[ours]
    out.update({
        "id": image.id, "name": image.name, "status": image.status,
        "visibility": image.visibility, "protected": False, "os_hidden": False,
        "checksum": glance.get("md5"), "os_hash_algo": "sha512" if glance.get("sha512")
        else None, "os_hash_value": glance.get("sha512"), "owner": image.project_id,
        "size": image.size, "virtual_size": None, "min_disk": image.min_disk,
        "min_ram": image.min_ram, "disk_format": image.disk_format,
        "container_format": "bare", "created_at": stamp(image.created_at),
        "updated_at": stamp(image.updated_at), "tags": [],
        "self": f"/v2/images/{image.id}", "file": f"/v2/images/{image.id}/file",
        "schema": "/v2/schemas/image",
    })
    return out


def _bad(message: str) -> InvalidInput:
    return InvalidInput(message, code="invalid_input")


def _image_create(body: dict[str, Any]) -> tuple[ImageCreate, dict[str, str]]:
    if body.get("container_format", "bare") not in ("bare", None):
        raise _bad("Invalid container format: minicloud stores bare images only.")
    mapped = {ours: body[name] for name, ours in _MAPPED.items() if name in body}
    extra = {k: v for k, v in body.items() if k not in _CORE and k not in _MAPPED}
    if len(extra) > MAX_EXTRA:
        raise _bad(f"At most {MAX_EXTRA} extra properties.")
    for key, value in extra.items():
        if (not isinstance(value, str) or len(key) > 255 or len(value) > 65535
                or "\x00" in key or "\x00" in value):
            raise _bad(f"Invalid extra property {key[:64]!r}: a string of at most 65535 "
                       "characters.")
    if body.get("protected") or body.get("tags"):
        raise _bad("Protected images and image tags are not supported.")
    try:
        create = ImageCreate(
            name=body.get("name"), disk_format=body.get("disk_format"),
            visibility=body.get("visibility") or "private",
            min_disk=body.get("min_disk") or 0, min_ram=body.get("min_ram") or 0,
            properties=ImageProperties(**mapped))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        raise _bad(f"Invalid {where}: {first.get('msg', '')}") from None
    return create, extra


@router.post("/v2/images", status_code=201)
def create_image(principal: OsWriter, session: SessionDep, settings: SettingsDep,
                 body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    """``POST /v2/images``: ``images.service.create_image``; extra properties are kept."""
    create, extra = _image_create(body)
    image = images.create_image(session, settings, principal, create)
    if extra:
        image.properties = {**image.properties, GLANCE_KEY: {"extra": extra}}
        session.flush()
    return view(image)


def _visible(session: Session, principal: Principal, image_id: str) -> Image:
    return images.get_image(session, principal, os_id(image_id))


@router.get("/v2/images")
def list_images(request: Request, principal: OsUser, session: SessionDep) -> dict[str, Any]:
    """``GET /v2/images``: visible images, oldest first, paged with ``limit``/``marker``
    (filters: name, status, visibility, owner, disk_format; others ignored)."""
    q = request.query_params
    rows = [i for i in images.list_images(session, principal) if i.status != "deleted"]
    for key, attr in (("name", "name"), ("status", "status"), ("visibility", "visibility"),
                      ("owner", "project_id"), ("disk_format", "disk_format")):
        if q.get(key):
            rows = [i for i in rows if getattr(i, attr) == q[key]]
    rows.sort(key=lambda i: (i.created_at, i.id))
    try:
        limit = int(q.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise _bad("limit param must be an integer") from None
    if limit < 0:
        raise _bad("limit param must be positive")
    limit = min(limit, 1000)
    marker = q.get("marker")
    if marker:
        ids = [i.id for i in rows]
        if marker not in ids:
            raise _bad(f"marker {marker[:64]} could not be found.")
        rows = rows[ids.index(marker) + 1:]
    out: dict[str, Any] = {"images": [view(i) for i in rows[:limit]],
                           "first": "/v2/images", "schema": "/v2/schemas/images"}
    if len(rows) > limit and limit:
        out["next"] = f"/v2/images?limit={limit}&marker={rows[limit - 1].id}"
    return out


@router.get("/v2/images/{image_id}")
def show_image(image_id: str, principal: OsUser, session: SessionDep) -> dict[str, Any]:
    """``GET /v2/images/{id}`` (ids only: a name is 404)."""
    return view(_visible(session, principal, image_id))


@router.delete("/v2/images/{image_id}", status_code=204)
def delete_image(image_id: str, principal: OsWriter, session: SessionDep,
                 settings: SettingsDep) -> Response:
    """``DELETE /v2/images/{id}``: the /v1 delete (record first, then the bytes)."""
    return image_routes.delete_image(os_id(image_id), principal, session, settings)


def _hashes(path: Path) -> tuple[str, str]:
    md5 = hashlib.md5(usedforsecurity=False)
    sha512 = hashlib.sha512()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            md5.update(chunk)
            sha512.update(chunk)
    return md5.hexdigest(), sha512.hexdigest()


def _record_hashes(session: Session, image_id: str, md5: str, sha512: str) -> None:
    image = session.get(Image, image_id)
    if image is None:
        raise NotFound("The image was deleted.", code="image_not_found")
    glance = dict((image.properties or {}).get(GLANCE_KEY, {}) or {})
    glance.update(md5=md5, sha512=sha512)
    image.properties = {**image.properties, GLANCE_KEY: glance}
    session.commit()


@router.put("/v2/images/{image_id}/file", status_code=204)
async def upload_image(image_id: str, request: Request, principal: OsWriter,
                       session: SessionDep, settings: SettingsDep,
                       content_length: Annotated[int | None, Header()] = None) -> Response:
    """``PUT /v2/images/{id}/file``: queued -> saving -> active through the /v1 upload, then
    the MD5 ``checksum`` and SHA-512 ``os_hash_value`` Glance reports."""
    uploaded = await image_routes.upload_image_file(os_id(image_id), request, principal,
                                                    session, settings, content_length)
    path = ImageStore(settings.image_dir).path(uploaded.id)
    md5, sha512 = await run_in_threadpool(_hashes, path)
    await run_in_threadpool(_record_hashes, session, uploaded.id, md5, sha512)
    return Response(status_code=204)


@router.get("/v2/images/{image_id}/file")
def download_image(image_id: str, principal: OsUser, session: SessionDep,
                   settings: SettingsDep) -> FileResponse:
    """``GET /v2/images/{id}/file``: the /v1 download."""
    return image_routes.download_image_file(os_id(image_id), principal, session, settings)


_SCHEMA_PROPS: dict[str, dict[str, Any]] = {name: {"type": ["null", "string"]} for name in (
    "id", "name", "status", "visibility", "checksum", "os_hash_algo", "os_hash_value",
    "owner", "disk_format", "container_format", "created_at", "updated_at", "self", "file",
    "schema", "kernel_id", "ramdisk_id", "architecture", "os_command_line")}
_SCHEMA_PROPS.update({name: {"type": ["null", "integer"]} for name in (
    "size", "virtual_size", "min_disk", "min_ram")})
_SCHEMA_PROPS.update({"protected": {"type": "boolean"}, "os_hidden": {"type": "boolean"},
                      "tags": {"type": "array", "items": {"type": "string"}}})
IMAGE_SCHEMA = {"name": "image", "additionalProperties": {"type": "string"},
                "properties": _SCHEMA_PROPS,
                "links": [{"rel": "self", "href": "{self}"}, {"rel": "enclosure",
                                                              "href": "{file}"}]}


@router.get("/v2/schemas/image")
def image_schema(_: OsUser) -> dict[str, Any]:
    """The JSON schema of an image."""
    return IMAGE_SCHEMA


@router.get("/v2/schemas/images")
def images_schema(_: OsUser) -> dict[str, Any]:
    """The JSON schema of an image list."""
    return {"name": "images", "properties": {
        "images": {"type": "array", "items": IMAGE_SCHEMA},
        "first": {"type": "string"}, "next": {"type": "string"},
        "schema": {"type": "string"}},
        "links": [{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"}]}
