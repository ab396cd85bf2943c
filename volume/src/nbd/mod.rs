//! NBD front end (fixed newstyle handshake, structured replies, `base:allocation`).
