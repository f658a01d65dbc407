"""offload.nvme_path on a drive that is not NVMe: one warning line, told from a fake /sys tree laid out
as the kernel's (the path's device number -> /sys/dev/block/<major>:<minor> -> its disk)."""

import os
from pathlib import Path

import pytest

from pipeline.check import preflight


def fake_sysfs(
    root: Path, path: Path, disk: str, partition: bool, rotational: str, model: str | None
) -> Path:
    """A /sys under root where path's filesystem lies on disk (or its first partition)."""
    sysfs = root / "sys"
    disk_dir = sysfs / "devices" / "pci0000:00" / "block" / disk
    (disk_dir / "queue").mkdir(parents=True)
    (disk_dir / "queue" / "rotational").write_text(f"{rotational}\n")
    if model is not None:
        (disk_dir / "device").mkdir()
        (disk_dir / "device" / "model").write_text(f"{model}   \n")
    node = disk_dir
    if partition:
        node = disk_dir / f"{disk}p1"
        node.mkdir()
        (node / "partition").write_text("1\n")
    dev = os.stat(path).st_dev
    (sysfs / "dev" / "block").mkdir(parents=True)
    (sysfs / "dev" / "block" / f"{os.major(dev)}:{os.minor(dev)}").symlink_to(
        os.path.relpath(node, sysfs / "dev" / "block")
    )
    return sysfs


@pytest.mark.parametrize(
    "disk, partition, rotational, model, warning",
    [
        ("nvme0n1", True, "0", "Samsung SSD 980 PRO 1TB", None),
        ("sda", True, "1", "ST4000DM004-2CV1", "is on sda (ST4000DM004-2CV1, rotational), not an NVMe drive"),
        (
            "sdb",
            False,
            "0",
            "Samsung SSD 860",
            "is on sdb (Samsung SSD 860, non-rotational), not an NVMe drive",
        ),
        ("vda", False, "1", None, "is on vda (rotational), not an NVMe drive"),
        ("dm-0", False, "0", None, None),  # device-mapper: which disks are under it is not one answer
    ],
)
def test_a_drive_that_is_not_nvme_is_named_with_the_cost(
    tmp_path, disk, partition, rotational, model, warning
):
    sysfs = fake_sysfs(tmp_path, tmp_path, disk, partition, rotational, model)
    said = preflight.slow_drive_warning(tmp_path, sysfs)
    if warning is None:
        assert said is None
        return
    assert said == (
        f"warning: offload.nvme_path: {tmp_path} {warning}: the offloaded states move at that disk's speed, "
        "expect steps many times slower than on NVMe"
    )


def test_no_block_device_is_not_warned_about(tmp_path):
    """tmpfs, overlay, a network filesystem: no /sys/dev/block entry; it cannot be told, so no warning."""
    sysfs = tmp_path / "sys"
    (sysfs / "dev" / "block").mkdir(parents=True)
    assert preflight.drive_of(tmp_path, sysfs) is None
    assert preflight.slow_drive_warning(tmp_path, sysfs) is None
