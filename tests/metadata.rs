//! The metadata group as separate OS processes: three `fabricd node`s on loopback, driven with
//! `fabricctl --json`, killed with SIGKILL and restarted.
//!
//! Every wait polls for a condition under a generous deadline (the CI machine is small and
//! shared); nothing sleeps and then asserts.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fabric_suite::{free_port, workspace_bin};
use serde_json::Value;

/// Deadline for a cluster to form, elect a leader, or catch a member up.
const CONVERGE_TIMEOUT_MS: u64 = 90_000;
const POLL_MS: u64 = 100;

struct Member {
    id: u64,
    addr: String,
    dir: PathBuf,
    child: Option<Child>,
}

struct Cluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    extra: Vec<String>,
    /// Last, so that it is released after the members are stopped.
    _serial: std::sync::MutexGuard<'static, ()>,
}

fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_millis(CONVERGE_TIMEOUT_MS);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {CONVERGE_TIMEOUT_MS} ms waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
}

/// The outcome of one fabricctl run: parsed stdout on success, stderr on failure.
type CtlResult = Result<Value, String>;

impl Cluster {
    /// Starts `n` members (member 1 bootstraps the group), waits until all are registered, and
    /// creates pool `default` (3 replicas across racks).
    fn start(n: u64, extra: &[&str]) -> Cluster {
        let serial = fabric_suite::one_cluster_at_a_time();
        let dir = tempfile::tempdir().expect("temp dir");
        let members: Vec<Member> = (1..=n)
            .map(|id| Member {
                id,
                addr: format!("127.0.0.1:{}", free_port()),
                dir: dir.path().join(format!("node-{id}")),
                child: None,
            })
            .collect();
        fabric_suite::cluster_ca(dir.path());
        let mut c = Cluster {
            dir,
            members,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _serial: serial,
        };
        for id in 1..=n {
            c.spawn(id);
        }
        wait_until("every member registered", || {
            let nodes = c.ctl(&["node", "list"]).ok()?;
            (nodes.as_array()?.len() == n as usize).then_some(())
        });
        let pool = c.ctl(&[
            "pool",
            "create",
            "default",
            "--replicas",
            "3",
            "--failure-domain",
            "rack",
        ]);
        assert!(pool.is_ok(), "create pool: {pool:?}");
        c
    }

    fn member(&mut self, id: u64) -> &mut Member {
        self.members
            .iter_mut()
            .find(|m| m.id == id)
            .expect("known member")
    }

    fn spawn(&mut self, id: u64) {
        let peers: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.id, m.addr))
            .collect();
        let extra = self.extra.clone();
        let root = self.dir.path().to_path_buf();
        let m = self.member(id);
        if !m.dir.join("tls").join("chain.pem").exists() {
            let name = id.to_string();
            fabric_suite::issue_cert(&root, "node", &name, &m.dir.join("tls"), &["127.0.0.1"]);
        }
        let mut cmd = Command::new(workspace_bin("fabricd"));
        cmd.arg("node")
            .args(["--id", &id.to_string(), "--listen", &m.addr])
            .arg("--data-dir")
            .arg(&m.dir)
            .args(["--location", &format!("rack=r{id},host=h{id}")])
            .args(&extra)
            .env("FABRIC_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if id == 1 {
            // The two-person rule is tested in tests/approvals.rs; here one admin acts alone.
            cmd.args(["--bootstrap", "--peers", &peers.join(",")])
                .args(["--bootstrap-admin", fabric_suite::ADMIN_PRINCIPAL])
                .args(["--two-person", "off"]);
        }
        m.child = Some(cmd.spawn().expect("spawn fabricd node"));
    }

    /// SIGKILL: nothing gets a chance to flush.
    fn kill9(&mut self, id: u64) {
        if let Some(mut c) = self.member(id).child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("reap");
        }
    }

    fn endpoints(&self) -> String {
        let addrs: Vec<&str> = self.members.iter().map(|m| m.addr.as_str()).collect();
        addrs.join(",")
    }

    /// Runs `fabricctl --json ARGS` against every member's address.
    fn ctl(&self, args: &[&str]) -> CtlResult {
        self.ctl_at(&self.endpoints(), args)
    }

    fn ctl_at(&self, endpoints: &str, args: &[&str]) -> CtlResult {
        let out = Command::new(workspace_bin("fabricctl"))
            .args(["--json", "--endpoints", endpoints])
            .arg("--cert-dir")
            .arg(self.dir.path().join("admin"))
            .args(args)
            .output()
            .expect("run fabricctl");
        if out.status.success() {
            Ok(serde_json::from_slice(&out.stdout).expect("fabricctl prints JSON"))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// `status --json` entry of member `id`, if it answers.
    fn member_status(&self, id: u64) -> Option<Value> {
        let status = self.ctl(&["status"]).ok()?;
        status["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"] == id && n["reachable"] == true)
            .cloned()
    }

    /// The id of a leader that some member acknowledges, other than `not`.
    fn leader_other_than(&self, not: u64) -> u64 {
        wait_until("a leader", || {
            let status = self.ctl(&["status"]).ok()?;
            let id = status["leader_id"].as_u64()?;
            let leader_says = status["nodes"]
                .as_array()?
                .iter()
                .any(|n| n["id"] == id && n["role"] == "leader");
            (id != 0 && id != not && leader_says).then_some(id)
        })
    }

    fn volume_names(&self) -> Vec<String> {
        let list = self.ctl(&["volume", "list"]).expect("volume list");
        list.as_array()
            .expect("array")
            .iter()
            .map(|v| v["name"].as_str().expect("name").to_string())
            .collect()
    }

    fn create(&self, name: &str) -> CtlResult {
        self.ctl(&["volume", "create", name, "--size", "1GiB"])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.members.iter().map(|m| m.id).collect();
        for id in ids {
            self.kill9(id);
        }
    }
}

#[test]
fn leader_killed_during_create_loop_loses_no_acknowledged_create() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.leader_other_than(0);
    let mut acked = Vec::new();
    let mut failed = Vec::new();
    let mut first_after_kill = None;
    for i in 0..40 {
        if i == 10 {
            cluster.kill9(leader);
        }
        let name = format!("loop-{i}");
        let started = std::time::Instant::now();
        match cluster.create(&name) {
            Ok(v) => {
                assert_eq!(v["name"], name.as_str());
                acked.push(name);
            }
            Err(e) => failed.push((name, e)),
        }
        if i == 10 {
            first_after_kill = Some(started.elapsed());
        }
    }
    let new_leader = cluster.leader_other_than(leader);
    assert_ne!(new_leader, leader);
    // Every client finds the new leader: none of the creates fails, and the first one after
    // the kill waits about one election (a client stuck on the dead member waited out its
    // 30 s retry deadline and failed).
    let first_after_kill = first_after_kill.expect("create 10 ran");
    println!("first create after the leader's kill took {first_after_kill:?}");
    assert!(
        failed.is_empty(),
        "every create succeeds across a failover: failed {failed:?}"
    );
    assert!(
        first_after_kill < std::time::Duration::from_secs(10),
        "the first create after the kill took {first_after_kill:?}"
    );

    let names = cluster.volume_names();
    for name in &acked {
        let copies = names.iter().filter(|n| *n == name).count();
        assert_eq!(
            copies, 1,
            "acknowledged create {name} is present exactly once"
        );
    }
    let mut dedup = names.clone();
    dedup.dedup();
    assert_eq!(dedup.len(), names.len(), "no volume is listed twice");
    let ids: std::collections::BTreeSet<u64> = cluster
        .ctl(&["volume", "list"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), names.len(), "volume ids are unique");

    // The killed member restarts and catches up with the log.
    let target = cluster.member_status(new_leader).expect("leader status")["last_applied_index"]
        .as_u64()
        .unwrap();
    cluster.spawn(leader);
    wait_until("the restarted member to catch up", || {
        let s = cluster.member_status(leader)?;
        (s["last_applied_index"].as_u64()? >= target).then_some(())
    });
}

#[test]
fn lagging_member_is_brought_back_by_a_snapshot() {
    let mut cluster = Cluster::start(3, &["--snapshot-logs", "10"]);
    let leader = cluster.leader_other_than(0);
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    let before = cluster.member_status(lagging).unwrap()["last_applied_index"]
        .as_u64()
        .unwrap();
    cluster.kill9(lagging);
    // Enough writes that the leader snapshots and purges past what the lagging member has.
    let mut i = 0;
    wait_until(
        "the leader to purge its log past the lagging member",
        || {
            for _ in 0..5 {
                cluster
                    .create(&format!("lag-{i}"))
                    .expect("create with one member down");
                i += 1;
            }
            let s = cluster.member_status(cluster.leader_other_than(lagging))?;
            (s["purged_index"].as_u64()? > before + 1).then_some(())
        },
    );
    let target = cluster
        .member_status(cluster.leader_other_than(lagging))
        .unwrap()["last_applied_index"]
        .as_u64()
        .unwrap();
    cluster.spawn(lagging);
    let status = wait_until(
        "the lagging member to install a snapshot and catch up",
        || {
            let s = cluster.member_status(lagging)?;
            (s["last_applied_index"].as_u64()? >= target).then_some(s)
        },
    );
    assert!(
        status["snapshot_index"].as_u64().unwrap() > before,
        "caught up through a snapshot: {status}"
    );
    assert_eq!(cluster.volume_names().len(), i);
}

#[test]
fn acknowledged_write_survives_kill9_of_every_member() {
    let mut cluster = Cluster::start(3, &[]);
    cluster.create("survivor").expect("create");
    for id in 1..=3 {
        cluster.kill9(id);
    }
    for id in 1..=3 {
        cluster.spawn(id);
    }
    let names = wait_until("the restarted group to answer", || {
        cluster.ctl(&["volume", "list"]).ok()
    });
    let names: Vec<&str> = names
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, vec!["survivor"]);
}

#[test]
fn bad_requests_are_refused_precisely_and_change_nothing() {
    let cluster = Cluster::start(3, &[]);
    cluster.create("vol-a").expect("create");
    let refused = [
        (
            vec!["volume", "create", "vol-a", "--size", "1GiB"],
            "ALREADY_EXISTS",
        ),
        (
            vec!["volume", "create", "vol-b", "--size", "0"],
            "INVALID_ARGUMENT",
        ),
        (
            vec!["volume", "create", "vol-b", "--size", "1000"],
            "INVALID_ARGUMENT",
        ),
        (
            vec![
                "volume", "create", "vol-b", "--size", "1GiB", "--pool", "nope",
            ],
            "NOT_FOUND",
        ),
        (vec!["volume", "show", "nope"], "NOT_FOUND"),
        (
            vec!["volume", "resize", "vol-a", "--size", "4KiB"],
            "FAILED_PRECONDITION",
        ),
        (
            vec!["pool", "create", "wide", "--replicas", "4"],
            "FAILED_PRECONDITION",
        ),
        (vec!["pool", "create", "default"], "ALREADY_EXISTS"),
        (vec!["pool", "delete", "default"], "FAILED_PRECONDITION"),
        (vec!["pool", "delete", "nope"], "NOT_FOUND"),
    ];
    for (args, code) in refused {
        let err = cluster.ctl(&args).expect_err("refused");
        assert!(err.contains(code), "{args:?}: want {code}, got {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    assert_eq!(cluster.volume_names(), vec!["vol-a"]);
    let pools = cluster.ctl(&["pool", "list"]).unwrap();
    assert_eq!(pools.as_array().unwrap().len(), 1);

    // Writes sent to a follower are forwarded to the leader.
    let leader = cluster.leader_other_than(0);
    let follower = cluster.members.iter().find(|m| m.id != leader).unwrap();
    let v = cluster
        .ctl_at(
            &follower.addr,
            &["volume", "create", "via-follower", "--size", "8MiB"],
        )
        .expect("forwarded create");
    assert_eq!(v["size_bytes"], 8 << 20);
    let resized = cluster
        .ctl_at(
            &follower.addr,
            &["volume", "resize", "via-follower", "--size", "16MiB"],
        )
        .expect("forwarded resize");
    assert_eq!(resized["size_bytes"], 16 << 20);
    cluster
        .ctl(&["volume", "delete", "via-follower"])
        .expect("delete");
    assert_eq!(cluster.volume_names(), vec!["vol-a"]);

    // An empty pool can be deleted.
    cluster
        .ctl(&["pool", "create", "spare", "--replicas", "1"])
        .expect("create an empty pool");
    let deleted = cluster
        .ctl(&["pool", "delete", "spare"])
        .expect("delete it");
    assert_eq!(deleted["deleted"], "spare");
    let pools = cluster.ctl(&["pool", "list"]).unwrap();
    assert_eq!(pools.as_array().unwrap().len(), 1);
}

#[test]
fn status_reports_leader_and_every_member() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.leader_other_than(0);
    let status = cluster.ctl(&["status"]).unwrap();
    assert_eq!(status["leader_id"], leader);
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        assert!(n["pid"].as_u64().unwrap() > 0, "{n}");
        assert!(
            n["address"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{n}"
        );
        assert!(
            ["leader", "follower"].contains(&n["role"].as_str().unwrap()),
            "{n}"
        );
        assert!(n["last_applied_index"].as_u64().unwrap() > 0, "{n}");
    }
}

#[test]
fn dev_with_three_nodes_forms_a_group_with_a_default_pool_and_still_serves_nbd() {
    let _serial = fabric_suite::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // `start_with` returns once NBD listens, which is after the group formed.
    let mut dev = fabric_suite::DevNode::start_with(dir.path(), "vol0:64MiB", &["--nodes", "3"])
        .expect("start dev");
    let ctl = |args: &[&str]| {
        let out = Command::new(workspace_bin("fabricctl"))
            .arg("--json")
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .output()
            .expect("run fabricctl");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let status = ctl(&["status"]);
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3, "{status}");
    let pools = ctl(&["pool", "list"]);
    assert_eq!(pools[0]["name"], "default");
    assert_eq!(pools[0]["replicas"], 3);
    assert!(
        std::net::TcpStream::connect(dev.addr).is_ok(),
        "NBD still served"
    );
    assert_eq!(dev.stop().unwrap(), 0, "clean exit");
}

#[test]
fn learner_added_promoted_and_a_member_removed_while_writes_continue() {
    let mut cluster = Cluster::start(3, &[]);
    cluster.create("before-change").expect("create");

    // A fourth, empty member joins as a learner, then becomes a voter.
    let dir = cluster.dir.path().join("node-4");
    cluster.members.push(Member {
        id: 4,
        addr: format!("127.0.0.1:{}", free_port()),
        dir,
        child: None,
    });
    cluster.spawn(4);
    let addr4 = cluster.member(4).addr.clone();
    let members = cluster
        .ctl(&["node", "add-learner", "4", &addr4])
        .expect("add learner");
    let voter_of = |members: &Value, id: u64| {
        members
            .as_array()
            .expect("member list")
            .iter()
            .find(|m| m["id"] == id)
            .map(|m| m["voter"] == true)
    };
    assert_eq!(voter_of(&members, 4), Some(false), "{members}");
    let members = cluster.ctl(&["node", "promote", "4"]).expect("promote");
    assert_eq!(voter_of(&members, 4), Some(true), "{members}");

    // Member 2 leaves (whether or not it leads), is stopped, and the group keeps serving.
    let members = wait_until("member 2 removed", || {
        cluster.ctl(&["node", "remove", "2"]).ok()
    });
    assert_eq!(voter_of(&members, 2), None, "{members}");
    cluster.kill9(2);
    for i in 0..5 {
        cluster
            .create(&format!("after-change-{i}"))
            .expect("create after the membership change");
    }
    // The new voter has every acknowledged write.
    let names = wait_until("member 4 to serve the volume list", || {
        let list = cluster.ctl_at(&addr4, &["volume", "list"]).ok()?;
        let names: Vec<String> = list
            .as_array()?
            .iter()
            .filter_map(|v| v["name"].as_str().map(str::to_string))
            .collect();
        (names.len() == 6).then_some(names)
    });
    assert!(names.contains(&"before-change".to_string()), "{names:?}");
    wait_until("member 4 to register its node", || {
        let nodes = cluster.ctl(&["node", "list"]).ok()?;
        nodes.as_array()?.iter().any(|n| n["id"] == 4).then_some(())
    });
}
