//! The Merkle tree of RFC 6962 §2.1 (SHA-256): leaves hashed with a 0x00 prefix, interior
//! nodes with 0x01, a tree of `n` leaves split at the largest power of two below `n`, so that
//! a leaf and a node can never be mistaken for each other and no leaf is ever duplicated.
//!
//! [`Frontier`] is the tree's right edge: the roots of the perfect subtrees that make up its
//! `size` leaves, one per set bit of `size`. It is all an append-only log needs to add a leaf
//! and to give its root, in O(log n) space; a log whose oldest leaves were pruned keeps the
//! frontier at the pruning point and still computes the same roots from there on.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A SHA-256 digest, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub fn hex(&self) -> String {
        crate::hex::encode(&self.0)
    }

    pub fn from_hex(s: &str) -> Option<Hash> {
        crate::hex::decode_array(s).map(Hash)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut text = [0u8; 64];
        s.serialize_str(crate::hex::encode_into(&self.0, &mut text))
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Hash::from_hex(&s).ok_or_else(|| serde::de::Error::custom("want 64 hex digits"))
    }
}

/// The hash of a leaf: SHA-256(0x00 ‖ data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    Hash(h.finalize().into())
}

/// The hash of an interior node: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left.0);
    h.update(right.0);
    Hash(h.finalize().into())
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Hash(Sha256::digest([]).into())
}

/// The right edge of a tree of `size` leaves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontier {
    size: u64,
    /// Roots of the perfect subtrees, largest (leftmost) first.
    nodes: Vec<Hash>,
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Adds a leaf (its hash, from [`leaf_hash`]).
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut n = self.size;
        // Each trailing set bit of the old size is a subtree of the new leaf's size, which it
        // completes into one twice as large.
        while n & 1 == 1 {
            let left = self.nodes.pop().expect("one node per set bit");
            h = node_hash(&left, &h);
            n >>= 1;
        }
        self.nodes.push(h);
        self.size += 1;
    }

    /// The tree's root (RFC 6962's MTH over all leaves so far).
    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some(last) = nodes.next() else {
            return empty_root();
        };
        nodes.fold(*last, |right, left| node_hash(left, &right))
    }

    /// Whether the node list fits the size (one per set bit): a frontier read from a file or
    /// a snapshot is checked with this before use.
    pub fn is_well_formed(&self) -> bool {
        self.nodes.len() == self.size.count_ones() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6962's definition, recursively.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                // The largest power of two below n.
                let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn known_vectors() {
        assert_eq!(
            empty_root().hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // RFC 6962's test vector: the hash of an empty leaf.
        assert_eq!(
            leaf_hash(b"").hex(),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn the_frontier_gives_the_rfc_root_at_every_size() {
        let leaves: Vec<Hash> = (0u32..300).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut f = Frontier::default();
        assert_eq!(f.root(), mth(&[]));
        for (i, leaf) in leaves.iter().enumerate() {
            f.push(*leaf);
            assert!(f.is_well_formed());
            assert_eq!(f.root(), mth(&leaves[..=i]), "size {}", i + 1);
        }
        // A frontier kept at a pruning point continues to the same roots.
        let mut g = Frontier::default();
        for leaf in &leaves[..77] {
            g.push(*leaf);
        }
        let kept: Frontier = serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
        let mut h = kept;
        for leaf in &leaves[77..] {
            h.push(*leaf);
        }
        assert_eq!(h.root(), f.root());
    }
}
