//! The verbs a caller may be granted: one per kind of call, each checked against a target at a
//! scope. A verb's name is what refusals, bindings and `fabricctl auth can-i` show.

use std::fmt;
use std::str::FromStr;

/// Where a verb's target lives: the whole cluster, a pool, or one volume (in its pool).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    Cluster,
    Pool,
    Volume,
}

macro_rules! verbs {
    ($($variant:ident => $name:literal at $level:ident,)*) => {
        /// Every verb the metadata service knows.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Verb {
            $($variant,)*
        }

        impl Verb {
            /// Every verb, in declaration order.
            pub const ALL: &'static [Verb] = &[$(Verb::$variant,)*];

            /// The verb's name, such as `volume.create`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Verb::$variant => $name,)*
                }
            }

            /// The level of the targets the verb acts on.
            pub fn level(self) -> Level {
                match self {
                    $(Verb::$variant => Level::$level,)*
                }
            }
        }
    };
}

verbs! {
    ClusterStatus => "cluster.status" at Cluster,
    ClusterWatch => "cluster.watch" at Cluster,
    NodeList => "node.list" at Cluster,
    NodeRegister => "node.register" at Cluster,
    NodeHeartbeat => "node.heartbeat" at Cluster,
    NodeRenewCertificate => "node.renew_certificate" at Cluster,
    NodeOut => "node.out" at Cluster,
    NodeDrain => "node.drain" at Cluster,
    RaftAddLearner => "raft.add_learner" at Cluster,
    RaftChangeVoters => "raft.change_voters" at Cluster,
    PoolList => "pool.list" at Cluster,
    PoolCreate => "pool.create" at Cluster,
    PoolDelete => "pool.delete" at Pool,
    BalancePlan => "balance.plan" at Pool,
    BalanceApply => "balance.apply" at Pool,
    VolumeList => "volume.list" at Pool,
    VolumeCreate => "volume.create" at Pool,
    VolumeGet => "volume.get" at Volume,
    VolumeResize => "volume.resize" at Volume,
    VolumeQos => "volume.qos" at Volume,
    VolumeScrub => "volume.scrub" at Volume,
    VolumeDelete => "volume.delete" at Volume,
    VolumeAttach => "volume.attach" at Volume,
    VolumeForceAttach => "volume.force_attach" at Volume,
    VolumeDetach => "volume.detach" at Volume,
    ReplicaReport => "replica.report" at Volume,
    AuthRead => "auth.read" at Cluster,
    AuthBind => "auth.bind" at Cluster,
    CertRevoke => "cert.revoke" at Cluster,
    NodeJoinToken => "node.join_token" at Cluster,
    AuditRead => "audit.read" at Cluster,
    AuditConfigure => "audit.configure" at Cluster,
    AuditWitness => "audit.witness" at Cluster,
    RequestApprove => "request.approve" at Cluster,
    GuardSet => "guard.set" at Cluster,
    TopologyLabel => "topology.label" at Cluster,
    DriftExcept => "drift.except" at Cluster,
    DriftAccept => "drift.accept" at Cluster,
    CellKeyRotate => "cell_key.rotate" at Cluster,
    CaRotate => "ca.rotate" at Cluster,
    InferModelAdd => "infer.model.add" at Cluster,
    InferView => "infer.view" at Cluster,
    InferJobCreate => "infer.job.create" at Volume,
    InferJobCancel => "infer.job.cancel" at Cluster,
    InferSearch => "infer.search" at Volume,
    InferWork => "infer.work" at Cluster,
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A verb name that names no verb.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no verb named {0:?} (verbs look like volume.create; `fabricctl auth roles` lists them)")]
pub struct UnknownVerb(pub String);

impl FromStr for Verb {
    type Err = UnknownVerb;

    fn from_str(s: &str) -> Result<Verb, UnknownVerb> {
        Verb::ALL
            .iter()
            .copied()
            .find(|v| v.name() == s)
            .ok_or_else(|| UnknownVerb(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_parse_back() {
        let mut names: Vec<&str> = Verb::ALL.iter().map(|v| v.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Verb::ALL.len());
        for v in Verb::ALL {
            assert_eq!(v.name().parse::<Verb>().unwrap(), *v);
        }
        assert!("volume.explode".parse::<Verb>().is_err());
    }
}
