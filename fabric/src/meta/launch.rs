//! `fabricd dev --nodes N`: N `fabricd node` child processes on loopback, each a storage node
//! in its own rack, and a `fabricd gateway` child serving the volumes over NBD. The first 3
//! nodes (5 once N ≥ 5) are also the voters of the metadata group, bootstrapped with a default
//! pool; the others are storage-only and register through the API, as in a large cluster.
//!
//! Member addresses (gRPC and data) are recorded in `DATA_DIR/cluster.json` and reused on the
//! next start, since the Raft membership and the node records store them. Children die with
//! the launcher (`PR_SET_PDEATHSIG`), and each logs to `DATA_DIR/node-ID/fabricd.log` (the
//! gateway to `DATA_DIR/gateway/fabricd.log`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use proto::meta as pb;
use serde::{Deserialize, Serialize};

use super::client::Client;
use crate::identity::Transport;
use crate::identity::dev_pki::DevPki;

/// Most nodes a dev cluster may have.
pub const DEV_NODES_MAX: u32 = 16;

/// How many of a dev cluster's `nodes` are voters of the metadata group.
pub fn dev_voters(nodes: u32) -> u32 {
    if nodes >= 5 { 5 } else { nodes.min(3) }
}
/// How long the launcher waits for every member to register.
pub const DEV_FORM_TIMEOUT_MS: u64 = 60_000;
/// How long a member may take to exit after SIGTERM before it is killed.
pub const DEV_STOP_TIMEOUT_MS: u64 = 10_000;
/// Placement groups of the default pool.
pub const DEV_DEFAULT_PG_COUNT: u32 = 64;
/// How long a node stays down before a dev cluster marks it out: short, so that a killed node
/// is seen healing within a minute (a production node's default is ten minutes).
pub const DEV_NODE_OUT_AFTER_MS: u64 = 30_000;

#[derive(Serialize, Deserialize)]
struct ClusterFile {
    /// id → gRPC address of every metadata member (voter).
    members: Vec<(u64, String)>,
    /// id → replica (data path) address; absent in files written before nodes stored data.
    #[serde(default)]
    data: Vec<(u64, String)>,
}

/// The running child processes.
pub struct DevCluster {
    /// id → gRPC address of each metadata member.
    pub members: Vec<(u64, String)>,
    /// id → replica address of each node.
    pub data: Vec<(u64, String)>,
    data_dir: PathBuf,
    children: Vec<Child>,
    gateway: Option<Child>,
    pki: DevPki,
    /// The administrator's identity, which the launcher calls the cluster with.
    admin: Transport,
}

/// The client name, and certificate name, of a dev cluster's gateway.
pub const DEV_GATEWAY: &str = "dev-gateway";

/// The gRPC address of every member and the data address of every node: from
/// `cluster.json`, or fresh ports that differ from `avoid` (the gateway's NBD address).
fn member_addresses(
    data_dir: &Path,
    nodes: u32,
    voters: u32,
    avoid: std::net::SocketAddr,
) -> anyhow::Result<ClusterFile> {
    let path = data_dir.join("cluster.json");
    if let Ok(bytes) = std::fs::read(&path) {
        let mut file: ClusterFile =
            serde_json::from_slice(&bytes).with_context(|| format!("read {}", path.display()))?;
        // Files written before storage-only nodes list every node as a member.
        let held = file.data.len().max(file.members.len());
        if held != nodes as usize {
            bail!(
                "{} holds a {held}-node cluster; start with --nodes {held} or use another --data-dir",
                data_dir.display(),
            );
        }
        if file.data.len() == held {
            return Ok(file);
        }
        let mut taken: Vec<std::net::SocketAddr> = vec![avoid];
        taken.extend(
            file.members
                .iter()
                .filter_map(|(_, a)| a.parse::<std::net::SocketAddr>().ok()),
        );
        file.data = numbered(fresh_addresses(nodes, &taken)?);
        write_cluster_file(&path, &file)?;
        return Ok(file);
    }
    let mut members = fresh_addresses(voters + nodes, &[avoid])?;
    let data = members.split_off(voters as usize);
    let file = ClusterFile {
        members: numbered(members),
        data: numbered(data),
    };
    std::fs::create_dir_all(data_dir)?;
    write_cluster_file(&path, &file)?;
    Ok(file)
}

/// `count` distinct free loopback addresses, none of them in `avoid`. Every port stays bound
/// until all are picked: the kernel may hand a just-released port out again, and two members
/// given one port would leave one unable to listen.
fn fresh_addresses(count: u32, avoid: &[std::net::SocketAddr]) -> anyhow::Result<Vec<String>> {
    let mut held = Vec::with_capacity(count as usize);
    let mut addrs = Vec::with_capacity(count as usize);
    while addrs.len() < count as usize {
        let l = std::net::TcpListener::bind("127.0.0.1:0").context("pick a free port")?;
        let addr = l.local_addr()?;
        // An avoided port is dropped at once; the next bind gets another.
        if !avoid.iter().any(|a| a.port() == addr.port()) {
            addrs.push(addr.to_string());
            held.push(l);
        }
    }
    Ok(addrs)
}

/// Addresses paired with member ids 1, 2, ...
fn numbered(addrs: Vec<String>) -> Vec<(u64, String)> {
    (1..).zip(addrs).collect()
}

fn write_cluster_file(path: &Path, file: &ClusterFile) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(file)?)
        .with_context(|| format!("write {}", path.display()))
}

/// Starts `cmd` as a child that dies with the launcher.
fn spawn_child(mut cmd: Command, what: &str) -> anyhow::Result<Child> {
    // SAFETY: prctl only sets a flag of the child process; no allocation after fork.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("start {what}"))
}

fn log_file(dir: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    Ok(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("fabricd.log"))?)
}

impl DevCluster {
    /// Starts the nodes (`nodes_per_rack` to a rack, the first `voters` also members of the
    /// metadata group), waits for all to register, and ensures the default pool exists. A data
    /// directory that holds a cluster keeps its voters.
    /// `nbd_listen` is the gateway's address, which no member may be given.
    pub async fn start(
        data_dir: &Path,
        nodes: u32,
        nodes_per_rack: u32,
        voters: u32,
        nbd_listen: std::net::SocketAddr,
        metrics_listen: Option<std::net::SocketAddr>,
        two_person: bool,
    ) -> anyhow::Result<DevCluster> {
        assert!(
            (1..=DEV_NODES_MAX).contains(&nodes),
            "validated by the caller"
        );
        let ClusterFile { members, data } = member_addresses(data_dir, nodes, voters, nbd_listen)?;
        let pki = DevPki::ensure(data_dir).context("create the dev cluster's CA")?;
        let admin = Transport::load(&pki.ensure_admin()?)?;
        let exe = std::env::current_exe().context("find the fabricd executable")?;
        let peers: Vec<String> = members.iter().map(|(id, a)| format!("{id}={a}")).collect();
        let mut cluster = DevCluster {
            members: members.clone(),
            data: data.clone(),
            data_dir: data_dir.to_path_buf(),
            children: Vec::new(),
            gateway: None,
            pki: pki.clone(),
            admin,
        };
        let member_endpoints: Vec<&str> = members.iter().map(|(_, a)| a.as_str()).collect();
        for (id, data_addr) in &data {
            let dir: PathBuf = data_dir.join(format!("node-{id}"));
            let log = log_file(&dir)?;
            pki.ensure_node(*id)
                .with_context(|| format!("issue node {id}'s certificate"))?;
            let mut cmd = Command::new(&exe);
            cmd.arg("node")
                .arg("--id")
                .arg(id.to_string())
                .arg("--data-dir")
                .arg(&dir)
                .arg("--data-addr")
                .arg(data_addr)
                .arg("--location")
                .arg(format!(
                    "rack=rack{},host=host{id}",
                    (id - 1) / u64::from(nodes_per_rack) + 1
                ))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            if let Some(m) = metrics_listen {
                // A free port of the same address; the node records it in its node.json.
                cmd.arg("--metrics-listen")
                    .arg(std::net::SocketAddr::new(m.ip(), 0).to_string());
            }
            match members.iter().find(|(m, _)| m == id) {
                Some((_, addr)) => {
                    cmd.arg("--roles")
                        .arg("meta,storage")
                        .arg("--listen")
                        .arg(addr)
                        .arg("--node-out-after-ms")
                        .arg(DEV_NODE_OUT_AFTER_MS.to_string())
                        // Members sign the certificates of nodes that join with a token.
                        .arg("--ca-dir")
                        .arg(pki.ca_dir());
                    if *id == 1 {
                        cmd.arg("--bootstrap")
                            .arg("--peers")
                            .arg(peers.join(","))
                            .arg("--bootstrap-admin")
                            .arg(DevPki::admin_principal().to_string())
                            .arg("--two-person")
                            .arg(if two_person { "on" } else { "off" });
                        if two_person {
                            pki.ensure_approver()?;
                            cmd.arg("--bootstrap-approver")
                                .arg(DevPki::approver_principal().to_string());
                        }
                    }
                }
                None => {
                    cmd.arg("--roles")
                        .arg("storage")
                        .arg("--meta")
                        .arg(member_endpoints.join(","));
                }
            }
            cluster
                .children
                .push(spawn_child(cmd, &format!("node {id}"))?);
        }
        if let Err(e) = cluster.form(nodes).await {
            cluster.stop();
            return Err(e);
        }
        Ok(cluster)
    }

    async fn form(&mut self, nodes: u32) -> anyhow::Result<()> {
        let client = self.client();
        let started = Instant::now();
        let deadline = started + Duration::from_millis(DEV_FORM_TIMEOUT_MS);
        loop {
            let listed = client
                .call(|mut c| async move { c.list_nodes(pb::ListNodesRequest {}).await })
                .await;
            if let Ok(r) = &listed
                && r.nodes.len() >= nodes as usize
            {
                tracing::info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "every member registered"
                );
                break;
            }
            if let Some(exited) = self.exited_member() {
                bail!("{exited}");
            }
            if Instant::now() > deadline {
                bail!("the nodes did not all register within {DEV_FORM_TIMEOUT_MS} ms: {listed:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let replicas = nodes.min(3);
        let req = pb::CreatePoolRequest {
            name: "default".into(),
            rule: Some(pb::Rule {
                replicas,
                min_replicas: replicas / 2 + 1,
                failure_domain: "rack".into(),
                tag_filter: Vec::new(),
            }),
            pg_count: DEV_DEFAULT_PG_COUNT,
        };
        let created = client
            .call(|mut c| {
                let req = req.clone();
                async move { c.create_pool(req).await }
            })
            .await;
        match created {
            Ok(_) => tracing::info!("created pool default ({replicas} replicas across racks)"),
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) => bail!("create the default pool: {}", s.message()),
        }
        Ok(())
    }

    /// Creates the volumes that do not exist yet (in the default pool) and starts the gateway
    /// serving all of them on `nbd_listen`.
    pub async fn start_gateway(
        &mut self,
        data_dir: &Path,
        volumes: &[(String, u64)],
        nbd_listen: std::net::SocketAddr,
        metrics_listen: Option<std::net::SocketAddr>,
        resync_pace: crate::gateway::ResyncPace,
    ) -> anyhow::Result<()> {
        let client = self.client();
        let gateway_dir = self
            .pki
            .ensure_gateway(DEV_GATEWAY)
            .context("issue the gateway's certificate")?;
        bind_volume_user(&client, &gateway_principal(DEV_GATEWAY)).await?;
        for (name, size_bytes) in volumes {
            let req = pb::CreateVolumeRequest {
                name: name.clone(),
                pool: "default".into(),
                size_bytes: *size_bytes,
                extent_size_bytes: 0,
                request_id: String::new(),
            };
            match client.create_volume(req).await {
                Ok(_) => tracing::info!(volume = %name, size_bytes, "created volume"),
                Err(s) if s.code() == tonic::Code::AlreadyExists => {}
                Err(s) => bail!("create volume {name}: {}", s.message()),
            }
        }
        let exe = std::env::current_exe().context("find the fabricd executable")?;
        let endpoints: Vec<&str> = self.members.iter().map(|(_, a)| a.as_str()).collect();
        let log = log_file(&data_dir.join("gateway"))?;
        let mut cmd = Command::new(exe);
        cmd.arg("gateway")
            .arg("--endpoints")
            .arg(endpoints.join(","))
            .arg("--nbd-listen")
            .arg(nbd_listen.to_string())
            .arg("--client-name")
            .arg(DEV_GATEWAY)
            .arg("--cert-dir")
            .arg(&gateway_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (name, _) in volumes {
            cmd.arg("--volume").arg(name);
        }
        if let Some(m) = metrics_listen {
            cmd.arg("--metrics-listen").arg(m.to_string());
        }
        let pace = clap::ValueEnum::to_possible_value(&resync_pace).expect("a named value");
        cmd.arg("--resync-pace").arg(pace.get_name());
        self.gateway = Some(spawn_child(cmd, "the gateway")?);
        Ok(())
    }

    /// A client of the members, as the administrator.
    fn client(&self) -> Client {
        Client::new(
            self.members.iter().map(|(_, a)| a.clone()).collect(),
            self.admin.clone(),
        )
    }

    /// A node that exited before the cluster formed, named with its status and log file.
    fn exited_member(&mut self) -> Option<String> {
        self.children
            .iter_mut()
            .zip(&self.data)
            .find_map(|(child, (id, _))| {
                let status = child.try_wait().ok().flatten()?;
                Some(format!(
                    "node {id} exited ({status}) before the cluster formed; see {}",
                    self.data_dir
                        .join(format!("node-{id}/fabricd.log"))
                        .display()
                ))
            })
    }

    /// Whether the gateway has exited, with its status.
    pub fn gateway_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.gateway
            .as_mut()
            .and_then(|g| g.try_wait().ok().flatten())
    }

    /// SIGTERM to the gateway (which flushes to the nodes), then to every node; waits for
    /// each, killing those that do not exit in time.
    pub fn stop(mut self) {
        if let Some(mut gateway) = self.gateway.take() {
            terminate(std::slice::from_mut(&mut gateway));
        }
        terminate(&mut self.children);
    }
}

/// The principal of gateway `name` in a dev cluster.
pub fn gateway_principal(name: &str) -> String {
    format!(
        "fabric://{}/gateway/{name}",
        crate::identity::dev_pki::DEV_CLUSTER
    )
}

/// Lets `principal` use every volume of the cluster (`volume-user` at the cluster scope).
/// Retried while the access policy of a new cluster is not started yet.
pub async fn bind_volume_user(client: &Client, principal: &str) -> anyhow::Result<()> {
    let change = pb::PolicyChange {
        change: Some(pb::policy_change::Change::Bind(pb::Binding {
            principal: principal.to_owned(),
            role: "volume-user".into(),
            scope: "cluster".into(),
        })),
    };
    let deadline = Instant::now() + Duration::from_millis(DEV_FORM_TIMEOUT_MS);
    loop {
        let result = client
            .call(|mut c| {
                let change = change.clone();
                async move { c.change_policy(change).await }
            })
            .await;
        match result {
            Ok(_) => return Ok(()),
            // The policy may not be started yet: the bootstrap member proposes it.
            Err(s) if s.code() == tonic::Code::PermissionDenied && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => bail!("bind {principal} as volume-user: {}", s.message()),
        }
    }
}

/// SIGTERM to `children`, then waits for each, killing those that do not exit in time.
fn terminate(children: &mut [Child]) {
    for c in children.iter() {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_millis(DEV_STOP_TIMEOUT_MS);
    for c in children.iter_mut() {
        while c.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
