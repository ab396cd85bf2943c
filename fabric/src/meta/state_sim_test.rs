//! Seeded simulation of the state machine: random command sequences (proptest prints the seed
//! of a failure) applied to two replicas must give equal states; refused commands change
//! nothing; volume ids stay unique; attach epochs only grow.

use proptest::prelude::*;

use super::command::{Command, CommandV1};
use super::model::{DiskInfo, Location, NodeRegistration, PoolSpec, Rule, VolumeSpec};
use super::state::ClusterState;

fn command() -> impl Strategy<Value = Command> {
    let name = prop::sample::select(vec!["a", "b", "c", "d"]);
    prop_oneof![
        (1u64..6, 1u32..5, 0u64..3).prop_map(|(id, rack, disks)| CommandV1::RegisterNode(
            NodeRegistration {
                id,
                rpc_addr: format!("127.0.0.1:{}", 7000 + id),
                data_addr: String::new(),
                location: Location {
                    levels: vec![
                        ("rack".into(), format!("r{rack}")),
                        ("host".into(), format!("h{id}"))
                    ],
                },
                // 0 to 2 disks of 1 to 3 TiB: nodes come, grow and lose their disks.
                disks: (0..disks)
                    .map(|d| DiskInfo {
                        name: format!("d{d}"),
                        capacity_bytes: (1 + (id + rack as u64 + d) % 3) << 40,
                    })
                    .collect(),
            }
        )),
        (prop::sample::select(vec!["p", "q"]), 1u32..4, 1u32..32).prop_map(
            |(n, replicas, pg_count)| {
                CommandV1::CreatePool(PoolSpec {
                    name: n.into(),
                    rule: Rule {
                        replicas,
                        min_replicas: 1,
                        failure_domain: "rack".into(),
                        tag_filter: vec![],
                    },
                    pg_count,
                })
            }
        ),
        (
            name.clone(),
            prop::sample::select(vec!["p", "q"]),
            0u64..4,
            any::<bool>()
        )
            .prop_map(
                |(n, pool, blocks, retry)| CommandV1::CreateVolume(VolumeSpec {
                    name: n.into(),
                    pool: pool.into(),
                    size_bytes: blocks * 4096,
                    extent_size_bytes: 4 << 20,
                    request_id: if retry {
                        format!("req-{n}")
                    } else {
                        String::new()
                    },
                })
            ),
        (name.clone(), 0u64..8).prop_map(|(n, blocks)| CommandV1::ResizeVolume {
            name: n.into(),
            size_bytes: blocks * 4096
        }),
        name.clone()
            .prop_map(|n| CommandV1::DeleteVolume { name: n.into() }),
        (name, prop::sample::select(vec!["x", "y"]), any::<bool>()).prop_map(
            |(n, client, force)| {
                CommandV1::AttachVolume {
                    name: n.into(),
                    client: client.into(),
                    force,
                }
            }
        ),
    ]
    .prop_map(Command::V1)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn replicas_applying_the_same_log_agree(log in prop::collection::vec(command(), 0..80)) {
        let (mut a, mut b) = (ClusterState::default(), ClusterState::default());
        for c in &log {
            let before = a.clone();
            let (ra, rb) = (a.apply(c), b.apply(c));
            prop_assert_eq!(&ra, &rb);
            if ra.is_err() {
                prop_assert_eq!(&a, &before, "a refused command changed the state");
            }
            for (name, v) in &a.volumes {
                if let Some(old) = before.volumes.get(name) {
                    prop_assert!(v.attach_epoch >= old.attach_epoch);
                }
            }
            let mut ids: Vec<u64> = a.volumes.values().map(|v| v.id).collect();
            ids.sort_unstable();
            ids.dedup();
            prop_assert_eq!(ids.len(), a.volumes.len());
        }
        prop_assert_eq!(a, b);
    }
}
