//! Writes the initramfs: an uncompressed cpio archive in the "newc" format, the one the Linux
//! kernel unpacks into its root file system at boot. Built in memory, so the archive needs no
//! `cpio` tool and can hold a device node without the privilege to create one on the host.

/// Largest initramfs this writes, in bytes: a static busybox and a handful of modules are a
/// few MiB, and the guest has 256 MiB of memory to unpack it into.
pub const ARCHIVE_SIZE_MAX_BYTES: usize = 64 << 20;

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

const MODE_DIR: u32 = 0o040_000;
const MODE_FILE: u32 = 0o100_000;
const MODE_CHAR_DEVICE: u32 = 0o020_000;

/// An archive being built; entries are written in the order they are added, so a directory
/// goes before what it holds.
#[derive(Default)]
pub struct Archive {
    bytes: Vec<u8>,
    next_inode: u32,
}

impl Archive {
    pub fn dir(&mut self, path: &str) {
        self.entry(path, MODE_DIR | 0o755, 2, (0, 0), &[]);
    }

    pub fn file(&mut self, path: &str, permissions: u32, contents: &[u8]) {
        assert!(
            permissions <= 0o777,
            "permission bits only: {permissions:o}"
        );
        self.entry(path, MODE_FILE | permissions, 1, (0, 0), contents);
    }

    /// A character device node, e.g. `/dev/console` (5, 1): the kernel opens it for the first
    /// process before any devtmpfs is mounted.
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.entry(path, MODE_CHAR_DEVICE | 0o600, 1, (major, minor), &[]);
    }

    /// The archive, closed with its trailer entry.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry_raw(TRAILER, 0, 1, (0, 0), &[]);
        self.bytes
    }

    fn entry(&mut self, path: &str, mode: u32, links: u32, rdev: (u32, u32), data: &[u8]) {
        // Names in the archive are relative to the root it is unpacked into.
        let name = path.trim_start_matches('/');
        assert!(
            !name.is_empty() && name != TRAILER,
            "bad archive path {path:?}"
        );
        self.entry_raw(name, mode, links, rdev, data);
    }

    fn entry_raw(&mut self, name: &str, mode: u32, links: u32, rdev: (u32, u32), data: &[u8]) {
        let size = u32::try_from(data.len()).expect("cpio newc entries are below 4 GiB");
        self.next_inode += 1;
        let fields = [
            self.next_inode,
            mode,
            0, // uid
            0, // gid
            links,
            0, // mtime: fixed, so the same inputs give the same archive
            size,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1, // with its NUL
            0,                     // check: unused by "newc"
        ];
        self.bytes.extend_from_slice(MAGIC.as_bytes());
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
        assert!(
            self.bytes.len() <= ARCHIVE_SIZE_MAX_BYTES,
            "initramfs larger than {ARCHIVE_SIZE_MAX_BYTES} bytes"
        );
    }

    /// Header plus name, and the data, each end on a 4-byte boundary.
    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_the_archive_ends_with_its_trailer() {
        let mut a = Archive::default();
        a.dir("/bin");
        a.file("/bin/x", 0o755, b"hello");
        a.char_device("/dev/console", 5, 1);
        let bytes = a.finish();
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        // The file's header: its mode and size in hex, then its name and its data at a 4-byte
        // boundary (110-byte header + "bin/x\0" = 116).
        let at = text.find("070701").unwrap() + 110 + 4 + 2; // past the directory entry
        assert!(text[at..].starts_with("070701"), "{text:?}");
        let file = &text[at..];
        assert_eq!(&file[14..22], "000081ed", "regular file, 0755");
        assert_eq!(&file[54..62], "00000005", "5 bytes");
        assert_eq!(&file[110..116], "bin/x\0");
        assert_eq!(&file[116..121], "hello");
        let console = &file[124..];
        assert_eq!(&console[14..22], "00002180", "character device, 0600");
        assert_eq!(&console[78..94], "0000000500000001", "device 5:1");
        assert!(text.contains("TRAILER!!!\0"));
    }
}
