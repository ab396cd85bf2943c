//! The classes of work that share a disk, and the queue each request waits in.
//!
//! A replica request says its class in two bits of its header's flags (clients send 0, so a
//! sender that knows nothing of classes is a client). Client IO waits in one queue per volume,
//! so that a volume's QoS (its reservation and weight) is honoured on every node that holds it;
//! recovery, scrub and inference each wait in one queue per disk.

use super::mclock::{Rate, Spec};

/// Bits of a request's flags that carry its class.
pub const CLASS_FLAGS_SHIFT: u8 = 2;
pub const CLASS_FLAGS_MASK: u8 = 0b11 << CLASS_FLAGS_SHIFT;

/// What a disk IO is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// A volume's reads and writes, from its gateway.
    Client,
    /// Copies that bring a replica back to current: resync, rebuild, drain, balance.
    Recovery,
    /// Background reads that check stored data against its checksums.
    Scrub,
    /// Reads of the embedding model near its data.
    Inference,
}

impl Class {
    pub const ALL: [Class; 4] = [
        Class::Client,
        Class::Recovery,
        Class::Scrub,
        Class::Inference,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Client => "client",
            Class::Recovery => "recovery",
            Class::Scrub => "scrub",
            Class::Inference => "inference",
        }
    }

    /// The class bits of request flags.
    pub const fn flags(self) -> u8 {
        let n = match self {
            Class::Client => 0,
            Class::Recovery => 1,
            Class::Scrub => 2,
            Class::Inference => 3,
        };
        n << CLASS_FLAGS_SHIFT
    }

    /// The class a request's flags name.
    pub fn from_flags(flags: u8) -> Class {
        match (flags & CLASS_FLAGS_MASK) >> CLASS_FLAGS_SHIFT {
            0 => Class::Client,
            1 => Class::Recovery,
            2 => Class::Scrub,
            _ => Class::Inference,
        }
    }

    /// What the class gets when nothing else is configured. Weights: a client volume 100,
    /// recovery 25, inference 20, scrub 5: with clients busy, recovery gets a fifth of a disk
    /// shared with one busy volume and keeps progressing; on an idle disk every class runs
    /// at the disk's speed (no class has a limit by default; recovery's is set by its
    /// governor while clients are active).
    pub fn default_spec(self) -> Spec {
        let weight = match self {
            Class::Client => 100,
            Class::Recovery => 25,
            Class::Scrub => 5,
            Class::Inference => 20,
        };
        Spec {
            reservation: Rate::NONE,
            weight,
            limit: Rate::NONE,
        }
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The queue a request waits in on its disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QueueKey {
    /// Client IO of one volume (by its replica-protocol id).
    Volume(u64),
    /// All IO of a background class.
    Background(Class),
}

impl QueueKey {
    /// The queue of a request of `class` on `volume`.
    pub fn of(class: Class, volume: u64) -> QueueKey {
        match class {
            Class::Client => QueueKey::Volume(volume),
            other => QueueKey::Background(other),
        }
    }

    pub fn class(&self) -> Class {
        match self {
            QueueKey::Volume(_) => Class::Client,
            QueueKey::Background(c) => *c,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_trip_through_flags_and_leave_the_other_bits() {
        for c in Class::ALL {
            assert_eq!(Class::from_flags(c.flags() | 0b11), c);
            assert_eq!(c.flags() & 0b11, 0);
            c.default_spec().check().unwrap();
        }
        assert_eq!(Class::from_flags(0), Class::Client);
        assert_eq!(QueueKey::of(Class::Client, 7), QueueKey::Volume(7));
        assert_eq!(
            QueueKey::of(Class::Scrub, 7),
            QueueKey::Background(Class::Scrub)
        );
    }
}
