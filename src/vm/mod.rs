//! A small Linux guest for the process tests that boot a virtual machine from a Fabric volume.
//!
//! Nothing is downloaded: the guest is put together from the host's own packages. The kernel
//! is the distribution's (`/boot/vmlinuz-*`); the initramfs holds a static busybox and the
//! modules a virtio disk with ext4 needs (from `/lib/modules`, in dependency order), mounts
//! `/dev/vda` and switches to it; the root file system on the volume is an ext4 image made
//! with `mke2fs -d` that holds busybox again and the init script of `guest-init.sh`. The
//! kernel command line picks what the guest does (`fabric.step=write|read|stress`), it reports
//! on the serial console in lines starting with [`MARKER`], and powers off when done.
//!
//! `image` builds the files, `cpio` writes the initramfs, `guest` runs QEMU and reads its
//! console.

mod cpio;
mod guest;
mod image;

pub use guest::{
    CONSOLE_ERRORS, CONSOLE_TAIL_LINES, Disk, GUEST_MEMORY_MIB, Guest, MARKER, last_round,
};
pub use image::{GUEST_MODULES, GuestImage, Host, ROOT_SIZE_BYTES};
