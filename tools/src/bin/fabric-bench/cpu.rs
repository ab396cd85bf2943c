//! Where the CPU went during a measurement: the processes of a dev cluster (the launcher, its
//! gateway, its nodes), read from `/proc/PID/stat`, and the whole machine from `/proc/stat`,
//! which on a shared machine also counts the other tenants.

use std::time::Duration;

/// CPU seconds (user + system) used so far by a dev cluster's launcher and the children it
/// runs, split by role. A child is told apart by its subcommand (`fabricd gateway`, `fabricd
/// node`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ClusterCpu {
    pub launcher: f64,
    pub gateway: f64,
    pub nodes: f64,
}

impl ClusterCpu {
    pub fn total(&self) -> f64 {
        self.launcher + self.gateway + self.nodes
    }

    /// What each role used since `before`.
    pub fn since(&self, before: &ClusterCpu) -> ClusterCpu {
        ClusterCpu {
            launcher: self.launcher - before.launcher,
            gateway: self.gateway - before.gateway,
            nodes: self.nodes - before.nodes,
        }
    }
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// The CPU time of process `launcher` and of its children that are still running.
pub(crate) fn cluster_cpu(launcher: u32) -> anyhow::Result<ClusterCpu> {
    let per_s = ticks_per_second();
    let mut cpu = ClusterCpu::default();
    let mut found = false;
    for entry in std::fs::read_dir("/proc")?.filter_map(Result::ok) {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name, which is in parentheses and may hold spaces:
        // state, ppid, ... utime is field 14 of the line and stime 15.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let this: u32 = head
            .split_whitespace()
            .next()
            .unwrap_or("")
            .parse()
            .unwrap_or(0);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ppid: u32 = fields.get(1).and_then(|f| f.parse().ok()).unwrap_or(0);
        if this != launcher && ppid != launcher {
            continue;
        }
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let seconds = (field(11) + field(12)) as f64 / per_s;
        found = true;
        if this == launcher {
            cpu.launcher += seconds;
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let subcommand = cmdline.split(|b| *b == 0).nth(1).unwrap_or_default();
        if subcommand == b"gateway" {
            cpu.gateway += seconds;
        } else {
            cpu.nodes += seconds;
        }
    }
    anyhow::ensure!(found, "no process {launcher} to read the CPU time of");
    Ok(cpu)
}

/// User and system CPU seconds used so far by process `pid` and its children that are still
/// running (a dev cluster's launcher, nodes and gateway).
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let total = cluster_cpu(pid)?.total();
    anyhow::ensure!(
        total > 0.0,
        "no CPU time found for process {pid} and its children"
    );
    Ok(total)
}

/// The machine's CPU counters at one moment (`/proc/stat`'s first line, in ticks).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MachineCpu {
    busy: u64,
}

impl MachineCpu {
    pub fn now() -> anyhow::Result<MachineCpu> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().unwrap_or_default();
        anyhow::ensure!(line.starts_with("cpu "), "/proc/stat starts with {line}");
        // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
        // already counted in user and nice.
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|t| t.parse().unwrap_or(0))
            .collect();
        anyhow::ensure!(ticks.len() == 8, "/proc/stat has a short cpu line: {line}");
        let idle = ticks[3] + ticks[4];
        let steal = ticks[7];
        Ok(MachineCpu {
            busy: ticks.iter().sum::<u64>() - idle - steal,
        })
    }

    /// Cores the machine kept busy on average since `before`, over `elapsed`.
    pub fn cores_busy_since(&self, before: &MachineCpu, elapsed: Duration) -> f64 {
        (self.busy - before.busy) as f64 / ticks_per_second() / elapsed.as_secs_f64()
    }
}

/// CPU seconds (user + system) of the children this process has waited for so far: read
/// before and after waiting for one child to get that child's time.
pub(crate) fn waited_children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given and nothing else.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
