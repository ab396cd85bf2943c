//! The fixed newstyle handshake: greeting, client flags and option haggling, ending in the
//! transmission phase (`NBD_OPT_GO`, `NBD_OPT_EXPORT_NAME`), a TLS upgrade
//! (`NBD_OPT_STARTTLS`, after which haggling resumes over TLS) or a closed connection.
//!
//! Policy, in the document's terms: the server's [`NbdTls`] picks NOTLS (`NBD_OPT_STARTTLS`
//! gets `NBD_REP_ERR_POLICY`), SELECTIVETLS with no TLS-only export, or FORCEDTLS (every
//! option but STARTTLS and ABORT gets `NBD_REP_ERR_TLS_REQD` before TLS, and
//! `NBD_OPT_EXPORT_NAME`, which cannot be refused, closes the connection); a client without
//! fixed newstyle gets NOTLS, and so is closed by a server that requires TLS. Compact headers
//! only (`NBD_OPT_EXTENDED_HEADERS` gets `NBD_REP_ERR_UNSUP`), one metadata context
//! (`base:allocation`), block size constraints always advertised. Options the server
//! does not know are answered, never fatal; framing errors and oversized option data end the
//! connection because the stream can no longer be trusted.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::exports::{Described, ExportError, Opened};
use super::options::*;
use super::peer::Peer;
use super::proto::*;
use super::request::Negotiated;
use super::server::{NbdServer, PREFERRED_BLOCK_BYTES};
use super::tls::{NbdTls, TLS_REQUIRED_MESSAGE};
use super::wire::{Frame, read_frame};

/// Largest option data accepted, in bytes. Real options are a few strings of at most 4 KiB;
/// anything bigger is refused with `NBD_REP_ERR_TOO_BIG` and the connection closed, since
/// skipping it would mean reading an attacker-chosen amount.
pub const OPTION_DATA_MAX_BYTES: u32 = 64 * 1024;
/// Most options in one handshake. Clients send a handful; a client looping forever is
/// holding a connection slot without purpose.
pub const OPTIONS_PER_HANDSHAKE_MAX: u32 = 1024;
/// Context id of `base:allocation` in `NBD_REP_META_CONTEXT` replies to SET.
pub const BASE_ALLOCATION_CONTEXT_ID: u32 = 1;

/// Where the handshake ended.
#[derive(Debug)]
pub enum Outcome {
    /// Transmission starts on this export.
    Transmission(Session),
    /// `NBD_OPT_STARTTLS` was acknowledged: the TLS handshake comes next on this socket, with
    /// this configuration, then haggling resumes over TLS.
    StartTls(Arc<ServerConfig>),
    /// The client left during the handshake (`NBD_OPT_ABORT` or end of stream).
    ClientLeft(&'static str),
}

/// What the transmission phase needs from the handshake.
#[derive(Debug)]
pub struct Session {
    /// The export, open (and its lease held) for the life of the connection; its size is the
    /// one announced to the client, which the transmission checks requests against.
    pub export: Opened,
    pub negotiated: Negotiated,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// The client broke the protocol; log it and close.
    #[error("{0}")]
    Protocol(String),
}

/// Where a connection stands with TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsStage {
    /// NOTLS for this connection: the server does not offer TLS, or the client does not speak
    /// fixed newstyle, without which the document forbids TLS.
    NotOffered,
    /// The client may start TLS or carry on in plaintext.
    Offered,
    /// Nothing but STARTTLS (or ABORT) until the client starts TLS.
    Required,
    /// Haggling runs over TLS.
    Running,
}

/// State negotiated so far. It outlives a STARTTLS: haggling resumes with it over TLS.
#[derive(Debug)]
pub struct Haggle {
    no_zeroes: bool,
    structured: bool,
    /// Export for which `base:allocation` was selected by the last SET_META_CONTEXT.
    meta_export: Option<String>,
    tls: TlsStage,
    /// Options received on this connection, before and after STARTTLS.
    options: u32,
}

impl Haggle {
    /// Haggling resumes over TLS. What was negotiated in plaintext is forgotten: a
    /// man in the middle could have chosen it, and the client negotiates again anyway.
    pub fn tls_started(&mut self) {
        self.structured = false;
        self.meta_export = None;
        self.tls = TlsStage::Running;
    }
}

/// Sends the greeting and reads the client's flags. `None`: the client left first.
pub async fn greet<R, W>(
    server: &NbdServer,
    r: &mut R,
    w: &mut W,
) -> Result<Option<Haggle>, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(GREETING_BYTES);
    put_greeting(&mut out, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    send(w, &mut out).await?;

    let mut flags = [0u8; 4];
    match read_frame(r, &mut flags).await? {
        Frame::Full => {}
        Frame::Eof | Frame::Truncated { .. } => return Ok(None),
    }
    let client_flags = u32::from_be_bytes(flags);
    if client_flags & !NBD_FLAG_C_KNOWN != 0 {
        // The document requires dropping a client that sets flags we did not offer.
        return Err(HandshakeError::Protocol(format!(
            "unknown client flags {client_flags:#x}"
        )));
    }
    let fixed = client_flags & NBD_FLAG_C_FIXED_NEWSTYLE != 0;
    let tls = match (&server.tls, fixed) {
        (NbdTls::Required(_), false) => {
            // Without fixed newstyle there is no STARTTLS, so nothing this client could send
            // would be served.
            return Err(HandshakeError::Protocol(
                "client does not speak fixed newstyle, which TLS needs; this server requires TLS"
                    .into(),
            ));
        }
        (NbdTls::Off, _) | (_, false) => TlsStage::NotOffered,
        (NbdTls::Optional(_), true) => TlsStage::Offered,
        (NbdTls::Required(_), true) => TlsStage::Required,
    };
    Ok(Some(Haggle {
        no_zeroes: client_flags & NBD_FLAG_C_NO_ZEROES != 0,
        structured: false,
        meta_export: None,
        tls,
        options: 0,
    }))
}

/// Haggles over options until the client picks an export, starts TLS or leaves.
pub async fn haggle<R, W>(
    server: &NbdServer,
    state: &mut Haggle,
    peer: &Peer,
    r: &mut R,
    w: &mut W,
) -> Result<Outcome, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(256);
    let mut header = [0u8; OPTION_HEADER_BYTES];
    while state.options < OPTIONS_PER_HANDSHAKE_MAX {
        state.options += 1;
        match read_frame(r, &mut header).await? {
            Frame::Full => {}
            Frame::Eof => return Ok(Outcome::ClientLeft("closed during option haggling")),
            Frame::Truncated { got } => {
                return Err(HandshakeError::Protocol(format!(
                    "option header truncated after {got} bytes"
                )));
            }
        }
        let opt = OptionHeader::parse(&header)
            .map_err(|e| HandshakeError::Protocol(format!("option header: {e}")))?;
        if opt.len > OPTION_DATA_MAX_BYTES {
            put_option_reply(
                &mut out,
                opt.option,
                NBD_REP_ERR_TOO_BIG,
                b"option data too large",
            );
            send(w, &mut out).await?;
            return Err(HandshakeError::Protocol(format!(
                "option {} carries {} bytes of data, limit is {OPTION_DATA_MAX_BYTES}",
                opt.option, opt.len
            )));
        }
        let mut data = vec![0u8; opt.len as usize];
        match read_frame(r, &mut data).await? {
            Frame::Full => {}
            Frame::Eof | Frame::Truncated { .. } => {
                return Err(HandshakeError::Protocol(format!(
                    "option {} data truncated",
                    opt.option
                )));
            }
        }
        if let Some(outcome) =
            handle_option(server, state, peer, opt.option, &data, &mut out).await?
        {
            send(w, &mut out).await?;
            return Ok(outcome);
        }
        send(w, &mut out).await?;
    }
    Err(HandshakeError::Protocol(format!(
        "more than {OPTIONS_PER_HANDSHAKE_MAX} options"
    )))
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, out: &mut BytesMut) -> io::Result<()> {
    w.write_all(out).await?;
    w.flush().await?;
    out.clear();
    Ok(())
}

/// The transmission flags of an export for this connection.
pub fn transmission_flags(multi_conn: bool, structured: bool) -> u16 {
    let mut flags = NBD_FLAG_HAS_FLAGS
        | NBD_FLAG_SEND_FLUSH
        | NBD_FLAG_SEND_FUA
        | NBD_FLAG_SEND_TRIM
        | NBD_FLAG_SEND_WRITE_ZEROES
        | NBD_FLAG_SEND_FAST_ZERO;
    if structured {
        // Reads are always answered in one chunk, so "don't fragment" costs nothing; the
        // document forbids advertising it without structured replies.
        flags |= NBD_FLAG_SEND_DF;
    }
    if multi_conn {
        flags |= NBD_FLAG_CAN_MULTI_CONN;
    }
    flags
}

/// The export a client's name selects: the default one for the empty name. Names that are
/// not UTF-8 name nothing this server has.
fn resolve(server: &NbdServer, name: &[u8]) -> Result<String, ExportError> {
    if name.is_empty() {
        return server.exports.default_name().ok_or_else(|| {
            ExportError::Unavailable("this server has no default export; name one".into())
        });
    }
    std::str::from_utf8(name)
        .map(str::to_owned)
        .map_err(|_| ExportError::Unavailable("export names are UTF-8".into()))
}

/// Describes the export `name` selects, for `peer`.
async fn describe(server: &NbdServer, peer: &Peer, name: &[u8]) -> Result<Described, ExportError> {
    let name = resolve(server, name)?;
    server.exports.describe(peer, &name).await
}

/// Opens the export `name` selects, for this connection of `peer`.
async fn open(server: &NbdServer, peer: &Peer, name: &[u8]) -> Result<Opened, ExportError> {
    let name = resolve(server, name)?;
    server.exports.open(peer, &name).await
}

/// The error reply of an export that cannot be described or opened.
fn put_export_error(out: &mut BytesMut, option: u32, error: &ExportError) {
    let (reply, message) = match error {
        ExportError::Unavailable(m) => (NBD_REP_ERR_UNKNOWN, m),
        ExportError::Refused(m) => (NBD_REP_ERR_POLICY, m),
    };
    put_option_reply(out, option, reply, clip(message).as_bytes());
}

/// `message` cut to the protocol's longest string at a character boundary. Refusals say
/// what to do (a command to run), so they get the whole of it, not an error chunk's share.
fn clip(message: &str) -> &str {
    let mut end = message.len().min(STRING_MAX_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// Answers one option into `out`. Returns the outcome when the option ends the handshake.
async fn handle_option(
    server: &NbdServer,
    state: &mut Haggle,
    peer: &Peer,
    option: u32,
    data: &[u8],
    out: &mut BytesMut,
) -> Result<Option<Outcome>, HandshakeError> {
    let invalid = |out: &mut BytesMut, why: &str| {
        put_option_reply(out, option, NBD_REP_ERR_INVALID, why.as_bytes())
    };
    if state.tls == TlsStage::Required && option != NBD_OPT_STARTTLS && option != NBD_OPT_ABORT {
        if option == NBD_OPT_EXPORT_NAME {
            // It has no error reply: closing is the only refusal.
            return Err(HandshakeError::Protocol(
                "NBD_OPT_EXPORT_NAME before STARTTLS; this server requires TLS".into(),
            ));
        }
        put_option_reply(
            out,
            option,
            NBD_REP_ERR_TLS_REQD,
            TLS_REQUIRED_MESSAGE.as_bytes(),
        );
        return Ok(None);
    }
    match option {
        NBD_OPT_STARTTLS if !data.is_empty() => invalid(out, "NBD_OPT_STARTTLS carries no data"),
        NBD_OPT_STARTTLS => match (state.tls, server.tls.config()) {
            (TlsStage::Running, _) => invalid(out, "TLS is already running on this connection"),
            (TlsStage::Offered | TlsStage::Required, Some(config)) => {
                put_option_reply(out, option, NBD_REP_ACK, &[]);
                return Ok(Some(Outcome::StartTls(Arc::clone(config))));
            }
            (TlsStage::NotOffered, _) | (_, None) => put_option_reply(
                out,
                option,
                NBD_REP_ERR_POLICY,
                b"this server does not offer TLS on this connection",
            ),
        },
        NBD_OPT_EXPORT_NAME => {
            // No error reply exists for this option: an export that cannot be opened ends
            // the session.
            let opened = open(server, peer, data).await.map_err(|e| {
                HandshakeError::Protocol(format!(
                    "NBD_OPT_EXPORT_NAME for {:?}: {e}",
                    String::from_utf8_lossy(data)
                ))
            })?;
            out.extend_from_slice(&opened.export.size_bytes.to_be_bytes());
            out.extend_from_slice(
                &transmission_flags(server.config.multi_conn, state.structured).to_be_bytes(),
            );
            if !state.no_zeroes {
                out.extend_from_slice(&[0u8; EXPORT_NAME_PADDING_BYTES]);
            }
            return Ok(Some(Outcome::Transmission(session(state, opened))));
        }
        NBD_OPT_ABORT => {
            // Data with ABORT is to be ignored, not refused.
            put_option_reply(out, option, NBD_REP_ACK, &[]);
            return Ok(Some(Outcome::ClientLeft("aborted the handshake")));
        }
        NBD_OPT_LIST if !data.is_empty() => invalid(out, "NBD_OPT_LIST carries no data"),
        NBD_OPT_LIST => match server.exports.list(peer).await {
            Ok(listed) => {
                for export in &listed {
                    put_option_reply(
                        out,
                        option,
                        NBD_REP_SERVER,
                        &server_reply_data(&export.name, &export.description),
                    );
                }
                put_option_reply(out, option, NBD_REP_ACK, &[]);
            }
            Err(e) => put_export_error(out, option, &e),
        },
        NBD_OPT_INFO | NBD_OPT_GO => {
            let request = match parse_info_request(data) {
                Ok(request) => request,
                Err(e) => {
                    invalid(out, &e.to_string());
                    return Ok(None);
                }
            };
            // INFO only describes; GO opens, which for a driver may mean attaching.
            let opened = if option == NBD_OPT_GO {
                open(server, peer, request.export)
                    .await
                    .map(|opened| (opened.export.clone(), Some(opened)))
            } else {
                describe(server, peer, request.export)
                    .await
                    .map(|d| (d, None))
            };
            let (described, opened) = match opened {
                Ok(d) => d,
                Err(e) => {
                    put_export_error(out, option, &e);
                    return Ok(None);
                }
            };
            put_export_info(server, &described, state.structured, &request, option, out);
            put_option_reply(out, option, NBD_REP_ACK, &[]);
            if let Some(opened) = opened {
                return Ok(Some(Outcome::Transmission(session(state, opened))));
            }
        }
        NBD_OPT_STRUCTURED_REPLY if !data.is_empty() => {
            invalid(out, "NBD_OPT_STRUCTURED_REPLY carries no data")
        }
        NBD_OPT_STRUCTURED_REPLY => {
            state.structured = true;
            put_option_reply(out, option, NBD_REP_ACK, &[]);
        }
        NBD_OPT_LIST_META_CONTEXT | NBD_OPT_SET_META_CONTEXT => {
            let setting = option == NBD_OPT_SET_META_CONTEXT;
            if setting {
                // SET replaces the selection even when it fails.
                state.meta_export = None;
            }
            if !state.structured {
                invalid(out, "negotiate structured replies first");
                return Ok(None);
            }
            let request = match parse_meta_context_request(data) {
                Ok(request) => request,
                Err(e) => {
                    invalid(out, &e.to_string());
                    return Ok(None);
                }
            };
            let export = match describe(server, peer, request.export).await {
                Ok(described) => described.name,
                Err(e) => {
                    put_export_error(out, option, &e);
                    return Ok(None);
                }
            };
            let selected = if setting {
                request
                    .queries
                    .iter()
                    .any(|q| query_selects_base_allocation(q, false))
            } else {
                // No query at all lists everything we have.
                request.queries.is_empty()
                    || request
                        .queries
                        .iter()
                        .any(|q| query_selects_base_allocation(q, true))
            };
            if selected {
                // Context ids in LIST replies are reserved and should be zero.
                let id = if setting {
                    BASE_ALLOCATION_CONTEXT_ID
                } else {
                    0
                };
                put_option_reply(
                    out,
                    option,
                    NBD_REP_META_CONTEXT,
                    &meta_context_reply_data(id, BASE_ALLOCATION),
                );
                if setting {
                    state.meta_export = Some(export);
                }
            }
            put_option_reply(out, option, NBD_REP_ACK, &[]);
        }
        // Compact headers only; everything else is unknown to us.
        _ => put_option_reply(out, option, NBD_REP_ERR_UNSUP, b"option not supported"),
    }
    Ok(None)
}

/// The `NBD_REP_INFO` replies of a successful INFO or GO.
fn put_export_info(
    server: &NbdServer,
    export: &Described,
    structured: bool,
    request: &InfoRequest<'_>,
    option: u32,
    out: &mut BytesMut,
) {
    let flags = transmission_flags(server.config.multi_conn, structured);
    put_option_reply(
        out,
        option,
        NBD_REP_INFO,
        &info_export(export.size_bytes, flags),
    );
    if request.wants(NBD_INFO_NAME) {
        put_option_reply(
            out,
            option,
            NBD_REP_INFO,
            &info_string(NBD_INFO_NAME, &export.name),
        );
    }
    if request.wants(NBD_INFO_DESCRIPTION) {
        put_option_reply(
            out,
            option,
            NBD_REP_INFO,
            &info_string(NBD_INFO_DESCRIPTION, &export.description),
        );
    }
    // Always sent: the maximum is smaller than the protocol's default, and a client that
    // did not ask may still use it.
    put_option_reply(
        out,
        option,
        NBD_REP_INFO,
        &info_block_size(1, PREFERRED_BLOCK_BYTES, export.payload_max_bytes),
    );
}

fn session(state: &Haggle, opened: Opened) -> Session {
    // Block status needs structured replies and a context selected for this very export.
    let base_allocation = (state.structured
        && state.meta_export.as_deref() == Some(opened.export.name.as_str()))
    .then_some(BASE_ALLOCATION_CONTEXT_ID);
    Session {
        export: opened,
        negotiated: Negotiated {
            structured_replies: state.structured,
            base_allocation,
        },
    }
}
