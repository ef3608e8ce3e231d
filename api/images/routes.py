"""Image HTTP routes: /v1/images and their bytes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from api.deps import (
    CurrentUser,
    HostPrincipal,
    Principal,
    SessionDep,
    SettingsDep,
    Writer,
    get_host_principal,
    get_principal,
)
from api.errors import Conflict, PayloadTooLarge, Unauthorized
from api.fields import PathId, PathRef
from api.images import service
from api.images.schemas import ImageCreate, ImageOut
from api.images.store import ImageStore
from api.servers.schemas import MarkerId

router = APIRouter(prefix="/v1/images", tags=["images"])

SHA256_HEADER = "X-Image-Sha256"


def get_image_reader(
    session: SessionDep, authorization: Annotated[str | None, Header()] = None
) -> Principal | HostPrincipal:
    """A user (any role) or an enrolled host; raises Unauthorized for anything else."""
    try:
        return get_principal(session, authorization)
    except Unauthorized as exc:
        if exc.code != "invalid_token":
            raise
    try:
        return get_host_principal(session, authorization)
    except Unauthorized:
        raise Unauthorized("The token is not valid.", code="invalid_token") from None


ImageReader = Annotated[Principal | HostPrincipal, Depends(get_image_reader)]


@router.get("", response_model=list[ImageOut])
def list_images(principal: CurrentUser, session: SessionDep, response: Response,
                limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
                marker: MarkerId = None) -> list[ImageOut]:
    """Images the caller may see: the project's own and public ones (admins: all), oldest
    first, one page at a time. When more follow, a `Link: <...>; rel="next"` header names
    the next page (`marker` = the last id of this one); an unknown marker is 400
    `invalid_marker`."""
    page = service.list_image_page(session, principal, limit=limit, marker=marker)
    if page.next_marker is not None:
        response.headers["Link"] = (
            f'</v1/images?limit={limit}&marker={page.next_marker}>; rel="next"')
    return [ImageOut.model_validate(i) for i in page.images]


@router.post("", status_code=201, response_model=ImageOut)
def create_image(body: ImageCreate, principal: Writer, session: SessionDep,
                 settings: SettingsDep) -> ImageOut:
    """Create a queued image record owned by the caller's project (409 `quota_exceeded`
    beyond its `images` quota)."""
    return ImageOut.model_validate(service.create_image(session, settings, principal, body))


@router.get("/{ref}", response_model=ImageOut)
def show_image(ref: PathRef, principal: CurrentUser, session: SessionDep) -> ImageOut:
    """One visible image by id, or by name when exactly one visible image has it."""
    return ImageOut.model_validate(service.find_image(session, principal, ref))


@router.delete("/{image_id}", status_code=204)
def delete_image(image_id: PathId, principal: Writer, session: SessionDep,
                 settings: SettingsDep) -> Response:
    """Delete an image and its bytes."""
    image = service.delete_image(session, principal, image_id)
    # Commit before the bytes go: a failed commit must not leave a record without its file.
    session.commit()
    ImageStore(settings.image_dir).remove(image.id)
    return Response(status_code=204)


@router.put("/{image_id}/file", response_model=ImageOut)
async def upload_image_file(image_id: PathId, request: Request, principal: Writer,
                            session: SessionDep, settings: SettingsDep,
                            content_length: Annotated[int | None, Header()] = None) -> ImageOut:
    """Stream the image's bytes (request body, any length up to the limit); image -> active.

    This route commits in three short steps rather than one unit of work, because an upload
    can last minutes: (1) claim queued -> saving, committed so a concurrent upload sees it;
    (2) stream to a temporary file with no transaction open; (3) publish the file and move
    saving -> active. Any failure in (2) gives the claim back (saving -> queued).

    The project's `image_bytes` quota is checked against the declared length, while the
    bytes stream and again before the image becomes active: 409 `quota_exceeded`, and
    nothing is kept.
    """
    if content_length is not None and content_length > settings.max_image_bytes:
        raise PayloadTooLarge(f"The image is larger than the limit of "
                              f"{settings.max_image_bytes} bytes.", code="image_too_large",
                              limit=settings.max_image_bytes)
    image = await run_in_threadpool(service.claim_upload, session, principal, image_id)
    await run_in_threadpool(session.commit)
    store = ImageStore(settings.image_dir)
    disk_format = image.disk_format
    try:
        quota = await run_in_threadpool(service.upload_quota, session, settings, image,
                                        content_length)
        received = await store.receive(
            image.id, request.stream(), settings.max_image_bytes,
            lambda head: service.check_head(disk_format, head), quota.check)
    except BaseException:
        await run_in_threadpool(_give_back, session, image.id)
        raise
    try:
        store.publish(received, image.id)
        image = await run_in_threadpool(service.finish_upload, session, settings, image.id,
                                        received.size, received.sha256)
        await run_in_threadpool(session.commit)
    except BaseException:
        store.discard(received)
        store.remove(image.id)
        await run_in_threadpool(_give_back, session, image.id)
        raise
    return ImageOut.model_validate(image)


def _give_back(session: SessionDep, image_id: str) -> None:
    # Runs after the claim was committed, so the release needs its own commit.
    session.rollback()
    service.release_upload(session, image_id)
    session.commit()


@router.get("/{image_id}/file", response_class=FileResponse, responses={200: {"content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
def download_image_file(image_id: PathId, reader: ImageReader, session: SessionDep,
                        settings: SettingsDep) -> FileResponse:
    """Stream an active image's bytes, for its users and for any enrolled host's agent.

    The answer carries Content-Length and the sha256 in ``X-Image-Sha256``.
    """
    image = service.get_image_for_reader(session, reader, image_id)
    service.ensure_downloadable(image)
    path = ImageStore(settings.image_dir).path(image.id)
    if not path.is_file():
        raise Conflict("The image's bytes are missing from the store.",
                       code="image_data_missing")
    return FileResponse(path, media_type="application/octet-stream",
                        headers={SHA256_HEADER: image.sha256 or ""},
                        filename=f"{image.id}.{image.disk_format}")
