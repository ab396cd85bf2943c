//! Roles: named sets of verbs. The built-in ones cover who runs a cluster; operators may add
//! their own (any set of verbs under a name no built-in role has). No role grants a verb it
//! does not list: there is no wildcard.

use std::collections::BTreeSet;

use super::verb::Verb;

/// The built-in roles, from most to least powerful.
pub const BUILT_IN: &[&str] = &[
    "cluster-admin",
    "operator",
    "volume-admin",
    "volume-user",
    "storage-node",
    "auditor",
    "viewer",
    "approver",
];

/// The verbs of built-in role `name`, or `None` if no built-in role has that name.
pub fn built_in(name: &str) -> Option<BTreeSet<Verb>> {
    use Verb::*;
    let view = [
        ClusterStatus,
        ClusterWatch,
        NodeList,
        PoolList,
        VolumeList,
        VolumeGet,
        InferView,
    ];
    let volume_user = [VolumeAttach, VolumeDetach, ReplicaReport, InferSearch];
    let volume_admin = [
        VolumeCreate,
        VolumeResize,
        VolumeQos,
        VolumeScrub,
        VolumeDelete,
        VolumeForceAttach,
        InferJobCreate,
    ];
    let operator = [
        DriftAccept,
        DriftExcept,
        NodeOut,
        NodeDrain,
        PoolCreate,
        PoolDelete,
        BalancePlan,
        BalanceApply,
        InferModelAdd,
        InferJobCancel,
    ];
    let verbs: Vec<Verb> = match name {
        // Everything, the policy itself included.
        "cluster-admin" => Verb::ALL.to_vec(),
        // Runs the cluster day to day: no membership of the Raft group, no policy, no audit.
        "operator" => [&view[..], &volume_user, &volume_admin, &operator].concat(),
        // Owns volumes (within the scope it is bound at).
        "volume-admin" => [&view[..], &volume_user, &volume_admin].concat(),
        // Uses volumes: what a hypervisor host's gateway does for them.
        "volume-user" => [&view[..], &volume_user].concat(),
        // What a storage node's agents do: register, heartbeat, renew its certificate, follow
        // the maps, and (the rebuild agent) attach an idle volume to heal it.
        "storage-node" => [
            &view[..],
            &volume_user,
            &[NodeRegister, NodeHeartbeat, NodeRenewCertificate, InferWork],
        ]
        .concat(),
        // Reads everything, the policy and the audit trail included, and cosigns the audit
        // log's checkpoints as a witness; changes nothing else.
        "auditor" => [&view[..], &[AuthRead, AuditRead, AuditWitness]].concat(),
        "viewer" => view.to_vec(),
        // The second person of the two-person rule: approves or denies guarded calls that
        // others made, and sees the cluster; does nothing else.
        "approver" => [&view[..], &[RequestApprove]].concat(),
        _ => return None,
    };
    Some(verbs.into_iter().collect())
}

/// Verbs that make whoever holds them an administrator: they grant access, decide the
/// two-person rule, change the Raft group or the audit log, or destroy data.
pub const ADMIN_VERBS: &[Verb] = &[
    Verb::AuthBind,
    Verb::GuardSet,
    Verb::TopologyLabel,
    Verb::RequestApprove,
    Verb::RaftAddLearner,
    Verb::RaftChangeVoters,
    Verb::AuditConfigure,
    Verb::CertRevoke,
    Verb::NodeJoinToken,
    Verb::VolumeDelete,
    Verb::PoolDelete,
    Verb::VolumeForceAttach,
    Verb::CellKeyRotate,
    Verb::CaRotate,
];

/// Whether a role of these verb names holds an administrator's verb.
pub fn grants_admin<'a>(verbs: impl IntoIterator<Item = &'a String>) -> bool {
    verbs
        .into_iter()
        .any(|v| ADMIN_VERBS.iter().any(|a| a.name() == v))
}

/// Whether `role` (built in, or custom in `policy`) holds an administrator's verb; granting
/// it is guarded by the two-person rule.
pub fn is_admin(policy: &super::Policy, role: &str) -> bool {
    match built_in(role) {
        Some(verbs) => verbs.iter().any(|v| ADMIN_VERBS.contains(v)),
        None => policy
            .roles
            .get(role)
            .is_some_and(|v| grants_admin(v.iter())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_role_exists_and_each_grants_no_more_than_the_one_above() {
        let sets: Vec<BTreeSet<Verb>> = BUILT_IN.iter().map(|r| built_in(r).unwrap()).collect();
        // cluster-admin ⊇ operator ⊇ volume-admin ⊇ volume-user ⊇ viewer.
        for (bigger, smaller) in [(0, 1), (1, 2), (2, 3), (3, 6), (4, 6), (5, 6)] {
            assert!(
                sets[smaller].is_subset(&sets[bigger]),
                "{} is not within {}",
                BUILT_IN[smaller],
                BUILT_IN[bigger]
            );
        }
        assert!(built_in("root").is_none());
        assert!(!sets[1].contains(&Verb::RaftChangeVoters));
        assert!(!sets[1].contains(&Verb::AuthBind));
        assert!(!sets[5].contains(&Verb::VolumeDelete));
    }
}
