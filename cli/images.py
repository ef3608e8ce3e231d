"""Images: create records, stream bytes up and down with a progress bar."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from cli import render
from cli.client import ApiClient, CliError
from cli.context import is_uuid, pick, state

app = typer.Typer(help="Images (boot disks, kernels, initramfs).", no_args_is_help=True)

IMAGE_COLUMNS = ["id", "name", "status", "disk_format", "visibility", "size", "min_disk",
                 "min_ram", "project_id"]
CHUNK = 1024 * 1024
QCOW2_MAGIC = b"QFI\xfb"


def resolve_image(api: ApiClient, ref: str) -> dict[str, Any]:
    """An image you can see, by id or name; raises CliError when none or several match."""
    if is_uuid(ref):
        body: dict[str, Any] = api.get(f"/v1/images/{ref}")
        return body
    return pick(api.get_all("/v1/images"), ref, "image")


def _progress() -> Progress:
    return Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(),
                    console=render.console(stderr=True), transient=False)


def _chunks(path: Path, progress: Progress, task: Any) -> Iterator[bytes]:
    # A generator: httpx pulls one chunk at a time, so a multi-GB file never sits in memory.
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            progress.advance(task, len(chunk))
            yield chunk


def upload_file(api: ApiClient, image_id: str, path: Path) -> dict[str, Any]:
    """Stream ``path`` into the image; raises CliError."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CliError(f"Cannot read {path}: {exc}", code="bad_file") from None
    with _progress() as progress:
        task = progress.add_task(f"upload {path.name}", total=size)
        body: dict[str, Any] = api.upload(f"/v1/images/{image_id}/file",
                                          _chunks(path, progress, task), size)
    return body


def _sniff_format(path: Path) -> str:
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CliError(f"Cannot read {path}: {exc}", code="bad_file") from None
    return "qcow2" if head == QCOW2_MAGIC else "raw"


@app.command("list")
def image_list(ctx: typer.Context) -> None:
    """Images you can see (yours and public ones)."""
    st = state(ctx)
    st.show(st.api.get_all("/v1/images"), IMAGE_COLUMNS)


@app.command("show")
def image_show(ctx: typer.Context, image: str) -> None:
    """One image, by name or id."""
    st = state(ctx)
    st.show(resolve_image(st.api, image))


@app.command("create")
def image_create(
    ctx: typer.Context,
    name: str,
    file: Annotated[Path | None, typer.Option(help="Upload this file right away.")] = None,
    disk_format: Annotated[str | None, typer.Option(
        help="qcow2, raw, aki (kernel) or ari (initramfs); default: sniffed from --file, "
             "else raw.")] = None,
    public: Annotated[bool, typer.Option(help="Visible to every project (admin).")] = False,
    min_disk: Annotated[int, typer.Option(help="Minimum root disk in GiB.")] = 0,
    min_ram: Annotated[int, typer.Option(help="Minimum memory in MiB.")] = 0,
    kernel: Annotated[str | None, typer.Option(help="Kernel image (aki) for direct boot.")
                      ] = None,
    ramdisk: Annotated[str | None, typer.Option(help="Initramfs image (ari) for direct boot.")
                       ] = None,
    kernel_cmdline: Annotated[str | None, typer.Option(help="Kernel command line.")] = None,
    architecture: Annotated[str | None, typer.Option(help="e.g. x86_64.")] = None,
) -> None:
    """Create an image record (status queued); with --file also upload its bytes."""
    st = state(ctx)
    fmt = disk_format or (_sniff_format(file) if file is not None else "raw")
    properties: dict[str, Any] = {}
    if kernel:
        properties["kernel_id"] = resolve_image(st.api, kernel)["id"]
    if ramdisk:
        properties["ramdisk_id"] = resolve_image(st.api, ramdisk)["id"]
    if kernel_cmdline:
        properties["kernel_cmdline"] = kernel_cmdline
    if architecture:
        properties["architecture"] = architecture
    image: dict[str, Any] = st.api.post("/v1/images", {
        "name": name, "disk_format": fmt, "visibility": "public" if public else "private",
        "min_disk": min_disk, "min_ram": min_ram, "properties": properties})
    if file is not None:
        try:
            image = upload_file(st.api, image["id"], file)
        except CliError as exc:
            exc.detail += (f" The image record {image['id']} exists without bytes: retry with "
                           f"'minicloud image upload {image['id']} {file}' or delete it.")
            raise
    st.show(image)


@app.command("upload")
def image_upload(ctx: typer.Context, image: str, file: Path) -> None:
    """Stream FILE into a queued image."""
    st = state(ctx)
    img = resolve_image(st.api, image)
    st.show(upload_file(st.api, img["id"], file))


@app.command("download")
def image_download(
    ctx: typer.Context, image: str,
    file: Annotated[Path | None, typer.Argument(help="Where to write (default: the image "
                                                     "name in the current folder).")] = None,
) -> None:
    """Stream an image's bytes into FILE."""
    st = state(ctx)
    img = resolve_image(st.api, image)
    target = file or Path(img["name"]).name
    target = Path(target)
    partial = target.with_name(target.name + ".part")
    try:
        with st.api.download(f"/v1/images/{img['id']}/file") as response, _progress() as bar:
            total = int(response.headers.get("content-length") or img.get("size") or 0) or None
            task = bar.add_task(f"download {target.name}", total=total)
            with partial.open("wb") as out:
                for chunk in response.iter_bytes(CHUNK):
                    out.write(chunk)
                    bar.advance(task, len(chunk))
        os.replace(partial, target)
    except OSError as exc:
        raise CliError(f"Cannot write {target}: {exc}", code="bad_file") from None
    finally:
        partial.unlink(missing_ok=True)
    st.done(f"Wrote {target}.", {"id": img["id"], "file": str(target)})


@app.command("delete")
def image_delete(ctx: typer.Context, image: str) -> None:
    """Delete an image."""
    st = state(ctx)
    img = resolve_image(st.api, image)
    st.api.delete(f"/v1/images/{img['id']}")
    st.done(f"Deleted image {img['name']} ({img['id']}).", {"id": img["id"], "deleted": True})
