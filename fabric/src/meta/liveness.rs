//! [`Liveness`]: which storage nodes are up, decided on the Raft leader from soft state.
//!
//! A steady heartbeat writes nothing to the Raft log: it renews a lease in this table, kept on
//! the leader's monotonic clock (milliseconds passed in as values, so the whole predicate is
//! tested without a clock, a socket or a log). Only transitions become commands: a node goes
//! `Down` when it fell silent *and* the loss is confirmed, `Out` when it stayed down long
//! enough and the guards against mass action allow it, and `Up` again when it heartbeats.
//!
//! - **Confirmation.** Silence alone may be the leader's own link. A silent node is first
//!   probed from live nodes of other failure domains; it is marked down once reporters in
//!   [`LivenessConfig::confirm_domains`] distinct other domains found it unreachable since its
//!   last heartbeat (a gateway whose data path failed reports the same way). A cluster with
//!   fewer other domains asks for as many as it has; a node alone in the only domain is
//!   marked down on silence.
//! - **A new leader** has seen no heartbeats: every lease starts at the moment it took over,
//!   so each node gets one full grace period.
//! - **A partitioned minority never marks the majority down**: while half or more of the up
//!   nodes are silent, the leader suspects itself and decides nothing.
//! - **No mass outs**: a node is never marked out automatically while every node of its
//!   failure domain (of two or more nodes) is down, and at most
//!   [`LivenessConfig::outs_per_hour_percent`] of the nodes (at least one) go out per hour.
//!
//! A decision is returned once and then waits for its commit ([`Liveness::committed`]), or is
//! made again after [`LivenessConfig::retry_ms`] if the commit never came.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::model::NodeId;

/// Milliseconds on the leader's monotonic clock.
pub type Millis = u64;

/// One hour, for the rate of automatic outs.
const HOUR_MS: Millis = 3_600_000;

/// The detector's tunables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LivenessConfig {
    /// Silence after which a node is suspected and probed.
    pub suspect_after_ms: Millis,
    /// Distinct failure domains, other than the node's own, that must confirm it unreachable.
    pub confirm_domains: usize,
    /// How long a probe waits for its answers before the node is probed again.
    pub probe_every_ms: Millis,
    /// How long a node stays down before it is marked out.
    pub out_after_ms: Millis,
    /// Most automatic outs per hour, in percent of the nodes (at least one).
    pub outs_per_hour_percent: u32,
    /// How long a decision waits for its commit before it is made again.
    pub retry_ms: Millis,
}

impl Default for LivenessConfig {
    fn default() -> LivenessConfig {
        LivenessConfig {
            // Two and a half heartbeat intervals: one lost heartbeat is not suspicious, and
            // a suspected node is only marked down once probes confirm it.
            suspect_after_ms: 2_500,
            confirm_domains: 2,
            probe_every_ms: 1_000,
            out_after_ms: 600_000,
            outs_per_hour_percent: 10,
            retry_ms: 5_000,
        }
    }
}

/// A node's state as the cluster state records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Up,
    Down,
    /// Out of placement: its PGs are re-placed.
    Out,
}

/// What the leader must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Ask `via` (live nodes of other failure domains) whether they reach `node`; report each
    /// answer with [`Liveness::report`].
    Probe { node: NodeId, via: Vec<NodeId> },
    /// Commit the transition of `node` to `to`; report the commit with [`Liveness::committed`].
    Mark { node: NodeId, to: Health },
}

#[derive(Clone, Debug)]
struct Lease {
    domain: String,
    health: Health,
    last_heard: Millis,
    /// When it was committed down.
    down_since: Option<Millis>,
    /// Reporters that found it unreachable, and when.
    unreachable_from: BTreeMap<NodeId, Millis>,
    probed_at: Option<Millis>,
    /// A decision made and not yet committed, and when.
    pending: Option<(Health, Millis)>,
}

/// The lease table of one leader's term. Pure: see the module docs.
#[derive(Debug)]
pub struct Liveness {
    config: LivenessConfig,
    leader_since: Millis,
    nodes: BTreeMap<NodeId, Lease>,
    /// When the automatic outs of the last hour were decided.
    outs: VecDeque<Millis>,
}

impl Liveness {
    /// The table of a member that became leader at `now`.
    pub fn new(config: LivenessConfig, now: Millis) -> Liveness {
        Liveness {
            config,
            leader_since: now,
            nodes: BTreeMap::new(),
            outs: VecDeque::new(),
        }
    }

    /// Adds `node` (in failure domain `domain`, recorded as `health`) or updates it, from the
    /// cluster state as applied at `now`. A changed health counts as committed then.
    pub fn set_node(&mut self, node: NodeId, domain: &str, health: Health, now: Millis) {
        let leader_since = self.leader_since;
        let lease = self.nodes.entry(node).or_insert_with(|| Lease {
            domain: domain.to_owned(),
            health,
            last_heard: leader_since,
            // A node found down by an earlier leader is down from this leader's start on.
            down_since: (health == Health::Down).then_some(leader_since),
            unreachable_from: BTreeMap::new(),
            probed_at: None,
            pending: None,
        });
        if lease.domain != domain {
            lease.domain = domain.to_owned();
        }
        if lease.health != health {
            self.committed(node, health, now);
        }
    }

    /// Forgets a node that left the cluster.
    pub fn remove_node(&mut self, node: NodeId) {
        self.nodes.remove(&node);
    }

    /// A heartbeat of `node` arrived at `now`. A node recorded down that heartbeats is marked up.
    pub fn heartbeat(&mut self, node: NodeId, now: Millis) -> Option<Decision> {
        let retry_ms = self.config.retry_ms;
        let lease = self.nodes.get_mut(&node)?;
        lease.last_heard = lease.last_heard.max(now);
        lease.unreachable_from.clear();
        lease.probed_at = None;
        if lease.health != Health::Down || pending_fresh(lease, Health::Up, now, retry_ms) {
            return None;
        }
        lease.pending = Some((Health::Up, now));
        Some(Decision::Mark {
            node,
            to: Health::Up,
        })
    }

    /// `reporter` found `node` unreachable (`reachable` false) or reached it, at `now`: the
    /// answer to a probe, or a gateway's data path.
    pub fn report(&mut self, node: NodeId, reporter: NodeId, reachable: bool, now: Millis) {
        let Some(lease) = self.nodes.get_mut(&node) else {
            return;
        };
        if reachable {
            lease.unreachable_from.remove(&reporter);
        } else {
            lease.unreachable_from.insert(reporter, now);
        }
    }

    /// `node`'s transition to `health` was committed (by this leader's decision or another's).
    pub fn committed(&mut self, node: NodeId, health: Health, now: Millis) {
        let Some(lease) = self.nodes.get_mut(&node) else {
            return;
        };
        if lease.pending.is_some_and(|(to, _)| to == health) {
            lease.pending = None;
        }
        if health == Health::Down && lease.health != Health::Down {
            lease.down_since = Some(now);
        }
        if health == Health::Up {
            lease.down_since = None;
        }
        lease.health = health;
    }

    /// The decisions due at `now`.
    pub fn tick(&mut self, now: Millis) -> Vec<Decision> {
        let mut out = Vec::new();
        let silent = self.silent(now);
        let up = self.count(|l| l.health == Health::Up);
        if !silent.is_empty() && silent.len() * 2 >= up {
            // Half or more silent: this leader is more likely the one cut off.
            return out;
        }
        for node in silent {
            if let Some(d) = self.judge_silent(node, now) {
                out.push(d);
            }
        }
        out.extend(self.due_outs(now));
        out
    }

    /// Up nodes silent for longer than `suspect_after_ms` (counted from this leader's start at
    /// the earliest).
    fn silent(&self, now: Millis) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, l)| l.health == Health::Up)
            .filter(|(_, l)| {
                now.saturating_sub(l.last_heard.max(self.leader_since))
                    > self.config.suspect_after_ms
            })
            .map(|(&n, _)| n)
            .collect()
    }

    fn count(&self, f: impl Fn(&Lease) -> bool) -> usize {
        self.nodes.values().filter(|l| f(l)).count()
    }

    /// Down if confirmed from enough other domains; else a probe if one is due.
    fn judge_silent(&mut self, node: NodeId, now: Millis) -> Option<Decision> {
        let retry_ms = self.config.retry_ms;
        let lease = &self.nodes[&node];
        if pending_fresh(lease, Health::Down, now, retry_ms) {
            return None;
        }
        let since = lease.last_heard;
        let own = lease.domain.clone();
        let domain_of = |n: &NodeId| self.nodes.get(n).map(|l| l.domain.as_str());
        let confirming: BTreeSet<&str> = lease
            .unreachable_from
            .iter()
            .filter(|&(_, &at)| at >= since)
            .filter_map(|(r, _)| domain_of(r))
            .filter(|d| *d != own)
            .collect();
        let other_domains: BTreeSet<&str> = self
            .nodes
            .iter()
            .filter(|(n, l)| **n != node && l.health == Health::Up && l.domain != own)
            .map(|(_, l)| l.domain.as_str())
            .collect();
        let confirmed = confirming.len() >= self.config.confirm_domains.min(other_domains.len());
        let probe_every_ms = self.config.probe_every_ms;
        let lease = self.nodes.get_mut(&node).expect("known node");
        if confirmed {
            lease.pending = Some((Health::Down, now));
            return Some(Decision::Mark {
                node,
                to: Health::Down,
            });
        }
        if lease.probed_at.is_some_and(|at| now < at + probe_every_ms) {
            return None;
        }
        lease.probed_at = Some(now);
        let via = self.probers(node, &own, now);
        Some(Decision::Probe { node, via })
    }

    /// Live nodes to probe `node` from: the first responsive node of each other failure
    /// domain, up to one more domain than a confirmation needs.
    fn probers(&self, node: NodeId, own: &str, now: Millis) -> Vec<NodeId> {
        let mut seen = BTreeSet::new();
        let mut via = Vec::new();
        for (&n, l) in &self.nodes {
            let responsive = now.saturating_sub(l.last_heard.max(self.leader_since))
                <= self.config.suspect_after_ms;
            if n == node || l.health != Health::Up || !responsive || l.domain == own {
                continue;
            }
            if seen.insert(l.domain.clone()) {
                via.push(n);
            }
            if via.len() > self.config.confirm_domains {
                break;
            }
        }
        via
    }

    /// Down nodes past `out_after_ms` that the guards let go out.
    fn due_outs(&mut self, now: Millis) -> Vec<Decision> {
        while self.outs.front().is_some_and(|&t| now >= t + HOUR_MS) {
            self.outs.pop_front();
        }
        let per_hour = (self.nodes.len() * self.config.outs_per_hour_percent as usize / 100).max(1);
        let candidates: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, l)| l.health == Health::Down)
            .filter(|(_, l)| {
                l.down_since
                    .is_some_and(|d| now >= d + self.config.out_after_ms)
            })
            .filter(|(_, l)| !pending_fresh(l, Health::Out, now, self.config.retry_ms))
            .map(|(&n, _)| n)
            .collect();
        let mut decisions = Vec::new();
        for node in candidates {
            if self.outs.len() >= per_hour {
                break;
            }
            if self.whole_domain_down(node) {
                continue;
            }
            self.outs.push_back(now);
            let lease = self.nodes.get_mut(&node).expect("known node");
            lease.pending = Some((Health::Out, now));
            decisions.push(Decision::Mark {
                node,
                to: Health::Out,
            });
        }
        decisions
    }

    /// Whether `node`'s failure domain has two or more nodes and none of them is up.
    fn whole_domain_down(&self, node: NodeId) -> bool {
        let domain = &self.nodes[&node].domain;
        let members: Vec<&Lease> = self
            .nodes
            .values()
            .filter(|l| &l.domain == domain)
            .collect();
        members.len() >= 2 && members.iter().all(|l| l.health != Health::Up)
    }
}

/// Whether `lease` has a decision for `to` made less than `retry_ms` before `now`.
fn pending_fresh(lease: &Lease, to: Health, now: Millis, retry_ms: Millis) -> bool {
    lease
        .pending
        .is_some_and(|(p, at)| p == to && now < at + retry_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUSPECT: Millis = 2_500;

    /// Nodes 1..=n, `per_domain` to a failure domain, all up and heard at `at`.
    fn cluster(n: u64, per_domain: u64, at: Millis) -> Liveness {
        let mut l = Liveness::new(LivenessConfig::default(), at);
        for node in 1..=n {
            l.set_node(
                node,
                &format!("rack{}", (node - 1) / per_domain),
                Health::Up,
                at,
            );
            l.heartbeat(node, at);
        }
        l
    }

    /// Heartbeats from every node but `silent`, at `at`.
    fn beat_all_but(l: &mut Liveness, silent: &[NodeId], at: Millis) {
        let nodes: Vec<NodeId> = l.nodes.keys().copied().collect();
        for n in nodes.into_iter().filter(|n| !silent.contains(n)) {
            assert_eq!(l.heartbeat(n, at), None);
        }
    }

    fn mark(node: NodeId, to: Health) -> Decision {
        Decision::Mark { node, to }
    }

    #[test]
    fn steady_heartbeats_decide_nothing() {
        let mut l = cluster(9, 3, 0);
        for t in (1_000..60_000).step_by(1_000) {
            beat_all_but(&mut l, &[], t);
            assert!(l.tick(t).is_empty());
        }
    }

    #[test]
    fn a_silent_node_is_probed_from_other_domains_and_marked_down_once_two_confirm() {
        let mut l = cluster(9, 3, 0);
        let t = SUSPECT + 1_000;
        beat_all_but(&mut l, &[1], t);
        let Decision::Probe { node: 1, via } = &l.tick(t)[0] else {
            panic!("a probe first");
        };
        // One node of each other rack, none of node 1's.
        assert_eq!(via, &[4, 7]);
        assert!(l.tick(t + 10).is_empty(), "one probe at a time");
        // Its own rack's view does not count; one other rack is not enough.
        l.report(1, 2, false, t + 20);
        l.report(1, 4, false, t + 20);
        assert!(l.tick(t + 30).is_empty());
        l.report(1, 7, false, t + 40);
        assert_eq!(l.tick(t + 50), vec![mark(1, Health::Down)]);
        assert!(l.tick(t + 60).is_empty(), "decided once, until committed");
    }

    #[test]
    fn a_node_reached_by_a_prober_is_not_marked_down() {
        let mut l = cluster(9, 3, 0);
        let t = SUSPECT + 1_000;
        beat_all_but(&mut l, &[1], t);
        l.tick(t);
        l.report(1, 4, false, t + 10);
        l.report(1, 7, true, t + 10);
        assert!(
            !l.tick(t + 20).contains(&mark(1, Health::Down)),
            "only one other domain confirms"
        );
    }

    #[test]
    fn reports_older_than_the_last_heartbeat_do_not_count() {
        let mut l = cluster(9, 3, 0);
        l.heartbeat(1, 900);
        // Probe answers from before that heartbeat, arriving late.
        l.report(1, 4, false, 500);
        l.report(1, 7, false, 500);
        let t = 900 + SUSPECT + 1;
        beat_all_but(&mut l, &[1], t);
        assert!(matches!(l.tick(t)[..], [Decision::Probe { node: 1, .. }]));
    }

    #[test]
    fn a_node_an_earlier_leader_found_down_goes_out_one_interval_after_this_leader_started() {
        let config = LivenessConfig::default();
        let start = 50_000;
        let mut l = Liveness::new(config.clone(), start);
        for n in 1..=6 {
            let health = if n == 2 { Health::Down } else { Health::Up };
            l.set_node(n, &format!("rack{n}"), health, start);
        }
        let t = start + config.out_after_ms - 1;
        beat_all_but(&mut l, &[2], t);
        assert!(l.tick(t).is_empty(), "not before the out interval");
        let t = start + config.out_after_ms;
        beat_all_but(&mut l, &[2], t);
        assert_eq!(l.tick(t), vec![mark(2, Health::Out)]);
    }

    #[test]
    fn a_new_leader_gives_every_node_one_grace_period() {
        let mut l = Liveness::new(LivenessConfig::default(), 100_000);
        for n in 1..=6 {
            l.set_node(n, &format!("rack{n}"), Health::Up, 100_000);
        }
        // No heartbeat seen yet: nothing is suspected before the grace has passed.
        assert!(l.tick(100_000 + SUSPECT).is_empty());
        beat_all_but(&mut l, &[3], 100_000 + SUSPECT);
        assert!(matches!(
            l.tick(100_000 + SUSPECT + 1)[..],
            [Decision::Probe { node: 3, .. }]
        ));
    }

    #[test]
    fn a_leader_that_hears_from_half_or_fewer_decides_nothing() {
        let mut l = cluster(6, 1, 0);
        let t = SUSPECT + 1_000;
        beat_all_but(&mut l, &[1, 2, 3], t);
        for r in 4..=6 {
            for n in 1..=3 {
                l.report(n, r, false, t);
            }
        }
        assert!(
            l.tick(t).is_empty(),
            "3 of 6 silent: the leader may be the one cut off"
        );
    }

    #[test]
    fn a_down_node_that_heartbeats_is_marked_up() {
        let mut l = cluster(3, 1, 0);
        l.committed(2, Health::Down, 10_000);
        assert_eq!(l.heartbeat(2, 11_000), Some(mark(2, Health::Up)));
        assert_eq!(
            l.heartbeat(2, 12_000),
            None,
            "decided once, until committed"
        );
        l.committed(2, Health::Up, 12_500);
        assert_eq!(l.heartbeat(2, 13_000), None);
    }

    #[test]
    fn a_down_node_goes_out_after_the_out_interval() {
        let mut l = cluster(9, 3, 0);
        l.committed(1, Health::Down, 10_000);
        let out_at = 10_000 + LivenessConfig::default().out_after_ms;
        beat_all_but(&mut l, &[1], out_at - 1);
        assert!(l.tick(out_at - 1).is_empty());
        beat_all_but(&mut l, &[1], out_at);
        assert_eq!(l.tick(out_at), vec![mark(1, Health::Out)]);
    }

    #[test]
    fn a_whole_rack_down_is_never_marked_out_automatically() {
        let mut l = cluster(9, 3, 0);
        for n in 1..=3 {
            l.committed(n, Health::Down, 10_000);
        }
        let late = 10_000 + 10 * LivenessConfig::default().out_after_ms;
        beat_all_but(&mut l, &[1, 2, 3], late);
        assert!(l.tick(late).is_empty());
        // A node alone in its domain is just a node.
        let mut l = cluster(3, 1, 0);
        l.committed(1, Health::Down, 10_000);
        beat_all_but(&mut l, &[1], late);
        assert_eq!(l.tick(late), vec![mark(1, Health::Out)]);
    }

    #[test]
    fn at_most_a_tenth_of_the_nodes_go_out_per_hour() {
        // 40 nodes in 40 racks: 4 outs per hour.
        let mut l = cluster(40, 1, 0);
        for n in 1..=10 {
            l.committed(n, Health::Down, 0);
        }
        let t = LivenessConfig::default().out_after_ms;
        let silent: Vec<NodeId> = (1..=10).collect();
        beat_all_but(&mut l, &silent, t);
        let outs = l.tick(t);
        assert_eq!(outs.len(), 4, "{outs:?}");
        for d in &outs {
            let Decision::Mark { node, to } = d else {
                panic!("{d:?}")
            };
            l.committed(*node, *to, t);
        }
        beat_all_but(&mut l, &silent, t + 1_000);
        assert!(l.tick(t + 1_000).is_empty(), "the hour's budget is spent");
        beat_all_but(&mut l, &silent, t + HOUR_MS);
        assert_eq!(l.tick(t + HOUR_MS).len(), 4);
    }

    #[test]
    fn a_single_domain_cluster_marks_down_on_silence() {
        let mut l = cluster(3, 3, 0);
        let t = SUSPECT + 1;
        beat_all_but(&mut l, &[2], t);
        assert_eq!(l.tick(t), vec![mark(2, Health::Down)]);
    }
}
