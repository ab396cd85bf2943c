//! A metadata group of `fabricd node` processes on loopback, for the benchmarks: started
//! fresh in a directory, killed with the value.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use fabric::identity::Transport;
use fabric::identity::dev_pki::DevPki;

/// The running members; dropping it kills them.
pub struct Group {
    /// gRPC address of member `i + 1`.
    pub addrs: Vec<String>,
    /// The administrator's identity (cluster-admin), for the benchmark's clients.
    pub admin: Transport,
    children: Vec<Option<Child>>,
}

impl Group {
    /// Starts `members` members (ids 1..), each in rack `r<id>`, with `extra` arguments, in
    /// fresh directories under `dir`; member 1 bootstraps the group.
    pub fn start(dir: &Path, members: u64, extra: &[&str]) -> anyhow::Result<Group> {
        let exe = std::env::current_exe()?;
        let fabricd = exe.with_file_name("fabricd");
        if !fabricd.exists() {
            bail!(
                "{} not found; build it with `cargo build --release -p fabric`",
                fabricd.display()
            );
        }
        let addrs: Vec<String> = (0..members)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0")?;
                Ok(l.local_addr()?.to_string())
            })
            .collect::<std::io::Result<_>>()?;
        let peers: Vec<String> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect();
        let pki = DevPki::ensure(dir).context("create the group's CA")?;
        let admin = Transport::load(&pki.ensure_admin()?)?;
        let mut children = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
            pki.ensure_node(id)?;
            let mut cmd = Command::new(&fabricd);
            cmd.arg("node")
                .args(["--id", &id.to_string(), "--listen", addr])
                .arg("--data-dir")
                .arg(dir.join(format!("node-{id}")))
                .args(extra)
                .env("FABRIC_LOG", "error")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            if !extra.contains(&"--roles") {
                cmd.args(["--location", &format!("rack=r{id}")]);
            }
            if id == 1 {
                cmd.args(["--bootstrap", "--peers", &peers.join(",")])
                    .arg("--bootstrap-admin")
                    .arg(DevPki::admin_principal().to_string())
                    .args(["--two-person", "off"]);
            }
            children.push(Some(cmd.spawn().context("spawn fabricd node")?));
        }
        Ok(Group {
            addrs,
            admin,
            children,
        })
    }

    /// The process id of member `id`, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.children[id as usize - 1].as_ref().map(Child::id)
    }

    /// SIGKILL to member `id`.
    pub fn kill9(&mut self, id: u64) {
        if let Some(mut c) = self.children[id as usize - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for id in 1..=self.children.len() as u64 {
            self.kill9(id);
        }
    }
}
