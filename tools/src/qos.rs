//! `fabricctl volume qos ...`: a volume's IO limits (enforced by its gateway), reservation
//! and weight (honoured by the disks holding its replicas).

use clap::Subcommand;
use fabric::meta::client::Client;
use proto::meta as pb;
use serde_json::{Value, json};

use crate::reply::Reply;

/// `fabricctl volume qos ...`.
#[derive(Subcommand)]
pub enum QosCmd {
    /// Changes the fields given (0 clears one); the others keep their values. Applied live,
    /// without a reattach (volume.qos).
    Set {
        name: String,
        /// At most this many IOs a second; more are slowed, never failed.
        #[arg(long)]
        iops_limit: Option<u64>,
        /// At most this many bytes a second, e.g. 100MiB.
        #[arg(long, value_parser = parse_rate)]
        bps_limit: Option<u64>,
        /// At least this many IOs a second on each disk holding the volume, whatever the
        /// neighbours do (if the disk can).
        #[arg(long)]
        iops_reservation: Option<u64>,
        /// Its share of a busy disk (default 100; recovery has 25, scrub 5).
        #[arg(long)]
        weight: Option<u32>,
    },
    /// The volume's QoS.
    Show { name: String },
}

fn parse_rate(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{s:?}: {e}"))
}

fn qos_json(v: &pb::Volume) -> Value {
    let q = v.qos.unwrap_or_default();
    let or_none = |n: u64| if n == 0 { json!(null) } else { json!(n) };
    json!({
        "volume": v.name,
        "iops_limit": or_none(q.iops_limit),
        "bps_limit": or_none(q.bps_limit),
        "iops_reservation": or_none(q.iops_reservation),
        "weight": fabric::meta::model::qos_weight(q.weight),
    })
}

pub async fn qos(cmd: QosCmd, client: &Client) -> anyhow::Result<Reply> {
    let volume = match cmd {
        QosCmd::Set {
            name,
            iops_limit,
            bps_limit,
            iops_reservation,
            weight,
        } => {
            let req = pb::SetVolumeQosRequest {
                name,
                iops_limit,
                bps_limit,
                iops_reservation,
                weight,
            };
            client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.set_volume_qos(req).await }
                })
                .await?
        }
        QosCmd::Show { name } => {
            let req = pb::GetVolumeRequest { name };
            client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.get_volume(req).await }
                })
                .await?
        }
    };
    Ok(Reply::One(qos_json(&volume)))
}
