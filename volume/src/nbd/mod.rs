//! NBD front end: the protocol codec and the server that exports [`BlockVolume`]s to QEMU,
//! libnbd, fio and the kernel client.
//!
//! Spec: the NBD protocol document (`doc/proto.md` of the NBD project). Supported: the fixed
//! newstyle handshake with `NBD_OPT_GO`/`INFO`/`LIST`/`ABORT`/`EXPORT_NAME`, structured
//! replies, the `base:allocation` metadata context, `NBD_INFO_BLOCK_SIZE`; commands READ,
//! WRITE, FLUSH, TRIM, WRITE_ZEROES (with NO_HOLE and FAST_ZERO), BLOCK_STATUS (with REQ_ONE)
//! and DISC, FUA on all of them; pipelined requests answered out of order; TCP and Unix
//! sockets; `NBD_OPT_STARTTLS` with a caller's rustls configuration, off, optional or required
//! ([`NbdTls`]), the client's verified certificates reaching the export seam ([`Peer`]). Not
//! supported, and answered as such: extended headers, NBD_CMD_CACHE.
//!
//! Code map, from the wire inwards:
//! - [`proto`]: constants and frame codecs, no IO; look values up here.
//! - [`options`]: option data parsing and option reply payloads, no IO.
//! - [`request`]: checks a request against the export and the negotiation, no IO; every errno
//!   of a refused request is decided there.
//! - `dispatch`: runs a checked request against the volume and encodes the reply.
//! - [`exports`]: where a connection's export comes from: a fixed list, or a driver that
//!   opens volumes on a client's first `NBD_OPT_GO` and holds them while connections last.
//! - `peer`: who the client is, as the export seam sees it.
//! - `handshake`: the option haggling state machine over a socket.
//! - `tls`: the TLS policy and a connection's upgrade after STARTTLS.
//! - `transmission`: reader, per-request tasks and the reply writer of one connection.
//! - `server`: [`NbdServer`], listeners, connection lifecycle and shutdown. Start here.
//! - `wire`: reading whole frames and payloads off a socket (end of stream vs truncation).
//!
//! Architecture invariant: the codec modules (`proto`, `options`, `request`) never do IO, so
//! they can be property tested and benchmarked in isolation.
//!
//! [`BlockVolume`]: crate::volume::BlockVolume

mod dispatch;
pub mod exports;
mod handshake;
pub mod options;
mod peer;
pub mod proto;
pub mod request;
mod server;
mod tls;
mod transmission;
mod wire;

pub use dispatch::{BLOCK_STATUS_DESCRIPTORS_MAX, block_descriptors};
pub use exports::{
    Described, ExportError, Exports, FixedExports, Listed, Opened, describe_volume, payload_max_of,
};
pub use handshake::{BASE_ALLOCATION_CONTEXT_ID, OPTION_DATA_MAX_BYTES, OPTIONS_PER_HANDSHAKE_MAX};
pub use peer::Peer;
pub use server::{
    NbdConfig, NbdConfigError, NbdServer, PAYLOAD_MAX_BYTES, PREFERRED_BLOCK_BYTES,
    REQUESTS_IN_FLIGHT_MAX_DEFAULT, REQUESTS_IN_FLIGHT_MAX_LIMIT,
};
pub use tls::{NbdTls, TLS_HANDSHAKE_TIMEOUT_MS, TLS_REQUIRED_MESSAGE, TlsError};
pub use transmission::WRITE_DRAIN_MAX_BYTES;
