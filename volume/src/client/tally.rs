//! [`Tally`]: what the replicas of one group answered to one mutation, and what that means for
//! the caller. Pure, so the acknowledgement rule is tested apart from any socket.

/// How a mutation of one group ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every live replica either acked or was removed, and enough acked.
    Done,
    /// A replica refused the attach epoch; `current` is the newer one it holds.
    Fenced { current: u64 },
    /// A replica failed and could not be removed from the acting set: acknowledging would
    /// leave an acting-set member without the write.
    Unremoved,
    /// Fewer replicas than `min_replicas` hold the write.
    BelowMin { acked: usize },
}

/// Answers collected so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    acked: usize,
    fenced: Option<u64>,
    unremoved: usize,
}

impl Tally {
    pub fn acked(&mut self) {
        self.acked += 1;
    }

    pub fn fenced(&mut self, current: u64) {
        self.fenced = Some(self.fenced.map_or(current, |c| c.max(current)));
    }

    /// A replica failed; `removed` says whether it has left the acting set.
    pub fn failed(&mut self, removed: bool) {
        if !removed {
            self.unremoved += 1;
        }
    }

    /// A replica that acked no longer counts (it may have lost the write since); `removed`
    /// says whether it has left the acting set.
    pub fn withdrawn(&mut self, removed: bool) {
        assert!(self.acked > 0, "only an ack can be withdrawn");
        self.acked -= 1;
        self.failed(removed);
    }

    /// The outcome once every replica answered. Fencing wins over everything: a stale
    /// client must stop, whatever else happened.
    pub fn verdict(&self, min_replicas: usize) -> Verdict {
        assert!(min_replicas > 0);
        if let Some(current) = self.fenced {
            Verdict::Fenced { current }
        } else if self.unremoved > 0 {
            Verdict::Unremoved
        } else if self.acked < min_replicas {
            Verdict::BelowMin { acked: self.acked }
        } else {
            Verdict::Done
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(acked: usize, removed: usize, unremoved: usize) -> Tally {
        let mut t = Tally::default();
        (0..acked).for_each(|_| t.acked());
        (0..removed).for_each(|_| t.failed(true));
        (0..unremoved).for_each(|_| t.failed(false));
        t
    }

    #[test]
    fn two_acks_and_one_removed_replica_complete_a_write_with_min_two() {
        assert_eq!(tally(2, 1, 0).verdict(2), Verdict::Done);
    }

    #[test]
    fn one_ack_is_below_min_two_even_when_the_others_were_removed() {
        assert_eq!(tally(1, 2, 0).verdict(2), Verdict::BelowMin { acked: 1 });
    }

    #[test]
    fn a_failed_replica_still_in_the_acting_set_blocks_the_acknowledgement() {
        assert_eq!(tally(2, 0, 1).verdict(2), Verdict::Unremoved);
    }

    #[test]
    fn a_withdrawn_ack_counts_as_a_failure() {
        let mut t = tally(2, 1, 0);
        t.withdrawn(true);
        assert_eq!(t.verdict(2), Verdict::BelowMin { acked: 1 });
        t.withdrawn(false);
        assert_eq!(t.verdict(1), Verdict::Unremoved);
    }

    #[test]
    fn fencing_wins_over_acks_and_reports_the_newest_epoch() {
        let mut t = tally(3, 0, 0);
        t.fenced(4);
        t.fenced(6);
        t.fenced(5);
        assert_eq!(t.verdict(2), Verdict::Fenced { current: 6 });
    }
}
