//! `fabricctl ca init` and `fabricctl cert issue`: the operator's side of the cluster's
//! certificate authority. Both work on files of this machine and ask no cluster; the work
//! itself is `fabric::identity`'s, this turns command-line words into its types and its
//! reports into JSON.

use std::path::Path;

use anyhow::Context;
use fabric::identity::issue::{self, ServerSan};
use fabric::identity::{ClusterName, PrincipalKind, ca};
use serde_json::Value;
use time::OffsetDateTime;

/// The kinds of certificate `cert issue` signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CertKind {
    Node,
    Gateway,
    User,
}

impl CertKind {
    fn label(self) -> &'static str {
        match self {
            CertKind::Node => "node",
            CertKind::Gateway => "gateway",
            CertKind::User => "user",
        }
    }
}

/// `ca init --dir DIR --cluster NAME`: the root, the intermediate, the root's pin.
pub fn ca_init(dir: &Path, cluster: &str) -> anyhow::Result<Value> {
    let cluster = ClusterName::new(cluster)?;
    let report = ca::init(dir, &cluster, OffsetDateTime::now_utc())
        .with_context(|| format!("create a CA in {}", dir.display()))?;
    Ok(serde_json::to_value(report)?)
}

/// What `cert issue` is asked for.
pub struct IssueArgs<'a> {
    pub kind: CertKind,
    /// The node id, or the gateway's or user's name.
    pub name: &'a str,
    pub ca_dir: &'a Path,
    pub out: &'a Path,
    pub days: u32,
    pub sans: &'a [String],
    pub overwrite: bool,
}

/// `cert issue node|gateway|user NAME`: a leaf signed by the intermediate, written to `out`.
pub fn cert_issue(args: IssueArgs<'_>) -> anyhow::Result<Value> {
    let IssueArgs {
        kind,
        name,
        ca_dir,
        out,
        days,
        sans,
        overwrite,
    } = args;
    let principal_kind = PrincipalKind::from_parts(kind.label(), name)?;
    let server_names = sans
        .iter()
        .map(|s| s.parse::<ServerSan>())
        .collect::<Result<Vec<_>, _>>()?;
    let report = issue::issue_to_dir(
        ca_dir,
        out,
        principal_kind,
        server_names,
        days,
        overwrite,
        OffsetDateTime::now_utc(),
    )
    .with_context(|| format!("issue a {} certificate for {name:?}", kind.label()))?;
    Ok(serde_json::to_value(report)?)
}
