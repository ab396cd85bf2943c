//! The node agent: registers a storage node with the metadata service, then heartbeats to the
//! leader and answers its probes, until stopped. The same loop runs in every storage node
//! (member of the Raft group or not) and, thousands at a time, in `control-bench`.
//!
//! A heartbeat goes to the member that answered last as leader; a member that does not lead
//! names the leader and the heartbeat is sent there at once, and an unreachable one sends the
//! agent on to the next configured endpoint. A probe asked for by the leader is made through
//! [`Prober`] and answered with the next heartbeat, which is then sent right away.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::meta as pb;
use tokio::sync::watch;
use tonic::Code;

use crate::meta::client::Client;

/// How often a node heartbeats.
pub const NODE_HEARTBEAT_INTERVAL_MS: u64 = 1_000;
/// How long one heartbeat may take before the agent tries the next member.
pub const HEARTBEAT_DEADLINE_MS: u64 = 800;
/// How long a probe of another node's data path may take before it counts as unreachable.
pub const PROBE_DEADLINE_MS: u64 = 1_000;
/// How often registration is retried until it succeeds.
pub const REGISTER_RETRY_MS: u64 = 500;

/// Answers whether another node's data path answers.
pub trait Prober: Send + Sync + 'static {
    fn reachable(&self, node: u64, data_addr: &str) -> impl Future<Output = bool> + Send;
}

/// Probes a replica server: opening a session sends a PING, which the server answers with its
/// power epoch, so an answer means the process serves, not only that its port is open. It
/// dials as the node's replica clients do (mutual TLS with the node's certificate).
pub struct ReplicaProber {
    connector: Arc<dyn volume::client::Connector>,
}

impl ReplicaProber {
    pub fn new(transport: &crate::identity::Transport) -> ReplicaProber {
        ReplicaProber {
            connector: crate::replica_dial::connector(transport),
        }
    }
}

impl Prober for ReplicaProber {
    async fn reachable(&self, _node: u64, data_addr: &str) -> bool {
        use volume::client::Link;
        use volume::wire::{Request, RequestHeader};
        let Ok(addr) = data_addr.parse() else {
            return false;
        };
        let link = Link::new(
            addr,
            Arc::clone(&self.connector),
            Duration::from_millis(PROBE_DEADLINE_MS),
            1,
        );
        // Its request id is assigned by the link.
        let ping = Request::new(RequestHeader::ping(0));
        let probe =
            tokio::time::timeout(Duration::from_millis(PROBE_DEADLINE_MS), link.probe(ping));
        matches!(probe.await, Ok(Ok(_)))
    }
}

/// What an agent has seen of its heartbeats.
#[derive(Debug, Default)]
pub struct Beats {
    /// Heartbeats the leader accepted.
    pub accepted: AtomicU64,
    /// When the last one was accepted.
    pub last_accepted: Mutex<Option<Instant>>,
}

/// Registers `registration` through `client`, then heartbeats until `stop`, counting them
/// into `beats`. With `drift`, each heartbeat carries the digest of the node's drift report
/// (the report itself when the leader does not know it), and the node makes the repairs the
/// leader asks for.
pub async fn run<P: Prober>(
    registration: pb::RegisterNodeRequest,
    client: Arc<Client>,
    prober: Arc<P>,
    beats: Arc<Beats>,
    drift: Option<crate::drift::DriftSource>,
    mut stop: watch::Receiver<bool>,
) {
    let node = registration.id;
    // A node with a certificate directory renews its certificate when the leader asks.
    let renewer = drift
        .as_ref()
        .filter(|d| !d.cert_dir.as_os_str().is_empty())
        .map(|d| crate::renew::Renewer::new(node, Arc::clone(&client), d.cert_dir.clone()));
    let mut agent = Agent {
        node,
        client,
        target: None,
        next: 0,
        drift,
        drift_known: String::new(),
        renewer,
    };
    loop {
        if agent.register(&registration).await {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(REGISTER_RETRY_MS)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
    // Nodes started together (or reconnecting after a leader change) spread their heartbeats
    // over the interval instead of sending them in one burst.
    let jitter_ms = (node.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % NODE_HEARTBEAT_INTERVAL_MS;
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(jitter_ms)) => {}
        _ = stop.wait_for(|s| *s) => return,
    }
    let mut tick = tokio::time::interval(Duration::from_millis(NODE_HEARTBEAT_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reports = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // Probes answered are sent at once, in a heartbeat of their own.
        for _ in 0..2 {
            let answer = agent.heartbeat(std::mem::take(&mut reports)).await;
            if answer.is_ok() {
                beats.accepted.fetch_add(1, Ordering::Relaxed);
                *beats.last_accepted.lock().expect("beats lock") = Some(Instant::now());
            }
            match answer {
                Ok(probes) if probes.is_empty() => break,
                Ok(probes) => reports = probe_all(&*prober, probes).await,
                Err(Code::NotFound) => {
                    tracing::warn!(
                        node,
                        "the leader does not know this node; registering again"
                    );
                    agent.register(&registration).await;
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

/// One agent's view of where the leader is.
struct Agent {
    node: u64,
    client: Arc<Client>,
    /// The member that last accepted a heartbeat, or that one named as leader.
    target: Option<String>,
    /// The configured endpoint to try when there is no target.
    next: usize,
    drift: Option<crate::drift::DriftSource>,
    /// The drift digest the leader last said it holds for this node.
    drift_known: String,
    /// Asks a member for a fresh certificate when the leader names `tls` for repair.
    renewer: Option<Arc<crate::renew::Renewer>>,
}

impl Agent {
    async fn register(&self, registration: &pb::RegisterNodeRequest) -> bool {
        let req = registration.clone();
        match self
            .client
            .call(|mut c| {
                let req = req.clone();
                async move { c.register_node(req).await }
            })
            .await
        {
            Ok(_) => {
                tracing::info!(node = self.node, "node registered");
                true
            }
            Err(status) => {
                tracing::warn!(node = self.node, %status, "registration not accepted yet");
                false
            }
        }
    }

    /// Sends one heartbeat (following at most one redirect) and returns the probes asked for.
    async fn heartbeat(
        &mut self,
        reports: Vec<pb::Reachability>,
    ) -> Result<Vec<pb::ProbeTarget>, Code> {
        let (drift_digest, drift_items): (String, std::collections::HashMap<String, String>) =
            match self.drift.as_ref().and_then(|s| s.report_when_serving()) {
                None => (String::new(), Default::default()),
                Some(items) => {
                    let digest = crate::drift::digest(&items);
                    let send = digest != self.drift_known;
                    (
                        digest,
                        if send {
                            items.into_iter().collect()
                        } else {
                            Default::default()
                        },
                    )
                }
            };
        for _ in 0..2 {
            let addr = self.target.clone().unwrap_or_else(|| {
                let endpoints = self.client.endpoints();
                endpoints[self.next % endpoints.len()].clone()
            });
            let req = pb::HeartbeatRequest {
                node: self.node,
                reports: reports.clone(),
                drift_digest: drift_digest.clone(),
                drift_items: drift_items.clone(),
            };
            let answer = match self.client.endpoint(&addr) {
                Ok(mut c) => {
                    let mut req = tonic::Request::new(req);
                    req.set_timeout(Duration::from_millis(HEARTBEAT_DEADLINE_MS));
                    c.heartbeat(req).await.map(|r| r.into_inner())
                }
                Err(status) => Err(status),
            };
            match answer {
                Ok(reply) if reply.accepted => {
                    self.target = Some(addr);
                    self.drift_known = reply.drift_known;
                    self.repair(&reply.repair);
                    return Ok(reply.probes);
                }
                Ok(reply) if !reply.leader_addr.is_empty() && reply.leader_addr != addr => {
                    self.target = Some(reply.leader_addr);
                }
                Ok(_) => return Err(self.move_on(Code::Unavailable)),
                Err(status) if status.code() == Code::NotFound => return Err(Code::NotFound),
                Err(status) => {
                    tracing::debug!(node = self.node, %addr, %status, "heartbeat not taken");
                    return Err(self.move_on(status.code()));
                }
            }
        }
        Err(Code::Unavailable)
    }

    /// Puts back the drifted items the leader named.
    fn repair(&self, items: &[String]) {
        let Some(source) = &self.drift else {
            return;
        };
        for item in items {
            if item == crate::drift::ITEM_TLS
                && let Some(renewer) = &self.renewer
            {
                renewer.request();
                continue;
            }
            match source.repair(item) {
                Ok(()) => tracing::warn!(node = self.node, %item, "drift repaired"),
                Err(e) => tracing::warn!(node = self.node, %item, error = %e, "drift not repaired"),
            }
        }
    }

    /// Forgets the target and moves on to the next configured endpoint.
    fn move_on(&mut self, code: Code) -> Code {
        self.target = None;
        self.next = self.next.wrapping_add(1);
        code
    }
}

/// Probes every target at once and collects the answers.
async fn probe_all<P: Prober>(prober: &P, targets: Vec<pb::ProbeTarget>) -> Vec<pb::Reachability> {
    let probes = targets.iter().map(|t| async move {
        let reachable = prober.reachable(t.node, &t.data_addr).await;
        if !reachable {
            tracing::info!(node = t.node, addr = %t.data_addr, "probed node does not answer");
        }
        pb::Reachability {
            node: t.node,
            reachable,
        }
    });
    futures::future::join_all(probes).await
}
