"""Image rules: who sees, creates, uploads and deletes images, and the upload state machine.

Status: queued (no bytes) -> saving (one upload running) -> active. A failed or refused upload
goes back to queued, so the owner can try again; nothing is kept of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from api.config import Settings
from api.deps import HostPrincipal, Principal
from api.errors import (
    Conflict,
    DomainError,
    Forbidden,
    InvalidInput,
    NotFound,
    QuotaExceeded,
)
from api.images import formats, repository
from api.images.schemas import ImageCreate
from api.mobility import repository as mobility_repository
from api.models import Image
from api.quotas import service as quotas


def list_images(session: Session, principal: Principal) -> Sequence[Image]:
    """Images the caller may see."""
    return repository.list_visible(session, principal.project_scope)


@dataclass(frozen=True)
class ImagePage:
    """One page of images and the marker of the next page (None: last page)."""

    images: Sequence[Image]
    next_marker: str | None


def list_image_page(session: Session, principal: Principal, *, limit: int,
                    marker: str | None) -> ImagePage:
    """A page of the images the caller may see, oldest first.

    Raises DomainError ``invalid_marker`` (400) for a marker that is not a visible image.
    """
    after = None
    if marker is not None:
        mark = repository.visible(session, principal.project_scope, marker)
        if mark is None:
            raise DomainError("The marker is not an image of this listing.",
                              code="invalid_marker")
        after = (mark.created_at, mark.id)
    rows = repository.list_visible(session, principal.project_scope, after=after,
                                   limit=limit + 1)
    if len(rows) > limit:
        return ImagePage(rows[:limit], rows[limit - 1].id)
    return ImagePage(rows, None)


def get_image(session: Session, principal: Principal, image_id: str) -> Image:
    """A visible image; raises NotFound (also for another project's private image)."""
    image = repository.visible(session, principal.project_scope, image_id)
    if image is None:
        raise NotFound(f"No image {image_id!r}.", code="image_not_found")
    return image


def find_image(session: Session, principal: Principal, ref: str) -> Image:
    """A visible image by id, else by name (``GET /v1/images/{ref}``, and a server's image).

    Visible: public or the caller's project's, never deleted; admins see all. The one image
    visibility rule: servers resolve their image here too.

    Raises NotFound, Conflict ``image_name_ambiguous`` when several visible images share the
    name (image names are not unique; the caller then passes the id).
    """
    image = repository.visible(session, principal.project_scope, ref)
    if image is not None:
        return image
    named = repository.visible_by_name(session, principal.project_scope, ref)
    if not named:
        raise NotFound(f"No image {ref!r}.", code="image_not_found")
    if len(named) > 1:
        raise Conflict(f"{len(named)} images are named {ref!r}; use an id.",
                       code="image_name_ambiguous", ids=[i.id for i in named])
    return named[0]


def get_image_for_reader(session: Session, reader: Principal | HostPrincipal,
                         image_id: str) -> Image:
    """An image a user may see, or one a host's servers boot from; raises NotFound.

    A host may fetch the image of each of its servers that is not DELETED, and the kernel
    and ramdisk images those reference: a compromised host learns nothing about other
    projects' private images (404, as for a tenant).
    """
    if isinstance(reader, Principal):
        return get_image(session, reader, image_id)
    image = repository.visible(session, None, image_id)
    if image is None or image_id not in _host_image_ids(session, reader.host_id):
        raise NotFound(f"No image {image_id!r}.", code="image_not_found")
    return image


def _host_image_ids(session: Session, host_id: str) -> set[str]:
    ids: set[str] = set()
    # The host's servers, and those moving to it (it builds them from their image).
    incoming = [i for _, i in mobility_repository.incoming_with_images(session, host_id)]
    for image in [*repository.images_of_host_servers(session, host_id), *incoming]:
        ids.add(image.id)
        for part in ("kernel_id", "ramdisk_id"):
            ref = (image.properties or {}).get(part)
            if isinstance(ref, str):
                ids.add(ref)
    return ids


def _owned(session: Session, principal: Principal, image_id: str) -> Image:
    """A visible image the caller may change; raises NotFound, Forbidden ``image_not_owned``."""
    image = get_image(session, principal, image_id)
    if not principal.is_admin and image.project_id != principal.project_id:
        # Visible (public) but someone else's.
        raise Forbidden("Only the owning project changes an image.", code="image_not_owned")
    return image


def _boot_part(session: Session, principal: Principal, image_id: str, disk_format: str,
               field: str) -> None:
    image = repository.visible(session, principal.project_scope, image_id)
    if image is None or image.status != "active" or image.disk_format != disk_format:
        raise InvalidInput(
            f"properties.{field} must name an active, visible {disk_format} image.",
            code="invalid_image_reference", field=field)


def create_image(session: Session, settings: Settings, principal: Principal,
                 body: ImageCreate) -> Image:
    """A queued image record owned by the caller's project, within its ``images`` quota.

    Raises Forbidden ``admin_required`` for a public image by a non-admin (public images are
    offered to every project, so only the cloud operator publishes them), InvalidInput
    ``invalid_image_reference`` for a kernel/ramdisk that is not an active aki/ari image,
    QuotaExceeded for one image too many.
    """
    if body.visibility == "public" and not principal.is_admin:
        raise Forbidden("Only admins publish public images.", code="admin_required")
    props = body.properties
    if (props.kernel_id or props.ramdisk_id) and body.disk_format not in ("raw", "qcow2"):
        raise InvalidInput("Only raw and qcow2 images name a kernel or ramdisk.",
                           code="invalid_image_reference")
    if props.ramdisk_id and not props.kernel_id:
        raise InvalidInput("A ramdisk needs a kernel.", code="invalid_image_reference",
                           field="ramdisk_id")
    if props.kernel_id:
        _boot_part(session, principal, props.kernel_id, "aki", "kernel_id")
    if props.ramdisk_id:
        _boot_part(session, principal, props.ramdisk_id, "ari", "ramdisk_id")
    quotas.lock_and_check(session, settings, principal.project_id, {"images": 1})
    image = Image(
        project_id=principal.project_id, name=body.name, status="queued",
        disk_format=body.disk_format, visibility=body.visibility,
        min_disk=body.min_disk, min_ram=body.min_ram,
        properties=props.model_dump(exclude_none=True),
    )
    session.add(image)
    session.flush()
    return image


def claim_upload(session: Session, principal: Principal, image_id: str) -> Image:
    """Move a queued image to saving for this upload alone.

    Raises NotFound, Forbidden ``image_not_owned``, Conflict ``image_not_queued`` when the
    image has bytes or another upload holds it (a conditional UPDATE decides the race).
    """
    image = _owned(session, principal, image_id)
    if not repository.move_status(session, image.id, "queued", "saving"):
        raise Conflict("The image is not queued: it has bytes or an upload is running.",
                       code="image_not_queued")
    session.refresh(image)
    return image


def check_head(disk_format: str, head: bytes) -> None:
    """Raise InvalidInput ``image_format_mismatch`` unless ``head`` fits ``disk_format``."""
    why = formats.problem(disk_format, head)
    if why is not None:
        raise InvalidInput(f"The upload does not match disk_format {disk_format}: {why}.",
                           code="image_format_mismatch", disk_format=disk_format)


def release_upload(session: Session, image_id: str) -> None:
    """Give a failed or refused upload's claim back: saving -> queued."""
    repository.move_status(session, image_id, "saving", "queued")


@dataclass(frozen=True)
class ByteQuota:
    """The project's ``image_bytes`` use and limit when an upload starts."""

    used: int
    limit: int

    def check(self, requested: int) -> None:
        """Raise QuotaExceeded unless ``requested`` more bytes fit."""
        if self.used + requested > self.limit:
            raise QuotaExceeded(
                f"Quota exceeded for image_bytes: requested {requested}, used {self.used}, "
                f"limit {self.limit}.",
                resource="image_bytes", requested=requested, used=self.used, limit=self.limit)


def upload_quota(session: Session, settings: Settings, image: Image,
                 declared: int | None) -> ByteQuota:
    """The image's project's byte quota; raises QuotaExceeded when the declared size alone
    does not fit."""
    quota = ByteQuota(quotas.usage(session, image.project_id)["image_bytes"],
                      quotas.limits(session, settings, image.project_id)["image_bytes"])
    if declared is not None:
        quota.check(declared)
    return quota


def finish_upload(session: Session, settings: Settings, image_id: str, size: int,
                  sha256: str) -> Image:
    """saving -> active with the size and checksum, within the ``image_bytes`` quota (checked
    again under the project lock: concurrent uploads of one project cannot both fit).

    Raises Conflict ``image_deleted`` when the image was deleted during the upload,
    QuotaExceeded when the bytes do not fit.
    """
    owner = session.get(Image, image_id)
    if owner is not None:
        quotas.lock_and_check(session, settings, owner.project_id, {"image_bytes": size})
    if not repository.move_status(session, image_id, "saving", "active",
                                  size=size, sha256=sha256):
        raise Conflict("The image was deleted during the upload.", code="image_deleted")
    image = session.get(Image, image_id)
    assert image is not None  # the UPDATE above just matched it
    session.refresh(image)
    return image


def delete_image(session: Session, principal: Principal, image_id: str) -> Image:
    """Delete an image record (the caller removes the file); returns it.

    Raises NotFound, Forbidden ``image_not_owned``, Conflict ``image_in_use`` while live
    servers boot from it or images name it as kernel/ramdisk. Soft-deleted servers keep
    referencing it, so then it becomes a tombstone. Deleting during an upload is allowed (it is
    also how an image left in 'saving' by a crashed API process is cleared): the upload then
    fails with ``image_deleted`` and keeps nothing.
    """
    image = _owned(session, principal, image_id)
    live, deleted = repository.server_counts(session, image.id)
    users: dict[str, Any] = {}
    if live:
        users["servers"] = live
    parts_of = repository.referencing(session, image.id)
    if parts_of:
        users["images"] = parts_of
    if users:
        raise Conflict("The image is in use.", code="image_in_use", **users)
    if deleted:
        image.status = repository.DELETED
    else:
        session.delete(image)
    session.flush()
    return image


def ensure_downloadable(image: Image) -> None:
    """Raise Conflict ``image_not_active`` unless the image has its bytes."""
    if image.status != "active":
        raise Conflict("The image has no bytes yet.", code="image_not_active",
                       image_status=image.status)
