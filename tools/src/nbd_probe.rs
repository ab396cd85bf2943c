//! A minimal, blocking NBD client that times one thing: how long a fresh connection waits
//! from its `NBD_OPT_GO` to the completion of its first read. That is what a hypervisor pays
//! to open a disk, and where a gateway that attaches a volume on demand puts its attach.
//!
//! The client speaks fixed newstyle, asks for no structured replies (so the read's answer is
//! a simple reply) and reads one block at offset 0. Every length that comes off the socket is
//! checked against a limit before anything is allocated for it.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use volume::nbd::proto::{
    NBD_CMD_DISC, NBD_CMD_READ, NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES,
    NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_NO_ZEROES, NBD_INFO_EXPORT, NBD_MAGIC, NBD_OPT_GO,
    NBD_OPTS_MAGIC, NBD_REP_ACK, NBD_REP_FLAG_ERROR, NBD_REP_INFO, NBD_REP_MAGIC,
    NBD_REQUEST_MAGIC, NBD_SIMPLE_REPLY_MAGIC,
};

/// The port an `nbd://` URI without one means.
pub const NBD_PORT_DEFAULT: u16 = 10809;
/// Bytes of the first read.
pub const FIRST_READ_BYTES: u32 = 4096;
/// The longest option reply the probe accepts (an error message, an info block).
const OPTION_REPLY_BYTES_MAX: u32 = 64 * 1024;
/// Option replies the probe reads before the `NBD_REP_ACK` that ends `NBD_OPT_GO`.
const OPTION_REPLIES_MAX: usize = 64;
/// How long any one step may wait for the server: generous, since a gateway attaching a
/// volume on demand answers `NBD_OPT_GO` only once the volume is attached.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest export name the NBD protocol allows.
const EXPORT_NAME_BYTES_MAX: usize = 4096;

/// Where an NBD URI points: a TCP address or a Unix socket, and the export's name.
#[derive(Debug, PartialEq, Eq)]
pub struct NbdUri {
    pub endpoint: Endpoint,
    pub export: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Unix { socket: String },
}

impl NbdUri {
    /// Parses `nbd://HOST[:PORT]/NAME` and `nbd+unix:///NAME?socket=PATH` (the forms
    /// `nbdinfo` and `qemu-img` take). TLS schemes and percent-escapes are refused.
    pub fn parse(uri: &str) -> anyhow::Result<Self> {
        if let Some(rest) = uri.strip_prefix("nbd://") {
            let (authority, export) = rest.split_once('/').unwrap_or((rest, ""));
            let port_of = |p: &str| -> anyhow::Result<u16> {
                p.parse().with_context(|| format!("port of NBD URI {uri}"))
            };
            let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
                let (host, after) = bracketed
                    .split_once(']')
                    .with_context(|| format!("NBD URI {uri}: unclosed ["))?;
                match after.strip_prefix(':') {
                    Some(p) => (host, port_of(p)?),
                    None if after.is_empty() => (host, NBD_PORT_DEFAULT),
                    None => bail!("NBD URI {uri}: text after the address"),
                }
            } else {
                match authority.rsplit_once(':') {
                    Some((host, p)) => (host, port_of(p)?),
                    None => (authority, NBD_PORT_DEFAULT),
                }
            };
            ensure!(!host.is_empty(), "NBD URI {uri} names no host");
            let uri = NbdUri {
                endpoint: Endpoint::Tcp {
                    host: host.to_string(),
                    port,
                },
                export: export.to_string(),
            };
            return uri.checked();
        }
        if let Some(rest) = uri.strip_prefix("nbd+unix://") {
            let rest = rest
                .strip_prefix('/')
                .with_context(|| format!("NBD URI {uri}: no host goes before a Unix socket"))?;
            let (export, query) = rest
                .split_once('?')
                .with_context(|| format!("NBD URI {uri} names no ?socket="))?;
            let socket = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("socket="))
                .with_context(|| format!("NBD URI {uri} names no ?socket="))?;
            let uri = NbdUri {
                endpoint: Endpoint::Unix {
                    socket: socket.to_string(),
                },
                export: export.to_string(),
            };
            return uri.checked();
        }
        bail!("not an nbd:// or nbd+unix:// URI: {uri}")
    }

    fn checked(self) -> anyhow::Result<Self> {
        ensure!(
            self.export.len() <= EXPORT_NAME_BYTES_MAX,
            "export name longer than {EXPORT_NAME_BYTES_MAX} bytes"
        );
        ensure!(
            !self.export.contains('%'),
            "percent-escaped export names are not supported: {}",
            self.export
        );
        Ok(self)
    }
}

/// Either socket, read and written the same way.
trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// Connects to `uri`, completes the greeting, then times from sending `NBD_OPT_GO` for its
/// export to the arrival of the whole reply to a read of [`FIRST_READ_BYTES`] at offset 0.
/// The connection is closed politely (`NBD_CMD_DISC`) afterwards. An export the server
/// refuses, a failed read or a malformed frame is an error.
pub fn first_read_after_go(uri: &str) -> anyhow::Result<Duration> {
    let parsed = NbdUri::parse(uri)?;
    let mut stream: Box<dyn Stream> = match &parsed.endpoint {
        Endpoint::Tcp { host, port } => {
            let addr = (host.as_str(), *port)
                .to_socket_addrs()
                .with_context(|| format!("resolve {host}"))?
                .next()
                .with_context(|| format!("{host} resolves to no address"))?;
            let s = TcpStream::connect_timeout(&addr, STEP_TIMEOUT)
                .with_context(|| format!("connect to {addr}"))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(STEP_TIMEOUT))?;
            s.set_write_timeout(Some(STEP_TIMEOUT))?;
            Box::new(s)
        }
        Endpoint::Unix { socket } => {
            let s = UnixStream::connect(socket).with_context(|| format!("connect to {socket}"))?;
            s.set_read_timeout(Some(STEP_TIMEOUT))?;
            s.set_write_timeout(Some(STEP_TIMEOUT))?;
            Box::new(s)
        }
    };
    let s = stream.as_mut();

    // Greeting: NBDMAGIC, IHAVEOPT, handshake flags; the client answers with its flags.
    ensure!(read_u64(s)? == NBD_MAGIC, "{uri}: not an NBD server");
    ensure!(
        read_u64(s)? == NBD_OPTS_MAGIC,
        "{uri}: the server does not speak newstyle NBD"
    );
    let handshake = read_u16(s)?;
    ensure!(
        handshake & NBD_FLAG_FIXED_NEWSTYLE != 0,
        "{uri}: the server does not speak fixed newstyle NBD"
    );
    let mut client_flags = NBD_FLAG_C_FIXED_NEWSTYLE;
    if handshake & NBD_FLAG_NO_ZEROES != 0 {
        client_flags |= NBD_FLAG_C_NO_ZEROES;
    }
    s.write_all(&client_flags.to_be_bytes())?;

    // NBD_OPT_GO: the export's name and no information requests.
    let name = parsed.export.as_bytes();
    let mut go = Vec::with_capacity(16 + 4 + name.len() + 2);
    go.extend_from_slice(&NBD_OPTS_MAGIC.to_be_bytes());
    go.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
    go.extend_from_slice(&u32::try_from(4 + name.len() + 2)?.to_be_bytes());
    go.extend_from_slice(&u32::try_from(name.len())?.to_be_bytes());
    go.extend_from_slice(name);
    go.extend_from_slice(&0u16.to_be_bytes());
    let started = Instant::now();
    s.write_all(&go)?;
    let size = go_replies(s, uri)?;
    ensure!(size > 0, "{uri}: the export is empty");

    // One read at offset 0, answered by a simple reply and its data.
    let len = u32::try_from(size.min(u64::from(FIRST_READ_BYTES)))?;
    let cookie = 1u64;
    s.write_all(&request(NBD_CMD_READ, cookie, 0, len))?;
    ensure!(
        read_u32(s)? == NBD_SIMPLE_REPLY_MAGIC,
        "{uri}: the read's reply is not a simple reply"
    );
    let error = read_u32(s)?;
    ensure!(
        read_u64(s)? == cookie,
        "{uri}: a reply to a request not sent"
    );
    ensure!(
        error == 0,
        "{uri}: the first read failed with NBD error {error}"
    );
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data).context("read the first block")?;
    let elapsed = started.elapsed();

    // NBD_CMD_DISC has no reply; a server that already closed is no error of the probe.
    let _ = s.write_all(&request(NBD_CMD_DISC, cookie + 1, 0, 0));
    Ok(elapsed)
}

/// Reads `NBD_OPT_GO`'s replies up to its `NBD_REP_ACK`; returns the export's size.
fn go_replies(s: &mut dyn Stream, uri: &str) -> anyhow::Result<u64> {
    let mut size = None;
    for _ in 0..OPTION_REPLIES_MAX {
        ensure!(
            read_u64(s)? == NBD_REP_MAGIC,
            "{uri}: malformed option reply"
        );
        ensure!(
            read_u32(s)? == NBD_OPT_GO,
            "{uri}: a reply to an option not sent"
        );
        let kind = read_u32(s)?;
        let len = read_u32(s)?;
        ensure!(
            len <= OPTION_REPLY_BYTES_MAX,
            "{uri}: option reply of {len} bytes (at most {OPTION_REPLY_BYTES_MAX})"
        );
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        if kind & NBD_REP_FLAG_ERROR != 0 {
            bail!(
                "{uri}: the server refused NBD_OPT_GO (reply {kind:#x}): {}",
                String::from_utf8_lossy(&data)
            );
        }
        match kind {
            NBD_REP_ACK => return size.with_context(|| format!("{uri}: no export size sent")),
            NBD_REP_INFO if data.len() >= 2 => {
                let info = u16::from_be_bytes([data[0], data[1]]);
                if info == NBD_INFO_EXPORT {
                    // type (2), size (8), transmission flags (2)
                    ensure!(data.len() == 12, "{uri}: NBD_INFO_EXPORT of {len} bytes");
                    size = Some(u64::from_be_bytes(data[2..10].try_into().expect("8 bytes")));
                }
            }
            _ => {}
        }
    }
    bail!("{uri}: more than {OPTION_REPLIES_MAX} replies to NBD_OPT_GO")
}

/// A request header: magic, flags, type, cookie, offset, length.
fn request(kind: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut r = Vec::with_capacity(28);
    r.extend_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
    r.extend_from_slice(&0u16.to_be_bytes());
    r.extend_from_slice(&kind.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&len.to_be_bytes());
    r
}

fn read_u16(s: &mut dyn Stream) -> anyhow::Result<u16> {
    let mut b = [0u8; 2];
    s.read_exact(&mut b).context("read from the NBD server")?;
    Ok(u16::from_be_bytes(b))
}

fn read_u32(s: &mut dyn Stream) -> anyhow::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b).context("read from the NBD server")?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(s: &mut dyn Stream) -> anyhow::Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b).context("read from the NBD server")?;
    Ok(u64::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16, export: &str) -> NbdUri {
        NbdUri {
            endpoint: Endpoint::Tcp {
                host: host.into(),
                port,
            },
            export: export.into(),
        }
    }

    #[test]
    fn uris_the_nbd_tools_take_are_understood() {
        assert_eq!(
            NbdUri::parse("nbd://127.0.0.1:10900/vol0").unwrap(),
            tcp("127.0.0.1", 10900, "vol0")
        );
        assert_eq!(
            NbdUri::parse("nbd://localhost/vol0").unwrap(),
            tcp("localhost", NBD_PORT_DEFAULT, "vol0")
        );
        assert_eq!(
            NbdUri::parse("nbd://[::1]:10900/v").unwrap(),
            tcp("::1", 10900, "v")
        );
        assert_eq!(
            NbdUri::parse("nbd://[::1]/v").unwrap(),
            tcp("::1", NBD_PORT_DEFAULT, "v")
        );
        assert_eq!(
            NbdUri::parse("nbd://127.0.0.1:10900").unwrap(),
            tcp("127.0.0.1", 10900, "")
        );
        assert_eq!(
            NbdUri::parse("nbd+unix:///vol0?socket=/run/fabric.sock").unwrap(),
            NbdUri {
                endpoint: Endpoint::Unix {
                    socket: "/run/fabric.sock".into()
                },
                export: "vol0".into(),
            }
        );
    }

    #[test]
    fn uris_the_probe_cannot_follow_are_refused() {
        for bad in [
            "nbds://127.0.0.1/vol0",
            "http://127.0.0.1/vol0",
            "nbd://:10809/vol0",
            "nbd://127.0.0.1:port/vol0",
            "nbd+unix:///vol0",
            "nbd://127.0.0.1/vol%200",
        ] {
            assert!(NbdUri::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
