"""The tiny real guest of the QEMU tests, uploaded through the images API."""

from __future__ import annotations

from dataclasses import dataclass

from tests.e2e.stack import upload_image
from tests.e2e.test_qemu_boot import build_guest_image

# The machine's own libvirtd, where the real guests of the single-host tests boot.
URI = "qemu:///system"


@dataclass
class GuestImage:
    disk_id: str
    kernel_id: str
    ramdisk_id: str


def upload_tiny_guest(api: str, headers: dict[str, str]) -> GuestImage:
    """Upload the tiny guest's kernel (aki), initramfs (ari) and bootable qcow2 disk (which
    names the other two and the kernel command line)."""
    built = build_guest_image()
    kernel = upload_image(api, headers, (built / "vmlinuz").read_bytes(), "aki")
    ramdisk = upload_image(api, headers, (built / "initrd.img").read_bytes(), "ari")
    disk = upload_image(api, headers, (built / "disk.qcow2").read_bytes(), "qcow2",
                        properties={"kernel_id": kernel["id"], "ramdisk_id": ramdisk["id"],
                                    "kernel_cmdline": (built / "cmdline").read_text().strip()})
    return GuestImage(str(disk["id"]), str(kernel["id"]), str(ramdisk["id"]))
