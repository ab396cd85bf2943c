//! `fabricctl`: the operator's view of a Fabric cluster's metadata.
//!
//! Finds the cluster from `--endpoints a,b,c` or from the members' `node.json` files under
//! `--data-dir` (default `./.fabric-dev`), talks to whichever member answers (members forward
//! writes and linearizable reads to the leader), and prints human tables or, with `--json`,
//! one JSON document. A refused request prints one line, `fabricctl: CODE: message`, and exits 1.
//!
//! Every call goes over mutual TLS with the certificate directory `--cert-dir` (default: the
//! administrator's, `DATA_DIR/admin`, which `fabricd dev` makes). `ca` and `cert` work on
//! local files (the cluster's certificate authority) and ask no member.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use fabric::meta::client::{Client, discover, new_request_id};
use proto::meta as pb;
use serde_json::{Value, json};
use tools::identity::{CertKind, IssueArgs};
use tools::movement::Movement;

#[derive(Parser)]
#[command(name = "fabricctl", version, about = "Administer a Fabric cluster")]
struct Cli {
    /// Directory of a local cluster (`fabricd dev`); its members are found from `node-*/node.json`.
    #[arg(long, global = true, default_value = "./.fabric-dev")]
    data_dir: PathBuf,
    /// Member gRPC addresses, comma-separated (instead of --data-dir).
    #[arg(long, global = true, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Your certificate directory (chain.pem, key.pem, ca.pem); default DATA_DIR/admin.
    #[arg(long, global = true)]
    cert_dir: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every member's role, leader, and log progress.
    Status,
    /// Registered nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Storage pools.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// The balancer: what it would move, and moving within a budget.
    #[command(subcommand)]
    Balance(BalanceCmd),
    /// The cluster's certificate authority (local files; no member is asked).
    #[command(subcommand)]
    Ca(CaCmd),
    /// Certificates of nodes, gateways and users: `issue` works on local files, `revoke` and
    /// `revoked` ask the cluster.
    #[command(subcommand)]
    Cert(CertCmd),
    /// Access control: bindings of roles to principals, roles, and `can-i`.
    #[command(subcommand)]
    Auth(tools::auth::AuthCmd),
    /// Approves a guarded call another principal made (two-person rule); it runs at once.
    Approve {
        id: String,
        /// Approve only if the request holds the operation with this hash (as `approvals
        /// list` shows it): what you reviewed is what runs.
        #[arg(long)]
        op: Option<String>,
    },
    /// Denies a guarded call's request.
    Deny {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// What differs between each node and its desired state (asked of the leader), by item
    /// and class; `drift except` lets an item differ for a while.
    Drift {
        #[command(subcommand)]
        cmd: Option<tools::drift::DriftCmd>,
    },
    /// Labels of locations in the fault-domain tree (a jurisdiction, a site).
    #[command(subcommand)]
    Topology(tools::residency::TopologyCmd),
    /// Requests of the two-person rule, and its guards.
    #[command(subcommand)]
    Approvals(tools::approvals::ApprovalsCmd),
    /// The audit log: list, status, export, and `verify` an export offline.
    #[command(subcommand)]
    Audit(tools::audit::AuditCmd),
    /// Replaces the cell key (guarded by the two-person rule).
    #[command(subcommand)]
    CellKey(tools::rotation::CellKeyCmd),
    /// The trust bundle: the root CAs every process trusts; `add` and `retire` replace the
    /// root CA (guarded by the two-person rule).
    #[command(subcommand)]
    Trust(tools::rotation::TrustCmd),
    /// One-time tokens with which new nodes get their certificates (`fabricd node --join ADDR
    /// --token T`).
    #[command(subcommand)]
    JoinToken(tools::join_token::JoinTokenCmd),
    /// Scrubs: ask for one (`start`), and what each PG's scrubs found (`status`).
    #[command(subcommand)]
    Scrub(tools::scrub::ScrubCmd),
    /// Inference near the data: models, embed jobs on the nodes holding the replicas, search.
    #[command(subcommand)]
    Infer(tools::infer::InferCmd),
}

#[derive(Subcommand)]
enum CaCmd {
    /// Creates a root CA and the intermediate that signs day-to-day certificates in DIR. The
    /// root key (root.key.pem) is needed again only to renew the intermediate: move it offline.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// The cluster's name, part of every identity: fabric://CLUSTER/...
        #[arg(long)]
        cluster: String,
    },
}

#[derive(Subcommand)]
enum CertCmd {
    /// Signs a certificate for a node (by id), a gateway or a user (by name) and writes
    /// chain.pem, key.pem and ca.pem to --out.
    Issue {
        kind: CertKind,
        /// The node id, or the gateway's or user's name.
        name: String,
        /// The CA directory `ca init` made (its root key is not read).
        #[arg(long)]
        ca_dir: PathBuf,
        /// Where to write the certificate directory.
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = fabric::identity::issue::LEAF_VALIDITY_DAYS_DEFAULT)]
        days: u32,
        /// A DNS name or IP address a node or gateway serves on (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Replace the certificate and key already in --out.
        #[arg(long)]
        overwrite: bool,
    },
    /// Revokes a certificate by its serial (as `cert issue` printed it): every port of the
    /// cluster refuses it from then on and cuts connections open with it within seconds.
    Revoke {
        serial: String,
        /// The principal the certificate names, for the record.
        #[arg(long, default_value = "")]
        principal: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The revoked certificates.
    Revoked,
}

#[derive(Subcommand)]
enum BalanceCmd {
    /// Shows what the balancer would move in a pool: PGs, bytes, replicas per node before and
    /// after, and the rule check of the result. Changes nothing.
    Plan {
        #[arg(long, default_value = "default")]
        pool: String,
        /// Most replica moves (default: as many as the balancer wants, up to its limit).
        #[arg(long)]
        max_moves: Option<u32>,
        /// Most bytes moved, e.g. 10GiB (provisioned bytes of the moved PGs).
        #[arg(long)]
        max_bytes: Option<String>,
    },
    /// Moves what `plan` shows within the budget, then follows the moves (each rebuilt at the
    /// rebuild's throttled rate) until they are done.
    Apply {
        #[arg(long, default_value = "default")]
        pool: String,
        #[arg(long, default_value_t = 16)]
        max_moves: u32,
        /// Most bytes moved, e.g. 10GiB (default: no limit).
        #[arg(long)]
        max_bytes: Option<String>,
        /// Return once the moves are committed, without following them.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    List,
    /// Adds a running, empty `fabricd node` to the Raft group as a learner (non-voting).
    AddLearner {
        id: u64,
        /// Its gRPC address, IP:PORT.
        rpc_addr: String,
    },
    /// Makes a learner a voting member.
    Promote {
        id: u64,
    },
    /// Removes a member from the Raft group.
    Remove {
        id: u64,
    },
    /// Takes a node out of placement: its PGs move to other nodes, where the volumes' gateways
    /// rebuild them.
    Out {
        id: u64,
    },
    /// Puts a node back into placement.
    In {
        id: u64,
    },
    /// Drains a node: it keeps serving while its PGs move to other nodes, each staying on it
    /// until its successor is current. Follows the drain until the node holds no replica.
    Drain {
        id: u64,
        /// Return once the drain is committed, without following it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Ends a drain: the node takes replicas again (PGs move back the same way). Follows the
    /// moves until every PG is where placement wants it.
    Undrain {
        id: u64,
        /// Return once the change is committed, without following the moves.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Subcommand)]
enum PoolCmd {
    Create {
        name: String,
        #[arg(long, default_value_t = 3)]
        replicas: u32,
        /// 0 means a majority of the replicas.
        #[arg(long, default_value_t = 0)]
        min_replicas: u32,
        /// Fault-domain level replicas must not share.
        #[arg(long, default_value = "rack")]
        failure_domain: String,
        #[arg(long, default_value_t = 64)]
        pg_count: u32,
        /// Only nodes at level=name, or carrying label key=value (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Keep every replica in this jurisdiction: only disks under a location labelled
        /// jurisdiction=VALUE (fabricctl topology label).
        #[arg(long)]
        residency: Option<String>,
    },
    List,
    /// Delete an empty pool (refused while it holds volumes).
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum VolumeCmd {
    Create {
        name: String,
        /// Size, e.g. 10GiB.
        #[arg(long)]
        size: String,
        #[arg(long, default_value = "default")]
        pool: String,
        /// Extent size, e.g. 4MiB (default: the cluster's).
        #[arg(long)]
        extent_size: Option<String>,
        /// Idempotency key: a retried create with the same id succeeds once.
        #[arg(long)]
        request_id: Option<String>,
    },
    List,
    Show {
        name: String,
    },
    Delete {
        name: String,
    },
    Resize {
        name: String,
        #[arg(long)]
        size: String,
    },
    /// IO limits, reservation and weight.
    #[command(subcommand)]
    Qos(tools::qos::QosCmd),
    /// How a hypervisor host reaches the volume through a gateway: its NBD URI, and the QEMU
    /// and libvirt snippets that attach it (with reconnection across gateway restarts). Any
    /// gateway serves any volume; the first client's open attaches it there.
    Map {
        name: String,
        /// The gateway's NBD address, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:10809")]
        gateway: String,
    },
    /// Grant a new fencing epoch to CLIENT; with --force, take the volume from its holder,
    /// whose writes replicas refuse once they see the new epoch.
    Attach {
        name: String,
        #[arg(long)]
        client: String,
        #[arg(long)]
        force: bool,
    },
    /// Let go of a volume attached to CLIENT (a gateway does it when it stops cleanly). The
    /// detach acts under CLIENT's attach epoch: the volume's latest, read first, unless
    /// --epoch names one. Refused as fenced if the volume was attached again since.
    Detach {
        name: String,
        #[arg(long)]
        client: String,
        /// Let go only of the attachment of this epoch (as `volume show` printed it), not of
        /// a newer attach under the same client name.
        #[arg(long)]
        epoch: Option<u64>,
    },
    /// Where each replica sits and under which jurisdiction, as a statement signed by the
    /// cell key (written to --out for `fabricctl audit verify`).
    Residency {
        name: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    fabric::identity::tls::install_default_provider();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Ca(_) | Cmd::Cert(CertCmd::Issue { .. }) => local(cli),
        Cmd::Audit(ref a) if a.is_local() => local(cli),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("start tokio runtime")
            .block_on(run(cli)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(s) => eprintln!(
                    "fabricctl: {}: {}{}",
                    code_name(s.code()),
                    s.message(),
                    causes(s)
                ),
                None => eprintln!("fabricctl: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// What lies under a transport failure (a TLS alert from the server, say), as `: a: b`.
fn causes(status: &tonic::Status) -> String {
    let mut out = String::new();
    let mut next = std::error::Error::source(status);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !status.message().contains(&text) && !out.contains(&text) {
            out += &format!(": {text}");
        }
        next = e.source();
    }
    out
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        AlreadyExists => "ALREADY_EXISTS",
        NotFound => "NOT_FOUND",
        InvalidArgument => "INVALID_ARGUMENT",
        FailedPrecondition => "FAILED_PRECONDITION",
        PermissionDenied => "PERMISSION_DENIED",
        Unauthenticated => "UNAUTHENTICATED",
        Unavailable => "UNAVAILABLE",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        _ => "ERROR",
    }
}

fn parse_bytes(what: &str, s: &str) -> anyhow::Result<u64> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .with_context(|| format!("{what} {s:?}"))
}

async fn set_draining(client: &Client, node: u64, draining: bool) -> anyhow::Result<pb::Node> {
    Ok(client
        .call(|mut c| async move {
            c.set_node_draining(pb::NodeDrainingRequest { node, draining })
                .await
        })
        .await?)
}

fn balance_request(
    pool: String,
    max_moves: u32,
    max_bytes: Option<String>,
) -> anyhow::Result<pb::BalanceRequest> {
    let max_bytes = match max_bytes {
        Some(b) => match parse_bytes("--max-bytes", &b)? {
            0 => bail!("--max-bytes must be more than 0"),
            b => b,
        },
        None => 0,
    };
    Ok(pb::BalanceRequest {
        pool,
        max_moves,
        max_bytes,
    })
}

/// A plan as a diff: the moves, then each node's replicas and bytes before and after.
fn print_plan(plan: &pb::BalancePlan, as_json: bool) {
    let moves: Vec<Value> = plan
        .moves
        .iter()
        .map(|m| {
            json!({
                "pg": m.pg, "from_node": m.from_node, "from_disk": m.from_disk,
                "to_node": m.to_node, "to_disk": m.to_disk, "bytes": m.bytes,
                "from": format!("node {} disk {}", m.from_node, m.from_disk),
                "to": format!("node {} disk {}", m.to_node, m.to_disk),
            })
        })
        .collect();
    let nodes: Vec<Value> = plan
        .nodes
        .iter()
        .map(|n| {
            json!({
                "node": n.node, "replicas_before": n.replicas_before,
                "replicas_after": n.replicas_after, "bytes_before": n.bytes_before,
                "bytes_after": n.bytes_after,
                "replicas": format!("{} -> {}", n.replicas_before, n.replicas_after),
                "bytes": format!("{} -> {}", n.bytes_before, n.bytes_after),
            })
        })
        .collect();
    let bytes: u64 = plan.moves.iter().map(|m| m.bytes).sum();
    let summary = json!({
        "pool": plan.pool, "pool_epoch": plan.pool_epoch, "applied_epoch": plan.applied_epoch,
        "moves_planned": plan.moves.len(), "moves_wanted": plan.moves_wanted, "bytes": bytes,
        "unbalanced_disks_before": plan.unbalanced_disks_before,
        "unbalanced_disks_after": plan.unbalanced_disks_after,
        "rule_violations_after": plan.violations_after,
    });
    if as_json {
        let mut all = summary;
        all["moves"] = Value::Array(moves);
        all["nodes"] = Value::Array(nodes);
        println!("{all}");
        return;
    }
    Output::one(summary).print(false);
    println!();
    table(&["pg", "from", "to", "bytes"], &moves);
    println!();
    table(&["node", "replicas", "bytes"], &nodes);
}

/// The revoked certificates.
fn revocations_output(r: &pb::Revocations) -> Output {
    Output::list(
        r.revoked
            .iter()
            .map(|c| json!({"serial": c.serial, "principal": c.principal, "reason": c.reason}))
            .collect(),
        &["serial", "principal", "reason"],
    )
}

fn reply(r: tools::reply::Reply) -> Output {
    match r {
        tools::reply::Reply::One(v) => Output::one(v),
        tools::reply::Reply::List(rows, columns) => Output::list(rows, columns),
    }
}

/// The group's membership after a change.
fn members_output(r: &pb::MembershipReply) -> Output {
    Output::list(
        r.members
            .iter()
            .map(|m| json!({"id": m.id, "rpc_addr": m.rpc_addr, "voter": m.voter}))
            .collect(),
        &["id", "rpc_addr", "voter"],
    )
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let endpoints: Vec<String> = if cli.endpoints.is_empty() {
        // Storage-only nodes have no metadata address.
        discover(&cli.data_dir)?
            .into_iter()
            .map(|n| n.rpc_addr)
            .filter(|a| !a.is_empty())
            .collect()
    } else {
        cli.endpoints.clone()
    };
    if endpoints.is_empty() {
        anyhow::bail!(
            "no metadata member found under {} (only storage nodes); give --endpoints",
            cli.data_dir.display()
        );
    }
    let cert_dir = cli
        .cert_dir
        .clone()
        .unwrap_or_else(|| cli.data_dir.join(fabric::identity::dev_pki::ADMIN_DIR));
    let transport = fabric::identity::Transport::load(&cert_dir).with_context(|| {
        format!(
            "load your certificate from {} (give --cert-dir DIR, as `fabricctl cert issue user \
             NAME` writes it)",
            cert_dir.display()
        )
    })?;
    let client = Client::new(endpoints, transport);
    let out = match cli.command {
        Cmd::Status => status(&client).await?,
        Cmd::Auth(cmd) => reply(tools::auth::run(cmd, &client).await?),
        Cmd::JoinToken(cmd) => reply(tools::join_token::run(cmd, &client, &cert_dir).await?),
        Cmd::Audit(cmd) => reply(tools::audit::run(cmd, &client).await?),
        Cmd::Approve { id, op } => reply(tools::approvals::approve(&client, id, op).await?),
        Cmd::Deny { id, reason } => reply(tools::approvals::deny(&client, id, reason).await?),
        Cmd::Approvals(cmd) => reply(tools::approvals::run(cmd, &client).await?),
        Cmd::Topology(cmd) => reply(tools::residency::run(cmd, &client).await?),
        Cmd::Drift { cmd } => reply(tools::drift::run(cmd, &client).await?),
        Cmd::CellKey(cmd) => reply(tools::rotation::cell_key(cmd, &client).await?),
        Cmd::Trust(cmd) => reply(tools::rotation::trust(cmd, &client, &cert_dir).await?),
        Cmd::Scrub(cmd) => reply(tools::scrub::run(cmd, &client).await?),
        Cmd::Infer(cmd) => reply(tools::infer::run(cmd, &client, cli.json).await?),
        Cmd::Volume(VolumeCmd::Qos(cmd)) => reply(tools::qos::qos(cmd, &client).await?),
        Cmd::Volume(VolumeCmd::Residency { name, out }) => {
            reply(tools::residency::statement(&client, &name, out.as_deref()).await?)
        }
        Cmd::Ca(_) | Cmd::Cert(CertCmd::Issue { .. }) => {
            unreachable!("local commands ask no member")
        }
        Cmd::Cert(CertCmd::Revoke {
            serial,
            principal,
            reason,
        }) => {
            let req = pb::RevokedCertificate {
                serial,
                principal,
                reason,
            };
            let r = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.revoke_certificate(req).await }
                })
                .await?;
            revocations_output(&r)
        }
        Cmd::Cert(CertCmd::Revoked) => {
            let r = client
                .call(
                    |mut c| async move { c.list_revocations(pb::ListRevocationsRequest {}).await },
                )
                .await?;
            revocations_output(&r)
        }
        Cmd::Node(NodeCmd::List) => {
            let r = client
                .call(|mut c| async move { c.list_nodes(pb::ListNodesRequest {}).await })
                .await?;
            Output::list(
                r.nodes.iter().map(node_json).collect(),
                &["id", "rpc_addr", "location", "health", "membership"],
            )
        }
        Cmd::Node(NodeCmd::AddLearner { id, rpc_addr }) => {
            members_output(&client.add_learner(id, &rpc_addr).await?)
        }
        Cmd::Node(NodeCmd::Promote { id }) => members_output(&client.promote(id).await?),
        Cmd::Node(NodeCmd::Out { id }) | Cmd::Node(NodeCmd::In { id }) => {
            let out = matches!(cli.command, Cmd::Node(NodeCmd::Out { .. }));
            let n = client
                .call(|mut c| async move {
                    c.set_node_participation(pb::NodeParticipationRequest { node: id, out })
                        .await
                })
                .await?;
            Output::one(node_json(&n))
        }
        Cmd::Node(NodeCmd::Drain { id, no_wait }) => {
            let n = set_draining(&client, id, true).await?;
            if no_wait {
                Output::one(node_json(&n))
            } else {
                let done = Movement::Drain(id).follow(&client, cli.json).await?;
                Output::one(json!({"drained": id, "progress": done}))
            }
        }
        Cmd::Node(NodeCmd::Undrain { id, no_wait }) => {
            let n = set_draining(&client, id, false).await?;
            if no_wait {
                Output::one(node_json(&n))
            } else {
                let done = Movement::Settle.follow(&client, cli.json).await?;
                Output::one(json!({"undrained": id, "progress": done}))
            }
        }
        Cmd::Balance(BalanceCmd::Plan {
            pool,
            max_moves,
            max_bytes,
        }) => {
            let req = balance_request(pool, max_moves.unwrap_or(0), max_bytes)?;
            let plan = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.plan_balance(req).await }
                })
                .await?;
            print_plan(&plan, cli.json);
            return Ok(());
        }
        Cmd::Balance(BalanceCmd::Apply {
            pool,
            max_moves,
            max_bytes,
            no_wait,
        }) => {
            if max_moves == 0 {
                bail!("--max-moves must be at least 1");
            }
            let req = balance_request(pool, max_moves, max_bytes)?;
            let plan = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.apply_balance(req).await }
                })
                .await?;
            print_plan(&plan, cli.json);
            if !no_wait && !plan.moves.is_empty() {
                let movement = Movement::Pool {
                    pool: plan.pool.clone(),
                    pgs: plan.moves.iter().map(|m| m.pg).collect(),
                };
                let done = movement.follow(&client, cli.json).await?;
                Output::one(
                    json!({"balanced": plan.pool, "moves": plan.moves.len(), "progress": done}),
                )
                .print(cli.json);
            }
            return Ok(());
        }
        Cmd::Node(NodeCmd::Remove { id }) => members_output(&client.remove_member(id).await?),
        Cmd::Pool(PoolCmd::Create {
            name,
            replicas,
            min_replicas,
            failure_domain,
            pg_count,
            tags,
            residency,
        }) => {
            let mut tag_filter = Vec::new();
            if let Some(r) = residency {
                tag_filter.push(pb::LocationLevel {
                    level: fabric::meta::state_residency::JURISDICTION.into(),
                    name: r,
                });
            }
            for t in &tags {
                let (level, name) = t
                    .split_once('=')
                    .with_context(|| format!("--tag {t:?}: want level=name"))?;
                tag_filter.push(pb::LocationLevel {
                    level: level.into(),
                    name: name.into(),
                });
            }
            let req = pb::CreatePoolRequest {
                name,
                rule: Some(pb::Rule {
                    replicas,
                    min_replicas,
                    failure_domain,
                    tag_filter,
                }),
                pg_count,
            };
            let p = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.create_pool(req).await }
                })
                .await?;
            Output::one(pool_json(&p))
        }
        Cmd::Pool(PoolCmd::List) => {
            let r = client
                .call(|mut c| async move { c.list_pools(pb::ListPoolsRequest {}).await })
                .await?;
            Output::list(
                r.pools.iter().map(pool_json).collect(),
                &[
                    "name",
                    "replicas",
                    "failure_domain",
                    "pg_count",
                    "map_epoch",
                    "pgs_moving",
                ],
            )
        }
        Cmd::Volume(VolumeCmd::Create {
            name,
            size,
            pool,
            extent_size,
            request_id,
        }) => {
            let req = pb::CreateVolumeRequest {
                name,
                pool,
                size_bytes: parse_bytes("--size", &size)?,
                extent_size_bytes: extent_size
                    .map(|e| parse_bytes("--extent-size", &e))
                    .transpose()?
                    .unwrap_or(0),
                request_id: request_id.unwrap_or_default(),
            };
            Output::one(volume_json(&client.create_volume(req).await?))
        }
        Cmd::Volume(VolumeCmd::List) => {
            let r = client
                .call(|mut c| async move { c.list_volumes(pb::ListVolumesRequest {}).await })
                .await?;
            Output::list(
                r.volumes.iter().map(volume_json).collect(),
                &["id", "name", "pool", "size_bytes", "state", "attach_epoch"],
            )
        }
        Cmd::Volume(VolumeCmd::Show { name }) => {
            let v = client
                .call(|mut c| {
                    let name = name.clone();
                    async move { c.get_volume(pb::GetVolumeRequest { name }).await }
                })
                .await?;
            let pools = client
                .call(|mut c| async move { c.list_pools(pb::ListPoolsRequest {}).await })
                .await?;
            let mut out = volume_json(&v);
            if let Some(pool) = pools.pools.iter().find(|p| p.name == v.pool) {
                out["replica_state"] = replica_state(&v, pool);
            }
            Output::one(out)
        }
        Cmd::Volume(VolumeCmd::Map { name, gateway }) => {
            let (host, port) = tools::volume_map::split_gateway(&gateway)?;
            let v = client
                .call(|mut c| {
                    let name = name.clone();
                    async move { c.get_volume(pb::GetVolumeRequest { name }).await }
                })
                .await?;
            let map = tools::volume_map::volume_map(&v.name, &host, port);
            if cli.json {
                println!(
                    "{}",
                    json!({
                        "volume": v.name, "size_bytes": v.size_bytes, "uri": map.uri,
                        "qemu": map.qemu, "libvirt": map.libvirt,
                    })
                );
            } else {
                println!("{}\n", map.uri);
                println!("qemu:\n  {}\n", map.qemu);
                println!("libvirt:\n{}", map.libvirt);
            }
            return Ok(());
        }
        Cmd::Pool(PoolCmd::Delete { name }) => {
            // One request id across retries: a retried delete that already happened succeeds.
            let req = pb::DeletePoolRequest {
                name: name.clone(),
                request_id: new_request_id(),
            };
            client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.delete_pool(req).await }
                })
                .await?;
            Output::one(json!({ "deleted": name }))
        }
        Cmd::Volume(VolumeCmd::Delete { name }) => {
            // One request id across retries: a retried delete that already happened succeeds.
            let req = pb::DeleteVolumeRequest {
                name: name.clone(),
                request_id: new_request_id(),
            };
            client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.delete_volume(req).await }
                })
                .await?;
            Output::one(json!({ "deleted": name }))
        }
        Cmd::Volume(VolumeCmd::Attach {
            name,
            client: holder,
            force,
        }) => {
            let req = pb::AttachVolumeRequest {
                name,
                client: holder,
                force,
                request_id: new_request_id(),
            };
            let a = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.attach_volume(req).await }
                })
                .await?;
            Output::one(json!({
                "volume": a.volume, "client": a.client, "attach_epoch": a.attach_epoch,
            }))
        }
        Cmd::Volume(VolumeCmd::Detach {
            name,
            client: holder,
            epoch,
        }) => {
            let attach_epoch = match epoch {
                Some(e) => e,
                None => {
                    let v = client
                        .call(|mut c| {
                            let name = name.clone();
                            async move { c.get_volume(pb::GetVolumeRequest { name }).await }
                        })
                        .await?;
                    if v.attach_epoch == 0 {
                        // Never attached: there is nothing to let go of.
                        Output::one(volume_json(&v)).print(cli.json);
                        return Ok(());
                    }
                    v.attach_epoch
                }
            };
            let req = pb::DetachVolumeRequest {
                name,
                client: holder,
                attach_epoch,
            };
            let v = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.detach_volume(req).await }
                })
                .await?;
            Output::one(volume_json(&v))
        }
        Cmd::Volume(VolumeCmd::Resize { name, size }) => {
            let size_bytes = parse_bytes("--size", &size)?;
            let req = pb::ResizeVolumeRequest {
                name,
                size_bytes,
                request_id: new_request_id(),
            };
            let v = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.resize_volume(req).await }
                })
                .await?;
            Output::one(volume_json(&v))
        }
    };
    out.print(cli.json);
    Ok(())
}

/// The commands that work on local files only.
fn local(cli: Cli) -> anyhow::Result<()> {
    let out = match cli.command {
        Cmd::Ca(CaCmd::Init { dir, cluster }) => tools::identity::ca_init(&dir, &cluster)?,
        Cmd::Cert(CertCmd::Issue {
            kind,
            name,
            ca_dir,
            out,
            days,
            sans,
            overwrite,
        }) => tools::identity::cert_issue(IssueArgs {
            kind,
            name: &name,
            ca_dir: &ca_dir,
            out: &out,
            days,
            sans: &sans,
            overwrite,
        })?,
        Cmd::Audit(cmd) => {
            reply(tools::audit::run_local(cmd)?).print(cli.json);
            return Ok(());
        }
        _ => unreachable!("a command that asks the cluster"),
    };
    Output::one(out).print(cli.json);
    Ok(())
}

/// Asks every known member for its status; members named by others' membership are included.
async fn status(client: &Client) -> anyhow::Result<Output> {
    let mut addrs: BTreeMap<String, Option<u64>> = client
        .endpoints()
        .iter()
        .map(|a| (a.clone(), None))
        .collect();
    let mut answers: BTreeMap<String, Result<pb::NodeStatus, tonic::Status>> = BTreeMap::new();
    // Two rounds: the second reaches members only the first round's answers named.
    for _ in 0..2 {
        let pending: Vec<String> = addrs
            .keys()
            .filter(|a| !answers.contains_key(*a))
            .cloned()
            .collect();
        for addr in pending {
            let r = client.status_of(&addr).await;
            if let Ok(s) = &r {
                for m in &s.members {
                    addrs.entry(m.rpc_addr.clone()).or_insert(Some(m.id));
                }
            }
            answers.insert(addr, r);
        }
    }
    let mut leader_id = 0;
    let mut term = 0;
    let mut nodes = Vec::new();
    for (addr, r) in &answers {
        match r {
            Ok(s) => {
                if s.term >= term && s.leader_id != 0 {
                    term = s.term;
                    leader_id = s.leader_id;
                }
                nodes.push(json!({
                    "id": s.id, "address": s.rpc_addr, "pid": s.pid, "role": s.role,
                    "term": s.term, "last_applied_index": s.last_applied_index,
                    "last_log_index": s.last_log_index, "snapshot_index": s.snapshot_index,
                    "purged_index": s.purged_index,
                    "reachable": true,
                }));
            }
            Err(e) => nodes.push(json!({
                "id": addrs.get(addr).copied().flatten(), "address": addr, "pid": null, "role": "unreachable",
                "reachable": false, "error": e.message(),
            })),
        }
    }
    nodes.sort_by_key(|n| n["id"].as_u64().unwrap_or(u64::MAX));
    if nodes.iter().all(|n| n["reachable"] == false) {
        bail!("no member answered at {:?}", client.endpoints());
    }
    Ok(Output::Status { leader_id, nodes })
}

fn node_json(n: &pb::Node) -> Value {
    let location: Vec<String> = n
        .location
        .iter()
        .flat_map(|l| l.levels.iter().map(|x| format!("{}={}", x.level, x.name)))
        .collect();
    json!({
        "id": n.id, "rpc_addr": n.rpc_addr, "data_addr": n.data_addr, "location": location.join(","),
        "health": n.health, "membership": n.membership, "draining": n.draining,
        "last_heartbeat_ms": n.last_heartbeat_ms,
    })
}

fn pool_json(p: &pb::Pool) -> Value {
    let rule = p.rule.clone().unwrap_or_default();
    json!({
        "name": p.name, "replicas": rule.replicas, "min_replicas": rule.min_replicas,
        "failure_domain": rule.failure_domain, "pg_count": p.pg_count, "map_epoch": p.map_epoch,
        "pgs": p.pgs.iter().map(|g| g.replicas.clone()).collect::<Vec<_>>(),
        "leaving": p.pgs.iter().map(|g| g.leaving.clone()).collect::<Vec<_>>(),
        "pgs_moving": p.pgs.iter().filter(|g| !g.leaving.is_empty()).count(),
    })
}

fn volume_json(v: &pb::Volume) -> Value {
    json!({
        "id": v.id, "name": v.name, "pool": v.pool, "size_bytes": v.size_bytes,
        "extent_size_bytes": v.extent_size_bytes, "state": v.state, "attach_epoch": v.attach_epoch,
        "attached_to": v.attached_to,
    })
}

/// How redundant a volume is: PGs with every replica current, PGs with some replica stale
/// (it missed writes), and how many current replicas of the volume each node holds.
fn replica_state(v: &pb::Volume, pool: &pb::Pool) -> Value {
    let stale_in = |pg: u32| {
        v.stale
            .iter()
            .find(|s| s.pg == pg)
            .map(|s| s.nodes.clone())
            .unwrap_or_default()
    };
    let mut per_node: std::collections::BTreeMap<u64, u64> = Default::default();
    for pg in &pool.pgs {
        let stale = stale_in(pg.pg);
        for node in pg.replicas.iter().filter(|n| !stale.contains(n)) {
            *per_node.entry(*node).or_default() += 1;
        }
    }
    let degraded = v.stale.iter().filter(|s| !s.nodes.is_empty()).count();
    let mut rebuilding_pgs: Vec<u32> = v.rebuilding.iter().map(|r| r.pg).collect();
    rebuilding_pgs.sort_unstable();
    rebuilding_pgs.dedup();
    json!({
        "pgs_total": pool.pgs.len(),
        "pgs_full_redundancy": pool.pgs.len() - degraded,
        "pgs_degraded": degraded,
        "pgs_rebuilding": rebuilding_pgs.len(),
        "rebuild_bytes_done": v.rebuilding.iter().map(|r| r.done_bytes).sum::<u64>(),
        "rebuild_bytes_total": v.rebuilding.iter().map(|r| r.total_bytes).sum::<u64>(),
        "rebuilding": v.rebuilding.iter().map(|r| json!({
            "pg": r.pg, "node": r.node, "done_bytes": r.done_bytes, "total_bytes": r.total_bytes,
        })).collect::<Vec<_>>(),
        "stale": v.stale.iter().map(|s| json!({"pg": s.pg, "nodes": s.nodes})).collect::<Vec<_>>(),
        "current_replicas_per_node": per_node.iter().map(|(n, c)| (n.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
    })
}

/// What a command prints.
enum Output {
    One(Value),
    List {
        rows: Vec<Value>,
        columns: &'static [&'static str],
    },
    Status {
        leader_id: u64,
        nodes: Vec<Value>,
    },
}

impl Output {
    fn one(v: Value) -> Output {
        Output::One(v)
    }

    fn list(rows: Vec<Value>, columns: &'static [&'static str]) -> Output {
        Output::List { rows, columns }
    }

    fn print(self, as_json: bool) {
        match (self, as_json) {
            (Output::One(v), true) => println!("{v}"),
            (Output::One(v), false) => {
                if let Value::Object(m) = v {
                    for (k, v) in m.iter().filter(|(k, _)| *k != "pgs") {
                        println!("{k:<18} {}", cell(v));
                    }
                }
            }
            (Output::List { rows, .. }, true) => println!("{}", Value::Array(rows)),
            (Output::List { rows, columns }, false) => table(columns, &rows),
            (Output::Status { leader_id, nodes }, true) => {
                println!("{}", json!({ "leader_id": leader_id, "nodes": nodes }))
            }
            (Output::Status { leader_id, nodes }, false) => {
                println!(
                    "leader: {}",
                    if leader_id == 0 {
                        "none".into()
                    } else {
                        leader_id.to_string()
                    }
                );
                table(
                    &["id", "address", "pid", "role", "term", "last_applied_index"],
                    &nodes,
                );
            }
        }
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn table(columns: &[&str], rows: &[Value]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(&r[*c])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].len())
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    let line = |vals: Vec<String>| {
        let parts: Vec<String> = vals
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(columns.iter().map(|c| c.to_uppercase()).collect());
    for r in cells {
        line(r);
    }
}
