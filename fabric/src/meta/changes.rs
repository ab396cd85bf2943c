//! [`Journal`]: which records each applied command changed, by cluster epoch, so that `Watch`
//! can push a subscriber only what changed since the epoch it has (nodes, pools with the PG
//! entries that moved, volumes) instead of the whole state.
//!
//! The journal is derived data: it is not part of snapshots and not compared between states.
//! A member that started from a snapshot, or a subscriber further behind than the journal
//! reaches, gets the full state once and deltas from then on.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::model::NodeId;

/// Most changes the journal keeps; older ones are forgotten (and a subscriber that needs them
/// gets the full state).
pub const JOURNAL_CHANGES_MAX: usize = 65_536;

/// The kinds of records a subscriber may follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Nodes = 0,
    Pools = 1,
    Volumes = 2,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Nodes, Kind::Pools, Kind::Volumes];
}

/// One changed record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Node(NodeId),
    /// A pool; `pgs` names the PG entries that changed, `None` the whole pool (created,
    /// deleted or re-specified).
    Pool {
        name: String,
        pgs: Option<BTreeSet<u32>>,
    },
    Volume(String),
}

/// Records changed since some epoch, merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    pub nodes: BTreeSet<NodeId>,
    /// Pool name → the changed PGs (`None`: all of them).
    pub pools: BTreeMap<String, Option<BTreeSet<u32>>>,
    pub volumes: BTreeSet<String>,
}

impl Change {
    pub fn kind(&self) -> Kind {
        match self {
            Change::Node(_) => Kind::Nodes,
            Change::Pool { .. } => Kind::Pools,
            Change::Volume(_) => Kind::Volumes,
        }
    }
}

impl Changed {
    fn add(&mut self, change: &Change) {
        match change {
            Change::Node(n) => {
                self.nodes.insert(*n);
            }
            Change::Volume(v) => {
                self.volumes.insert(v.clone());
            }
            Change::Pool { name, pgs } => {
                let entry = self
                    .pools
                    .entry(name.clone())
                    .or_insert_with(|| Some(BTreeSet::new()));
                match (entry.as_mut(), pgs) {
                    (Some(have), Some(more)) => have.extend(more),
                    _ => *entry = None,
                }
            }
        }
    }
}

/// The changes of recent epochs.
#[derive(Clone, Debug, Default)]
pub struct Journal {
    entries: VecDeque<(u64, Change)>,
    /// Changes of the command being applied, not yet given an epoch.
    pending: Vec<Change>,
    /// Every change of the epochs after this one is in `entries`; `None` until the first
    /// command applied in this process (the state may come from a snapshot).
    complete_after: Option<u64>,
    /// The epoch of the last change of each [`Kind`] (0: none since the journal began).
    last: [u64; 3],
}

/// The journal is derived from the log, never part of a state's identity.
impl PartialEq for Journal {
    fn eq(&self, _: &Journal) -> bool {
        true
    }
}

impl Journal {
    /// Notes a change of the command being applied.
    pub fn note(&mut self, change: Change) {
        self.pending.push(change);
    }

    /// The command being applied changed nothing after all (it was refused).
    pub fn discard(&mut self) {
        self.pending.clear();
    }

    /// The command being applied took the state to `epoch`.
    pub fn commit(&mut self, epoch: u64) {
        self.complete_after.get_or_insert(epoch - 1);
        for change in self.pending.drain(..) {
            self.last[change.kind() as usize] = epoch;
            self.entries.push_back((epoch, change));
        }
        while self.entries.len() > JOURNAL_CHANGES_MAX {
            let (forgotten, _) = self.entries.pop_front().expect("over the limit");
            // Epoch `forgotten` may have more changes still kept; it is incomplete now.
            self.complete_after = Some(forgotten);
        }
    }

    /// The epoch of the last change of `kind` this journal saw (0: none).
    pub fn last_change(&self, kind: Kind) -> u64 {
        self.last[kind as usize]
    }

    /// What changed after epoch `since`, if the journal still knows all of it.
    pub fn since(&self, since: u64) -> Option<Changed> {
        if self.complete_after.is_none_or(|c| since < c) {
            return None;
        }
        let mut changed = Changed::default();
        let first = self.entries.partition_point(|(e, _)| *e <= since);
        for (_, change) in self.entries.range(first..) {
            changed.add(change);
        }
        Some(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, pgs: &[u32]) -> Change {
        Change::Pool {
            name: name.into(),
            pgs: Some(pgs.iter().copied().collect()),
        }
    }

    #[test]
    fn changes_since_an_epoch_are_merged_and_older_ones_are_left_out() {
        let mut j = Journal::default();
        assert_eq!(j.since(0), None, "nothing known before the first command");
        j.note(Change::Node(1));
        j.commit(5);
        j.note(pool("p", &[1, 2]));
        j.note(Change::Volume("v".into()));
        j.commit(6);
        j.note(pool("p", &[3]));
        j.commit(7);
        let c = j.since(5).unwrap();
        assert!(c.nodes.is_empty());
        assert_eq!(c.pools["p"], Some([1, 2, 3].into_iter().collect()));
        assert_eq!(c.volumes.len(), 1);
        assert_eq!(j.since(4).unwrap().nodes.len(), 1);
        assert_eq!(j.since(7).unwrap(), Changed::default());
        assert_eq!(j.since(3), None, "before the journal starts");
    }

    #[test]
    fn a_whole_pool_change_absorbs_pg_changes_and_refused_commands_leave_nothing() {
        let mut j = Journal::default();
        j.note(pool("p", &[1]));
        j.commit(1);
        j.note(Change::Pool {
            name: "p".into(),
            pgs: None,
        });
        j.commit(2);
        j.note(Change::Node(9));
        j.discard();
        j.note(pool("p", &[4]));
        j.commit(3);
        let c = j.since(0).unwrap();
        assert_eq!(c.pools["p"], None);
        assert!(c.nodes.is_empty());
    }

    #[test]
    fn a_journal_past_its_limit_forgets_whole_epochs() {
        let mut j = Journal::default();
        for epoch in 1..=(JOURNAL_CHANGES_MAX as u64 + 10) {
            j.note(Change::Node(epoch));
            j.commit(epoch);
        }
        assert_eq!(j.since(5), None);
        let c = j.since(JOURNAL_CHANGES_MAX as u64).unwrap();
        assert_eq!(c.nodes.len(), 10);
    }
}
