//! Starting and stopping one member: open the store, build Raft, serve the Raft transport and
//! the metadata API on one gRPC listener, bootstrap or join the group, and run the failure
//! detector (which acts while this member leads). A member is not a storage node by itself:
//! the node's agent registers and heartbeats through the API like any other node's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::{Config, SnapshotPolicy};
use proto::meta::join_server::JoinServer;
use proto::meta::metadata_server::MetadataServer;
use proto::raft::raft_service_server::RaftServiceServer;
use tokio::task::JoinHandle;

use super::client::Client;
use super::detector::Detector;
use super::liveness::LivenessConfig;
use super::member::Member;
use super::net::MESSAGE_BYTES_MAX;
use super::net::client::{NetworkFactory, PeerChannels};
use super::net::server::RaftTransport;
use super::service::MetadataService;
use super::service::join::JoinService;
use super::types::{MemberNode, Raft};
use crate::config::Endpoint;
use crate::identity::Transport;

/// Raft timing and snapshot knobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftTuning {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A snapshot is built after at least this many applied entries (more once the state is
    /// large, see `snapshots`); as many entries are kept behind it.
    pub snapshot_logs: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            // A dead leader is noticed within a second, while a busy, shared machine still
            // gets 5 heartbeats per election timeout before a member gives up on its leader.
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1_000,
            snapshot_logs: 5_000,
        }
    }
}

/// How a member comes to be part of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Formation {
    /// Start (or restart) as a member of whatever group the store records.
    Existing,
    /// On a fresh store, initialize a new group with these voters (id → rpc address).
    Bootstrap(BTreeMap<u64, String>),
    /// On a fresh store, ask the group reachable at this address to add this member as a
    /// learner and then promote it to voter.
    Join(String),
}

/// Validated configuration of one member.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    pub id: u64,
    /// The member's own directory.
    pub data_dir: PathBuf,
    /// The gRPC socket (Raft transport and metadata API).
    pub rpc: Endpoint,
    pub formation: Formation,
    pub tuning: RaftTuning,
    /// The failure detector's tunables, used while this member leads.
    pub liveness: LivenessConfig,
    /// How the member's connections, both ways, are secured.
    pub transport: Transport,
    /// When bootstrapping: the principal that starts as cluster-admin.
    pub bootstrap_admin: Option<String>,
    /// When bootstrapping: start with the two-person rule's guards off.
    pub guards_off: bool,
    /// When bootstrapping: principals that start with the approver role.
    pub bootstrap_approvers: Vec<String>,
    /// The CA whose intermediate signs the certificates of nodes joining with a token.
    pub signer: Option<Arc<crate::identity::ca::CertificateAuthority>>,
}

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("open metadata store in {dir}: {source}")]
    Store {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid raft configuration: {0}")]
    Config(String),
    #[error("start raft: {0}")]
    Raft(String),
}

impl StartError {
    /// The damage in the Raft log file that stopped the start, if that is why.
    pub fn log_corrupt(&self) -> Option<&super::store::LogCorrupt> {
        match self {
            StartError::Store { source, .. } => super::store::LogCorrupt::find(source),
            _ => None,
        }
    }
}

/// A member that is running; [`RunningMember::stop`] shuts it down.
pub struct RunningMember {
    pub member: Arc<Member>,
    /// The failure detector (acting while this member leads), with its metrics.
    pub detector: Arc<Detector>,
    /// What nodes report for drift detection (while this member leads).
    pub drift: Arc<super::drift::DriftTable>,
    /// The address other members and clients dial (registered in the group).
    pub addr: SocketAddr,
    /// The address the gRPC listener is bound to.
    pub bound: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<JoinHandle<()>>,
    /// Declared last: dropped after everything that may still call into Raft.
    _raft_runtime: RaftRuntime,
}

/// The runtime Raft runs on: one worker thread, shut down without blocking when dropped
/// (a runtime dropped inside another's task must not wait for its own).
struct RaftRuntime(Option<tokio::runtime::Runtime>);

/// Worker threads of Raft's runtime: the core is one task and the replication streams are
/// light; one thread keeps it off the service threads' queues.
const RAFT_WORKER_THREADS: usize = 1;

impl RaftRuntime {
    fn start() -> std::io::Result<RaftRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RAFT_WORKER_THREADS)
            .thread_name("fabric-raft")
            .enable_all()
            .build()?;
        Ok(RaftRuntime(Some(runtime)))
    }

    fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.as_ref().expect("raft runtime").spawn(future)
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Starts a member and returns once it serves gRPC.
pub async fn start(cfg: MemberConfig) -> Result<RunningMember, StartError> {
    let meta_dir = cfg.data_dir.join("meta");
    let (log, sm) = super::store::open(&meta_dir)
        .await
        .map_err(|source| StartError::Store {
            dir: meta_dir.clone(),
            source,
        })?;
    let t = &cfg.tuning;
    let config = Config {
        cluster_name: "fabric-meta".into(),
        heartbeat_interval: t.heartbeat_interval_ms,
        election_timeout_min: t.election_timeout_min_ms,
        election_timeout_max: t.election_timeout_max_ms,
        // Snapshots are triggered by `snapshots::run`, which spaces them by the state's size.
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: t.snapshot_logs,
        // The state machine is rebuilt from the log and the committed index is not fsynced, so
        // a restarted leader must win a new election (and commit in its new term) before it
        // serves reads; restoring leadership directly could serve a stale state machine.
        enable_leader_restore: Some(false),
        // The log store's `append` returns once entries are readable and syncs them in the
        // background, so followers can receive entries while the leader's own sync runs.
        broadcast_submitted_on_append: Some(true),
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::Config(e.to_string()))?;
    // Raft's core, its replication streams and their connections run on a thread of their
    // own: a leader whose service threads are busy with thousands of clients (a watch event
    // fanned out to every storage node, a storm of heartbeats) still sends its heartbeats to
    // the followers in time, instead of losing its leadership to the load it serves.
    let raft_runtime = RaftRuntime::start().map_err(|e| StartError::Raft(e.to_string()))?;
    let network = NetworkFactory {
        channels: PeerChannels::new(cfg.transport.clone()),
    };
    let raft = raft_runtime
        .spawn({
            let (id, sm) = (cfg.id, sm.clone());
            async move { Raft::new(id, Arc::new(config), network, log, sm).await }
        })
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?
        .map_err(|e| StartError::Raft(e.to_string()))?;
    // Forwarded client requests dial the leader on channels of their own, driven by the
    // service threads, so that they never queue on Raft's.
    let channels = PeerChannels::new(cfg.transport.clone());
    let listener = listen(cfg.rpc.bind).map_err(|source| StartError::Bind {
        addr: cfg.rpc.bind,
        source,
    })?;
    let bound = listener.local_addr().map_err(|source| StartError::Bind {
        addr: cfg.rpc.bind,
        source,
    })?;
    let addr = cfg.rpc.advertised(bound);
    let member = Arc::new(Member {
        id: cfg.id,
        rpc_addr: addr.to_string(),
        raft: raft.clone(),
        sm,
        peers: channels,
        audit_refused_full: Default::default(),
        refusals: Default::default(),
        audit_refusals_counted: Default::default(),
    });

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let transport = RaftServiceServer::new(RaftTransport {
        member: Arc::clone(&member),
    })
    .max_decoding_message_size(MESSAGE_BYTES_MAX)
    .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let detector = Detector::new(cfg.liveness.clone());
    let drift: Arc<super::drift::DriftTable> = Arc::default();
    let infer = {
        let own = Arc::new(super::client::Client::new(
            vec![addr.to_string()],
            cfg.transport.clone(),
        ));
        let pool = crate::replica_dial::replica_pool(
            &cfg.transport,
            volume::client::PoolConfig::default(),
        )
        .map_err(|e| StartError::Config(format!("replica pool: {e}")))?;
        crate::embed::leader::InferLeader::new(cfg.id, &cfg.data_dir, own, pool)
            .map_err(|e| StartError::Config(format!("inference: {e:#}")))?
    };
    let metadata = MetadataServer::new(MetadataService {
        member: Arc::clone(&member),
        detector: Arc::clone(&detector),
        drift: Arc::clone(&drift),
        signer: cfg.signer.clone(),
        infer: Arc::clone(&infer),
    })
    .max_decoding_message_size(MESSAGE_BYTES_MAX)
    .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let incoming = super::net::secure::incoming(listener, cfg.transport.clone());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(transport)
            .add_service(metadata)
            .serve_with_incoming_shutdown(incoming.members, async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            }),
    );
    // Connections without a certificate, asking to join, reach this server only: the join
    // call is all it has.
    let join = JoinServer::new(JoinService {
        member: Arc::clone(&member),
        signer: cfg.signer.clone(),
    })
    .max_decoding_message_size(JOIN_MESSAGE_BYTES_MAX);
    let mut join_stop = stop_tx.subscribe();
    let join_server = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .concurrency_limit_per_connection(1)
            .add_service(join)
            .serve_with_incoming_shutdown(incoming.joiners, async move {
                let _ = join_stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the join server stopped");
        }
    });

    form_group(&raft, &cfg, &addr).await?;
    let mut background = vec![
        join_server,
        tokio::spawn(crate::embed::leader::run(
            Arc::clone(&member),
            infer,
            stop_tx.subscribe(),
        )),
        tokio::spawn(Arc::clone(&detector).run(Arc::clone(&member), stop_tx.subscribe())),
        tokio::spawn(super::snapshots::run(
            Arc::clone(&member),
            t.snapshot_logs,
            stop_tx.subscribe(),
        )),
    ];
    background.push(tokio::spawn(super::cell_key::ensure(Arc::clone(&member))));
    background.push(tokio::spawn(super::audit_tail::run(
        Arc::clone(&member),
        stop_tx.subscribe(),
    )));
    if let Some(ca) = cfg.signer.clone() {
        background.push(tokio::spawn(super::cell_key::certify(
            Arc::clone(&member),
            ca,
        )));
    }
    if let Some(tls) = cfg.transport.tls() {
        background.push(tokio::spawn(super::trust_follow::follow_state(
            Arc::clone(&member),
            Arc::clone(tls),
        )));
    }
    if let Some(admin) = cfg.bootstrap_admin.clone() {
        background.push(tokio::spawn(init_policy(
            Arc::clone(&member),
            admin,
            cfg.guards_off,
            cfg.bootstrap_approvers.clone(),
        )));
    }
    Ok(RunningMember {
        member,
        detector,
        drift,
        addr,
        bound,
        stop: stop_tx,
        server,
        background,
        _raft_runtime: raft_runtime,
    })
}

/// Largest join request: a token, a CSR and a few names.
const JOIN_MESSAGE_BYTES_MAX: usize = 64 * 1024;

/// Connections a member's listener queues before it accepts them: thousands of storage nodes
/// reconnect at once after a leader change.
pub const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn form_group(raft: &Raft, cfg: &MemberConfig, addr: &SocketAddr) -> Result<(), StartError> {
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    if initialized {
        return Ok(());
    }
    match &cfg.formation {
        Formation::Existing => {}
        Formation::Bootstrap(voters) => {
            let mut members: BTreeMap<u64, MemberNode> = voters
                .iter()
                .map(|(id, a)| {
                    (
                        *id,
                        MemberNode {
                            rpc_addr: a.clone(),
                        },
                    )
                })
                .collect();
            members.entry(cfg.id).or_insert(MemberNode {
                rpc_addr: addr.to_string(),
            });
            raft.initialize(members)
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
            tracing::info!(id = cfg.id, "bootstrapped a new metadata group");
        }
        Formation::Join(seed) => {
            let client = Client::new(vec![seed.clone()], cfg.transport.clone());
            let (id, rpc_addr) = (cfg.id, addr.to_string());
            tokio::spawn(async move {
                match client.join(id, &rpc_addr).await {
                    Ok(()) => tracing::info!(id, "joined the metadata group as a voter"),
                    Err(e) => tracing::error!(id, error = %e, "could not join the metadata group"),
                }
            });
        }
    }
    Ok(())
}

/// Pause between attempts to start the access policy of a new cluster.
const INIT_POLICY_RETRY_MS: u64 = 200;

/// Starts the access policy of the cluster this member bootstrapped, with `admin` as its
/// cluster-admin: retried until the policy is seen initialized (by this proposal, or by one
/// that committed before a restart).
async fn init_policy(member: Arc<Member>, admin: String, guards_off: bool, approvers: Vec<String>) {
    use super::command::CommandV1;
    loop {
        if member.sm.read(|s, _| s.policy.epoch) != 0 {
            return;
        }
        let init = CommandV1::InitPolicy {
            admin: admin.clone(),
            guards_off,
            approvers: approvers.clone(),
        };
        match member.write_own("auth.init", "cluster".into(), init).await {
            Ok(_) => {
                tracing::info!(%admin, "access policy started: {admin} is cluster-admin");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "start the access policy (retrying)"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(INIT_POLICY_RETRY_MS)).await;
    }
}

impl RunningMember {
    /// Stops serving, then shuts Raft down.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for b in self.background {
            b.abort();
        }
        let _ = self.server.await;
        if let Err(e) = self.member.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}
