//! Building the guest from what the host has installed: the distribution's kernel, the
//! modules a virtio disk with ext4 needs, and a static busybox that is both the initramfs's
//! shell and the whole userland of the root file system.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

use super::cpio::Archive;
use crate::{run, tool, unavailable};

/// Modules the guest loads before it can mount its root, each after the modules it depends
/// on (read from `modules.dep`; one built into the kernel is skipped). `crc32c_generic` is
/// named because ext4 and jbd2 only ask for "a crc32c" when a file system with metadata
/// checksums is mounted, through `modprobe`, which the guest does not run; the generic one
/// works on any CPU the emulator offers.
pub const GUEST_MODULES: [&str; 4] = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"];

/// Size of the root file system image, and so of the volume it is copied into. Room for the
/// stress step's rounds beside busybox and the payload.
pub const ROOT_SIZE_BYTES: u64 = 128 << 20;

/// The first stage: PID 1 of the initramfs.
const INITRAMFS_INIT: &str = include_str!("initramfs-init.sh");
/// The second stage: `/init` on the root file system, which runs the step.
const GUEST_INIT: &str = include_str!("guest-init.sh");

/// What this machine offers to build and boot a guest.
#[derive(Debug, Clone)]
pub struct Host {
    pub qemu: PathBuf,
    pub busybox: PathBuf,
    pub mke2fs: PathBuf,
    pub e2fsck: PathBuf,
    pub debugfs: PathBuf,
    /// `vmlinuz-VERSION`.
    pub kernel: PathBuf,
    /// `/lib/modules/VERSION` of that kernel.
    pub modules: PathBuf,
}

impl Host {
    /// Everything a guest needs, or `None` after the skip/fail rule of [`crate::tool`]: QEMU,
    /// a static busybox, e2fsprogs, and a kernel image in `/boot` with its modules.
    pub fn find() -> Option<Host> {
        let qemu = tool("qemu-system-x86_64");
        let busybox = tool("busybox");
        let mke2fs = tool("mke2fs");
        let e2fsck = tool("e2fsck");
        let debugfs = tool("debugfs");
        let (qemu, busybox, mke2fs, e2fsck, debugfs) =
            (qemu?, busybox?, mke2fs?, e2fsck?, debugfs?);
        if !is_static(&busybox) {
            unavailable(&format!(
                "{} is linked dynamically, so it cannot run alone in a guest (install busybox-static)",
                busybox.display()
            ));
            return None;
        }
        let Some((kernel, modules)) = installed_kernel() else {
            unavailable(
                "no readable /boot/vmlinuz-* with its /lib/modules directory (install linux-image-amd64)",
            );
            return None;
        };
        Some(Host {
            qemu,
            busybox,
            mke2fs,
            e2fsck,
            debugfs,
            kernel,
            modules,
        })
    }
}

/// A kernel image with its modules. Any will do, since the guest only needs virtio and ext4;
/// the running kernel's own version is preferred, then the highest installed.
fn installed_kernel() -> Option<(PathBuf, PathBuf)> {
    let running = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut versions: Vec<String> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("vmlinuz-").map(str::to_owned)
        })
        .filter(|v| {
            Path::new("/lib/modules").join(v).join("modules.dep").is_file()
                // Some distributions make the kernel image readable by root only.
                && std::fs::File::open(Path::new("/boot").join(format!("vmlinuz-{v}"))).is_ok()
        })
        .collect();
    versions.sort_by_key(|v| (*v == running.trim(), version_key(v)));
    let version = versions.pop()?;
    Some((
        Path::new("/boot").join(format!("vmlinuz-{version}")),
        Path::new("/lib/modules").join(version),
    ))
}

/// Orders "6.1.0-9" before "6.1.0-57": the numbers in a version compare as numbers.
fn version_key(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Whether an ELF executable has no program interpreter, i.e. needs no dynamic loader.
fn is_static(path: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let Ok(elf) = std::fs::read(path) else {
        return false;
    };
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    // A 64-bit little-endian ELF file: the program headers' offset, entry size and count.
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(offset), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..usize::from(count)).all(|i| {
        let at = offset as usize + i * usize::from(size);
        u32_at(at).is_some_and(|kind| kind != PT_INTERP)
    })
}

/// The three files QEMU boots: the kernel, the initramfs and the root file system image.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// A raw ext4 image of [`ROOT_SIZE_BYTES`], copied into a volume before the guest boots.
    pub root: PathBuf,
}

impl GuestImage {
    /// Builds the initramfs and the root file system in `dir`.
    pub fn build(host: &Host, dir: &Path) -> anyhow::Result<GuestImage> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let busybox = std::fs::read(&host.busybox).context("read busybox")?;

        let mut initramfs = Archive::default();
        for d in [
            "/bin",
            "/dev",
            "/proc",
            "/sys",
            "/lib",
            "/lib/modules",
            "/newroot",
        ] {
            initramfs.dir(d);
        }
        initramfs.char_device("/dev/console", 5, 1);
        initramfs.file("/bin/busybox", 0o755, &busybox);
        initramfs.file("/init", 0o755, INITRAMFS_INIT.as_bytes());
        let mut order = String::new();
        for module in modules_in_load_order(&host.modules, &GUEST_MODULES)? {
            let name = format!("{}.ko", module_name(&module));
            let contents = module_contents(host, &host.modules.join(&module))?;
            initramfs.file(&format!("/lib/modules/{name}"), 0o644, &contents);
            order.push_str(&name);
            order.push('\n');
        }
        initramfs.file("/lib/modules/load-order", 0o644, order.as_bytes());
        let initrd = dir.join("initrd.cpio");
        std::fs::write(&initrd, initramfs.finish()).context("write the initramfs")?;

        let tree = dir.join("rootfs");
        for d in ["bin", "dev", "proc", "sys", "tmp", "data/stress"] {
            std::fs::create_dir_all(tree.join(d)).context("lay out the root file system")?;
        }
        write_executable(&tree.join("bin/busybox"), &busybox)?;
        write_executable(&tree.join("init"), GUEST_INIT.as_bytes())?;
        let root = dir.join("root.img");
        run(Command::new(&host.mke2fs)
            .args(["-q", "-F", "-t", "ext4", "-L", "fabric-guest", "-d"])
            .arg(&tree)
            .arg(&root)
            .arg(format!("{}k", ROOT_SIZE_BYTES >> 10)))
        .context("make the root file system")?;
        Ok(GuestImage {
            kernel: host.kernel.clone(),
            initrd,
            root,
        })
    }
}

fn write_executable(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))
}

/// A module's name as `modules.dep` and `insmod` know it: the file name without its suffixes,
/// with dashes read as underscores.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The module files (relative to the modules directory) needed for `wanted`, each after the
/// modules it depends on. A wanted module that is built into the kernel needs no file.
fn modules_in_load_order(modules: &Path, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
    let dep = std::fs::read_to_string(modules.join("modules.dep"))
        .with_context(|| format!("read {}/modules.dep", modules.display()))?;
    let builtin = std::fs::read_to_string(modules.join("modules.builtin")).unwrap_or_default();
    let builtin: HashSet<String> = builtin.lines().map(module_name).collect();
    // "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko ..."
    let deps: Vec<(String, Vec<String>)> = dep
        .lines()
        .filter_map(|line| {
            let (module, needs) = line.split_once(':')?;
            Some((
                module.to_owned(),
                needs.split_whitespace().map(str::to_owned).collect(),
            ))
        })
        .collect();
    let mut order: Vec<String> = Vec::new();
    for name in wanted {
        match deps.iter().find(|(m, _)| module_name(m) == *name) {
            Some((module, _)) => load_after_needs(module, &deps, &mut order, &mut Vec::new())?,
            None => ensure!(
                builtin.contains(*name),
                "the kernel in {} has no module {name}, nor has it built in",
                modules.display()
            ),
        }
    }
    Ok(order)
}

/// Appends `module` to `order` after what it needs (depth first); `path` is the chain of
/// modules being visited, to refuse a cycle.
fn load_after_needs(
    module: &str,
    deps: &[(String, Vec<String>)],
    order: &mut Vec<String>,
    path: &mut Vec<String>,
) -> anyhow::Result<()> {
    if order.iter().any(|m| m == module) {
        return Ok(());
    }
    ensure!(
        !path.iter().any(|m| m == module),
        "modules.dep has a dependency cycle: {path:?} -> {module}"
    );
    let Some((_, needs)) = deps.iter().find(|(m, _)| m == module) else {
        bail!("modules.dep names {module} as a dependency but has no line for it");
    };
    path.push(module.to_owned());
    for need in needs {
        load_after_needs(need, deps, order, path)?;
    }
    path.pop();
    order.push(module.to_owned());
    Ok(())
}

/// A module file's contents, uncompressed: the guest's busybox `insmod` loads plain `.ko` files
/// only, so compressed modules are unpacked here with the host's busybox.
fn module_contents(host: &Host, path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let unpack = if name.ends_with(".ko") {
        return std::fs::read(path).with_context(|| format!("read {name}"));
    } else if name.ends_with(".ko.xz") {
        "xz"
    } else if name.ends_with(".ko.gz") {
        "gzip"
    } else {
        bail!("{name}: a module compression the test guest cannot unpack");
    };
    let out = run(Command::new(&host.busybox).args([unpack, "-dc"]).arg(path))
        .with_context(|| format!("unpack {name}"))?;
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_after_their_dependencies_and_builtins_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("modules.dep"),
            "kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/jbd2/jbd2.ko.xz\n\
             kernel/lib/crc16.ko.xz:\n\
             kernel/fs/jbd2/jbd2.ko.xz: kernel/lib/crc16.ko.xz\n\
             kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio_ring.ko:\n\
             kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/drivers/virtio/virtio_pci.ko\n",
        )
        .unwrap();
        let order =
            modules_in_load_order(dir.path(), &["virtio_pci", "virtio_blk", "ext4"]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/lib/crc16.ko.xz",
                "kernel/fs/jbd2/jbd2.ko.xz",
                "kernel/fs/ext4/ext4.ko.xz",
            ]
        );
        let missing = modules_in_load_order(dir.path(), &["btrfs"]).unwrap_err();
        assert!(missing.to_string().contains("no module btrfs"), "{missing}");
    }

    #[test]
    fn kernel_versions_compare_by_number() {
        let mut v = vec!["6.1.0-57-amd64", "6.1.0-9-amd64", "6.12.1-amd64"];
        v.sort_by_key(|v| version_key(v));
        assert_eq!(v, ["6.1.0-9-amd64", "6.1.0-57-amd64", "6.12.1-amd64"]);
    }
}
