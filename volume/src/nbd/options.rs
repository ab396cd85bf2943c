//! Option data of the handshake phase: parsing what clients send and building reply payloads,
//! without IO.
//!
//! Option data arrives whole (the handshake reads at most `option_data_max_bytes`), so parsers
//! take a slice and refuse anything that does not add up exactly: a length that points past
//! the end, trailing bytes, a string over the protocol's 4096-byte limit.

use bytes::{BufMut, BytesMut};

use super::proto::{
    BASE_ALLOCATION, NBD_INFO_BLOCK_SIZE, NBD_INFO_DESCRIPTION, NBD_INFO_EXPORT, NBD_INFO_NAME,
    STRING_MAX_BYTES,
};

/// Option data that does not parse; answered with `NBD_REP_ERR_INVALID`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionDataError {
    #[error("option data ends early: {0}")]
    Truncated(&'static str),
    #[error("{0} trailing bytes after the option data")]
    Trailing(usize),
    #[error("string of {0} bytes exceeds the protocol limit")]
    StringTooLong(usize),
    #[error("string is not valid UTF-8")]
    NotUtf8,
}

/// `NBD_OPT_INFO` / `NBD_OPT_GO` data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    /// Empty means the default export.
    pub export: &'a [u8],
    /// `NBD_INFO_*` types asked for; unknown ones are ignored by the server.
    pub requests: Vec<u16>,
}

impl InfoRequest<'_> {
    pub fn wants(&self, info: u16) -> bool {
        self.requests.contains(&info)
    }
}

/// `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT` data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest<'a> {
    pub export: &'a [u8],
    pub queries: Vec<&'a str>,
}

/// A cursor over option data that never reads past the end.
struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], OptionDataError> {
        if self.data.len() < n {
            return Err(OptionDataError::Truncated(what));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, OptionDataError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, OptionDataError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A string prefixed by its 32-bit length.
    fn string(&mut self, what: &'static str) -> Result<&'a [u8], OptionDataError> {
        let len = self.u32(what)? as usize;
        if len > STRING_MAX_BYTES {
            return Err(OptionDataError::StringTooLong(len));
        }
        self.take(len, what)
    }

    fn finish(self) -> Result<(), OptionDataError> {
        match self.data.len() {
            0 => Ok(()),
            n => Err(OptionDataError::Trailing(n)),
        }
    }
}

/// Parses `NBD_OPT_INFO` / `NBD_OPT_GO` data.
pub fn parse_info_request(data: &[u8]) -> Result<InfoRequest<'_>, OptionDataError> {
    let mut c = Cursor { data };
    let export = c.string("export name")?;
    let count = c.u16("information request count")?;
    let mut requests = Vec::with_capacity(usize::from(count).min(16));
    for _ in 0..count {
        requests.push(c.u16("information request")?);
    }
    c.finish()?;
    Ok(InfoRequest { export, requests })
}

/// Parses `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT` data.
pub fn parse_meta_context_request(data: &[u8]) -> Result<MetaContextRequest<'_>, OptionDataError> {
    let mut c = Cursor { data };
    let export = c.string("export name")?;
    let count = c.u32("query count")?;
    // Each query needs at least its 4-byte length, so a huge count fails on truncation
    // before it can make us allocate.
    let mut queries = Vec::new();
    for _ in 0..count {
        let q = c.string("query")?;
        queries.push(std::str::from_utf8(q).map_err(|_| OptionDataError::NotUtf8)?);
    }
    c.finish()?;
    Ok(MetaContextRequest { export, queries })
}

/// Which of our contexts a query selects.
///
/// `LIST` treats the bare namespace `base:` as a wildcard; `SET` must ignore it. Queries in
/// other namespaces and unknown leaf names select nothing and are not errors.
pub fn query_selects_base_allocation(query: &str, listing: bool) -> bool {
    query == BASE_ALLOCATION || (listing && query == "base:")
}

/// `NBD_REP_SERVER` data: the export name, then a human-readable description.
pub fn server_reply_data(name: &str, description: &str) -> BytesMut {
    let mut buf = BytesMut::with_capacity(4 + name.len() + description.len());
    buf.put_u32(name.len() as u32);
    buf.put_slice(name.as_bytes());
    buf.put_slice(description.as_bytes());
    buf
}

/// `NBD_REP_INFO` data of type `NBD_INFO_EXPORT`.
pub fn info_export(size_bytes: u64, transmission_flags: u16) -> BytesMut {
    let mut buf = BytesMut::with_capacity(12);
    buf.put_u16(NBD_INFO_EXPORT);
    buf.put_u64(size_bytes);
    buf.put_u16(transmission_flags);
    buf
}

/// `NBD_REP_INFO` data of type `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION`.
pub fn info_string(info: u16, text: &str) -> BytesMut {
    assert!(info == NBD_INFO_NAME || info == NBD_INFO_DESCRIPTION);
    let mut buf = BytesMut::with_capacity(2 + text.len());
    buf.put_u16(info);
    buf.put_slice(text.as_bytes());
    buf
}

/// `NBD_REP_INFO` data of type `NBD_INFO_BLOCK_SIZE`.
pub fn info_block_size(minimum: u32, preferred: u32, maximum: u32) -> BytesMut {
    // The document's constraints on the three sizes; the server validates its exports so
    // that these hold, and a violation here is a bug.
    assert!(minimum.is_power_of_two() && minimum <= 65_536);
    assert!(preferred.is_power_of_two() && preferred >= minimum.max(512));
    assert!(maximum.is_multiple_of(minimum) && maximum >= preferred);
    let mut buf = BytesMut::with_capacity(14);
    buf.put_u16(NBD_INFO_BLOCK_SIZE);
    buf.put_u32(minimum);
    buf.put_u32(preferred);
    buf.put_u32(maximum);
    buf
}

/// `NBD_REP_META_CONTEXT` data.
pub fn meta_context_reply_data(context_id: u32, name: &str) -> BytesMut {
    let mut buf = BytesMut::with_capacity(4 + name.len());
    buf.put_u32(context_id);
    buf.put_slice(name.as_bytes());
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info_data(name: &[u8], requests: &[u16]) -> Vec<u8> {
        let mut v = (name.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(name);
        v.extend_from_slice(&(requests.len() as u16).to_be_bytes());
        for r in requests {
            v.extend_from_slice(&r.to_be_bytes());
        }
        v
    }

    fn meta_data(name: &[u8], queries: &[&str]) -> Vec<u8> {
        let mut v = (name.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(name);
        v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            v.extend_from_slice(&(q.len() as u32).to_be_bytes());
            v.extend_from_slice(q.as_bytes());
        }
        v
    }

    #[test]
    fn go_data_names_the_export_and_the_info_wanted() {
        let data = info_data(b"vol0", &[NBD_INFO_NAME, NBD_INFO_BLOCK_SIZE]);
        let req = parse_info_request(&data).unwrap();
        assert_eq!(req.export, b"vol0");
        assert!(req.wants(NBD_INFO_BLOCK_SIZE));
        assert!(!req.wants(NBD_INFO_DESCRIPTION));
    }

    #[test]
    fn go_data_that_does_not_add_up_is_invalid() {
        let good = info_data(b"vol0", &[NBD_INFO_NAME]);
        assert!(matches!(
            parse_info_request(&good[..good.len() - 1]),
            Err(OptionDataError::Truncated(_))
        ));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(parse_info_request(&long), Err(OptionDataError::Trailing(1)));
        let mut lying = good;
        lying[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            parse_info_request(&lying),
            Err(OptionDataError::StringTooLong(_))
        ));
    }

    #[test]
    fn meta_context_queries_are_parsed_in_order() {
        let data = meta_data(b"", &["base:allocation", "qemu:dirty-bitmap:x"]);
        let req = parse_meta_context_request(&data).unwrap();
        assert_eq!(req.export, b"");
        assert_eq!(req.queries, vec!["base:allocation", "qemu:dirty-bitmap:x"]);
    }

    #[test]
    fn a_huge_query_count_fails_without_allocating() {
        let mut data = meta_data(b"v", &[]);
        let n = data.len();
        data[n - 4..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            parse_meta_context_request(&data),
            Err(OptionDataError::Truncated(_))
        ));
    }

    #[test]
    fn base_namespace_is_a_wildcard_only_when_listing() {
        assert!(query_selects_base_allocation("base:", true));
        assert!(!query_selects_base_allocation("base:", false));
        assert!(query_selects_base_allocation("base:allocation", false));
        assert!(!query_selects_base_allocation("base:unknown", true));
        assert!(!query_selects_base_allocation(
            "qemu:allocation-depth",
            true
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_option_data_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = parse_info_request(&bytes);
            let _ = parse_meta_context_request(&bytes);
        }

        #[test]
        fn info_requests_round_trip(name in proptest::collection::vec(any::<u8>(), 0..64),
                                    requests in proptest::collection::vec(any::<u16>(), 0..8)) {
            let data = info_data(&name, &requests);
            let req = parse_info_request(&data).unwrap();
            prop_assert_eq!(req.export, &name[..]);
            prop_assert_eq!(req.requests, requests);
        }
    }
}
