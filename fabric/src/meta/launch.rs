//! `fabricd dev --nodes N`: a local metadata group of N `fabricd node` child processes on
//! loopback, each in its own rack, bootstrapped into one Raft group with a default pool.
//!
//! Member addresses are recorded in `DATA_DIR/cluster.json` and reused on the next start, since
//! the Raft membership stores them. Children die with the launcher (`PR_SET_PDEATHSIG`), and each
//! logs to `DATA_DIR/node-ID/fabricd.log`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use proto::meta as pb;
use serde::{Deserialize, Serialize};

use super::client::Client;

/// Most members a dev cluster may have.
pub const DEV_NODES_MAX: u32 = 7;
/// How long the launcher waits for every member to register.
pub const DEV_FORM_TIMEOUT_MS: u64 = 60_000;
/// How long a member may take to exit after SIGTERM before it is killed.
pub const DEV_STOP_TIMEOUT_MS: u64 = 10_000;
/// Placement groups of the default pool.
pub const DEV_DEFAULT_PG_COUNT: u32 = 64;

#[derive(Serialize, Deserialize)]
struct ClusterFile {
    /// id → gRPC address.
    members: Vec<(u64, String)>,
}

/// The running child processes.
pub struct DevCluster {
    pub members: Vec<(u64, String)>,
    children: Vec<Child>,
}

fn free_loopback_addr() -> anyhow::Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("pick a free port")?;
    Ok(l.local_addr()?.to_string())
}

fn member_addresses(data_dir: &Path, nodes: u32) -> anyhow::Result<Vec<(u64, String)>> {
    let path = data_dir.join("cluster.json");
    if let Ok(bytes) = std::fs::read(&path) {
        let file: ClusterFile =
            serde_json::from_slice(&bytes).with_context(|| format!("read {}", path.display()))?;
        if file.members.len() != nodes as usize {
            bail!(
                "{} holds a {}-member cluster; start with --nodes {} or use another --data-dir",
                data_dir.display(),
                file.members.len(),
                file.members.len()
            );
        }
        return Ok(file.members);
    }
    let members = (1..=u64::from(nodes))
        .map(|id| Ok((id, free_loopback_addr()?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(data_dir)?;
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&ClusterFile {
            members: members.clone(),
        })?,
    )
    .with_context(|| format!("write {}", path.display()))?;
    Ok(members)
}

impl DevCluster {
    /// Starts the members, waits for all to register, and ensures the default pool exists.
    pub async fn start(data_dir: &Path, nodes: u32) -> anyhow::Result<DevCluster> {
        assert!(
            (1..=DEV_NODES_MAX).contains(&nodes),
            "validated by the caller"
        );
        let members = member_addresses(data_dir, nodes)?;
        let exe = std::env::current_exe().context("find the fabricd executable")?;
        let peers: Vec<String> = members.iter().map(|(id, a)| format!("{id}={a}")).collect();
        let mut cluster = DevCluster {
            members: members.clone(),
            children: Vec::new(),
        };
        for (id, addr) in &members {
            let dir: PathBuf = data_dir.join(format!("node-{id}"));
            std::fs::create_dir_all(&dir)?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("fabricd.log"))?;
            let mut cmd = Command::new(&exe);
            cmd.arg("node")
                .arg("--id")
                .arg(id.to_string())
                .arg("--data-dir")
                .arg(&dir)
                .arg("--listen")
                .arg(addr)
                .arg("--location")
                .arg(format!("rack=rack{id},host=host{id}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            if *id == 1 {
                cmd.arg("--bootstrap").arg("--peers").arg(peers.join(","));
            }
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
            cluster.children.push(
                cmd.spawn()
                    .with_context(|| format!("start metadata member {id}"))?,
            );
        }
        cluster.form(nodes).await?;
        Ok(cluster)
    }

    async fn form(&self, nodes: u32) -> anyhow::Result<()> {
        let client = Client::new(self.members.iter().map(|(_, a)| a.clone()).collect());
        let deadline = Instant::now() + Duration::from_millis(DEV_FORM_TIMEOUT_MS);
        loop {
            let listed = client
                .call(|mut c| async move { c.list_nodes(pb::ListNodesRequest {}).await })
                .await;
            if let Ok(r) = &listed
                && r.nodes.len() >= nodes as usize
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the metadata members did not all register within {DEV_FORM_TIMEOUT_MS} ms: {listed:?}"
                );
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

    /// SIGTERM to every member, then waits (killing those that do not exit in time).
    pub fn stop(mut self) {
        for c in &self.children {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_millis(DEV_STOP_TIMEOUT_MS);
        for c in &mut self.children {
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
}
