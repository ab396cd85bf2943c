//! [`Power`]: whether this replica's machine lost what was not durable since the replica last
//! ran, and the *power epoch* it tells clients.
//!
//! A replica that restarts after a process kill loses nothing: the page cache and the device
//! keep every write the kernel accepted. One that restarts after its machine did (a power loss,
//! a reboot) loses what no flush had made durable. Clients must tell the two apart: a writer
//! holding unflushed writes on a replica has to count it as failed after the second, and need
//! not after the first (nor after a mere reconnect). So the replica keeps, in a small record
//! (`boot id`, `power epoch`) replaced durably through the disk seam, the boot it last ran in;
//! when it starts in another boot it raises the power epoch. Clients learn the epoch when they
//! open a session (the PING reply) and compare it with the one that acknowledged their writes.

use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::io::Disk;

/// What the replica learned about its machine when it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Power {
    /// Raised every time the replica starts in a new boot of its machine.
    pub epoch: u64,
    /// The machine restarted since the replica last ran: writes that were not durable then are
    /// gone, and may have left torn blocks.
    pub lost_at_start: bool,
}

/// Reads the record at `path`, raises the epoch if the machine restarted since, and writes it
/// back durably before returning. A missing record starts at epoch 1 with nothing lost (a new
/// replica, or one from before the record existed, which has no write intents either).
pub async fn open(disk: &Arc<dyn Disk>, path: &Path) -> io::Result<Power> {
    let boot = disk.boot_id()?;
    assert!(!boot.contains('\n'), "a boot id is one line");
    let power = match disk.read_small(path).await? {
        None => Power {
            epoch: 1,
            lost_at_start: false,
        },
        Some(bytes) => {
            let (last_boot, epoch) = decode(path, &bytes)?;
            if last_boot == boot {
                return Ok(Power {
                    epoch,
                    lost_at_start: false,
                });
            }
            Power {
                epoch: epoch + 1,
                lost_at_start: true,
            }
        }
    };
    let record = format!("{boot}\n{}\n", power.epoch);
    disk.replace_durably(path, Bytes::from(record)).await?;
    Ok(power)
}

fn decode(path: &Path, bytes: &[u8]) -> io::Result<(String, u64)> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {why}", path.display()),
        )
    };
    let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
    let mut lines = text.lines();
    let (Some(boot), Some(epoch), None) = (lines.next(), lines.next(), lines.next()) else {
        return Err(bad("want two lines: boot id, power epoch"));
    };
    let epoch = epoch.parse().map_err(|_| bad("power epoch is no number"))?;
    if boot.is_empty() || epoch == 0 {
        return Err(bad("empty boot id or zero power epoch"));
    }
    Ok((boot.to_owned(), epoch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sim::SimDisk;

    #[tokio::test]
    async fn the_epoch_rises_on_a_power_loss_and_not_on_a_process_kill() {
        let sim = Arc::new(SimDisk::new("power", 7));
        let disk = Arc::clone(&sim) as Arc<dyn Disk>;
        let path = Path::new("/replica/power");
        let first = open(&disk, path).await.unwrap();
        assert_eq!(
            first,
            Power {
                epoch: 1,
                lost_at_start: false
            }
        );
        sim.kill_process();
        assert_eq!(open(&disk, path).await.unwrap(), first);
        sim.crash_tearing();
        let after = open(&disk, path).await.unwrap();
        assert_eq!(
            after,
            Power {
                epoch: 2,
                lost_at_start: true
            }
        );
        // Started again in the same boot: nothing more was lost.
        sim.kill_process();
        assert_eq!(
            open(&disk, path).await.unwrap(),
            Power {
                epoch: 2,
                lost_at_start: false
            }
        );
    }

    #[test]
    fn a_damaged_record_is_refused_with_its_path() {
        let path = Path::new("/x/power");
        for bad in [
            &b"only-one-line\n"[..],
            b"boot\nnotanumber\n",
            b"boot\n0\n",
            b"\xff\n1\n",
        ] {
            let e = decode(path, bad).unwrap_err();
            assert!(e.to_string().starts_with("/x/power: "), "{e}");
        }
        assert_eq!(decode(path, b"b\n3\n").unwrap(), ("b".into(), 3));
    }
}
