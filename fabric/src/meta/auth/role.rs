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
    ];
    let volume_user = [VolumeAttach, VolumeDetach, ReplicaReport];
    let volume_admin = [VolumeCreate, VolumeResize, VolumeDelete, VolumeForceAttach];
    let operator = [
        NodeOut,
        NodeDrain,
        PoolCreate,
        PoolDelete,
        BalancePlan,
        BalanceApply,
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
        // What a storage node's agents do: register, heartbeat, follow the maps, and (the
        // rebuild agent) attach an idle volume to heal it.
        "storage-node" => [&view[..], &volume_user, &[NodeRegister, NodeHeartbeat]].concat(),
        // Reads everything, the policy and the audit trail included; changes nothing.
        "auditor" => [&view[..], &[AuthRead, AuditRead]].concat(),
        "viewer" => view.to_vec(),
        _ => return None,
    };
    Some(verbs.into_iter().collect())
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
