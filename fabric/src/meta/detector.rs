//! The failure detector's runtime on the Raft leader: the lease table of [`Liveness`] fed by
//! the `Heartbeat` RPC, its decisions carried out.
//!
//! - A heartbeat renews the node's lease in memory and writes nothing to the Raft log; the
//!   answer carries the probes the leader wants this node to make.
//! - Every [`DETECTOR_TICK_MS`] the table takes the node set from the applied state (when its
//!   epoch moved) and makes its decisions: a `Probe` is queued for the chosen probers and
//!   handed to each with its next heartbeat; a `Mark` becomes one command (`SetHealth` for
//!   down and up, `SetParticipation` for out).
//! - The table belongs to one leader term: a member that (again) becomes leader starts a new
//!   one, so every node gets one grace period from that moment.
//!
//! Time is the leader's monotonic clock (milliseconds since the detector was made), never a
//! wall clock stamped by the sender.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::changes::Kind;
use super::command::CommandV1;
use super::liveness::{Decision, Health, Liveness, LivenessConfig, Millis};
use super::member::Member;
use super::model::{self, Location, NodeId, NodeRecord, Participation};
use crate::metrics::{MemberMetrics, StateLabels};

/// How often the leader makes its decisions.
pub const DETECTOR_TICK_MS: u64 = 200;

/// What a member answers a heartbeat.
#[derive(Debug, PartialEq, Eq)]
pub enum Beat {
    /// Renewed; probe these nodes (id, data address) and report back.
    Accepted { probes: Vec<(NodeId, String)> },
    /// This member does not lead; the leader's address if known.
    NotLeader { leader_addr: Option<String> },
    /// The node is not registered.
    Unknown,
}

/// The lease table of the current leader term, with what it owes its probers.
struct Table {
    term: u64,
    liveness: Liveness,
    /// The epoch of the last node change the node set was taken at (the journal's): other
    /// changes (thousands of attaches a second) leave the table alone.
    synced_epoch: Option<u64>,
    /// Data address of every node, for the probes.
    data_addrs: BTreeMap<NodeId, String>,
    /// Prober → the nodes it is to probe with its next heartbeat.
    probes: BTreeMap<NodeId, BTreeSet<NodeId>>,
}

/// The detector of one member (a table only while it leads).
pub struct Detector {
    /// Heartbeats taken and transitions committed (registered by the process, if it serves
    /// metrics).
    pub metrics: MemberMetrics,
    config: LivenessConfig,
    origin: Instant,
    table: Mutex<Option<Table>>,
}

/// The failure domain a node is confirmed from: its rack, else its host, else the node itself.
pub fn failure_domain(location: &Location, node: NodeId) -> String {
    match location.at("rack").or_else(|| location.at("host")) {
        Some(name) => name.to_owned(),
        None => format!("node-{node}"),
    }
}

/// A node's state as the lease table sees it.
fn health_of(record: &NodeRecord) -> Health {
    match (record.participation, record.health) {
        (Participation::Out, _) => Health::Out,
        (Participation::In, model::Health::Down) => Health::Down,
        (Participation::In, model::Health::Up) => Health::Up,
    }
}

impl Detector {
    pub fn new(config: LivenessConfig) -> Arc<Detector> {
        let metrics = MemberMetrics::default();
        for state in ["up", "down", "out"] {
            drop(metrics.transitions.get_or_create(&StateLabels {
                state: state.into(),
            }));
        }
        Arc::new(Detector {
            metrics,
            config,
            origin: Instant::now(),
            table: Mutex::new(None),
        })
    }

    fn now(&self) -> Millis {
        self.origin.elapsed().as_millis() as Millis
    }

    /// Runs `f` on this term's table (made or renewed first), or answers who leads.
    fn with_table<R>(
        &self,
        member: &Member,
        f: impl FnOnce(&mut Table, Millis) -> R,
    ) -> Result<R, Option<String>> {
        let term = match member.leading_term() {
            Some(term) => term,
            None => return Err(member.leader_addr()),
        };
        let now = self.now();
        let mut slot = self.table.lock().expect("detector lock");
        if slot.as_ref().is_none_or(|t| t.term != term) {
            tracing::info!(term, "leading: every node's lease starts now");
            *slot = Some(Table {
                term,
                liveness: Liveness::new(self.config.clone(), now),
                synced_epoch: None,
                data_addrs: BTreeMap::new(),
                probes: BTreeMap::new(),
            });
        }
        let table = slot.as_mut().expect("made above");
        sync(table, member, now);
        Ok(f(table, now))
    }

    /// A heartbeat of `node`, with its answers to earlier probes. A node recorded down that
    /// heartbeats is marked up (in the background).
    pub fn heartbeat(
        self: &Arc<Self>,
        member: &Arc<Member>,
        node: NodeId,
        reports: &[(NodeId, bool)],
    ) -> Beat {
        let beat = self.with_table(member, |t, now| {
            if !t.data_addrs.contains_key(&node) {
                return (Beat::Unknown, None);
            }
            for &(target, reachable) in reports {
                t.liveness.report(target, node, reachable, now);
            }
            let mark = match t.liveness.heartbeat(node, now) {
                Some(Decision::Mark { node, to }) => Some((t.term, node, to)),
                _ => None,
            };
            let probes = t
                .probes
                .remove(&node)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|n| Some((n, t.data_addrs.get(&n)?.clone())))
                .collect();
            self.metrics.heartbeats.inc();
            (Beat::Accepted { probes }, mark)
        });
        match beat {
            Ok((beat, mark)) => {
                if let Some((term, node, to)) = mark {
                    tokio::spawn(Arc::clone(self).mark(Arc::clone(member), term, node, to));
                }
                beat
            }
            Err(leader_addr) => Beat::NotLeader { leader_addr },
        }
    }

    /// Makes and carries out the decisions while this member leads, until `stop`.
    pub async fn run(
        self: Arc<Self>,
        member: Arc<Member>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(DETECTOR_TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let decided = self.with_table(&member, |t, now| {
                let decisions = t.liveness.tick(now);
                let mut marks = Vec::new();
                for d in decisions {
                    match d {
                        Decision::Probe { node, via } => {
                            tracing::info!(
                                node,
                                ?via,
                                "node silent; probing it from other domains"
                            );
                            for prober in via {
                                t.probes.entry(prober).or_default().insert(node);
                            }
                        }
                        Decision::Mark { node, to } => marks.push((node, to)),
                    }
                }
                (t.term, marks)
            });
            let Ok((term, marks)) = decided else {
                continue;
            };
            for (node, to) in marks {
                tokio::spawn(Arc::clone(&self).mark(Arc::clone(&member), term, node, to));
            }
        }
    }

    /// Commits `node`'s transition to `to` and tells the table of `term`.
    async fn mark(self: Arc<Self>, member: Arc<Member>, term: u64, node: NodeId, to: Health) {
        let command = match to {
            Health::Up => CommandV1::SetHealth {
                node,
                health: model::Health::Up,
            },
            Health::Down => CommandV1::SetHealth {
                node,
                health: model::Health::Down,
            },
            Health::Out => CommandV1::SetParticipation {
                node,
                participation: Participation::Out,
            },
        };
        let verb = match to {
            Health::Out => "node.out",
            _ => "node.health",
        };
        match member
            .write_own(verb, format!("node/{node}"), command)
            .await
        {
            Ok(_) => {
                tracing::warn!(node, to = ?to, "node marked {to:?}");
                let state = format!("{to:?}").to_lowercase();
                self.metrics
                    .transitions
                    .get_or_create(&StateLabels { state })
                    .inc();
                let now = self.now();
                let mut slot = self.table.lock().expect("detector lock");
                if let Some(t) = slot.as_mut().filter(|t| t.term == term) {
                    t.liveness.committed(node, to, now);
                }
            }
            Err(e) => tracing::warn!(node, to = ?to, error = %e, "could not mark a node"),
        }
    }
}

/// Brings the table's node set up to the applied state, if a node changed since.
fn sync(table: &mut Table, member: &Member, now: Millis) {
    member.sm.read(|state, _| {
        let nodes_changed = state.journal.last_change(Kind::Nodes);
        if table.synced_epoch == Some(nodes_changed) {
            return;
        }
        table.synced_epoch = Some(nodes_changed);
        for (&id, record) in &state.nodes {
            let domain = failure_domain(&record.registration.location, id);
            table.liveness.set_node(id, &domain, health_of(record), now);
            if table.data_addrs.get(&id) != Some(&record.registration.data_addr) {
                table
                    .data_addrs
                    .insert(id, record.registration.data_addr.clone());
            }
        }
        let gone: Vec<NodeId> = table
            .data_addrs
            .keys()
            .filter(|id| !state.nodes.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            table.liveness.remove_node(id);
            table.data_addrs.remove(&id);
            table.probes.remove(&id);
        }
    });
}
