//! A volume's QoS in the replicated state: `fabricctl volume qos set` changes some of its
//! fields; the gateway serving the volume and the nodes holding it follow the record.

use super::command::{Applied, CommandError, Outcome};
use super::model::QosChange;
use super::state::ClusterState;

impl ClusterState {
    pub(super) fn set_volume_qos(&mut self, name: &str, change: &QosChange) -> Outcome {
        let volume = self
            .volumes
            .get_mut(name)
            .ok_or_else(|| CommandError::NotFound(format!("volume {name}")))?;
        let qos = change.applied_to(volume.qos);
        qos.check()
            .map_err(|e| CommandError::InvalidArgument(format!("volume {name}: {e}")))?;
        volume.qos = qos;
        Ok(Applied::Volume(volume.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::command::CommandV1;
    use super::super::model::{QosChange, VolumeQos};
    use super::*;

    #[test]
    fn a_change_sets_only_its_fields_and_a_bad_one_changes_nothing() {
        let mut s = ClusterState::default();
        let set = |s: &mut ClusterState, change| {
            s.apply(
                &CommandV1::SetVolumeQos {
                    name: "v".into(),
                    change,
                }
                .into(),
            )
        };
        assert!(matches!(
            set(&mut s, QosChange::default()),
            Err(CommandError::NotFound(_))
        ));
        crate::meta::state_placement_test::volume_in_a_small_cluster(&mut s, "v");
        let Ok(Applied::Volume(v)) = set(
            &mut s,
            QosChange {
                iops_limit: Some(1_000),
                weight: Some(300),
                ..QosChange::default()
            },
        ) else {
            panic!("set");
        };
        assert_eq!(
            v.qos,
            VolumeQos {
                iops_limit: 1_000,
                weight: 300,
                ..VolumeQos::default()
            }
        );
        let refused = set(
            &mut s,
            QosChange {
                iops_reservation: Some(2_000),
                ..QosChange::default()
            },
        );
        assert!(
            matches!(&refused, Err(CommandError::InvalidArgument(m)) if m.contains("above the IOPS limit")),
            "{refused:?}"
        );
        assert!(matches!(
            set(
                &mut s,
                QosChange {
                    weight: Some(10_001),
                    ..QosChange::default()
                }
            ),
            Err(CommandError::InvalidArgument(_))
        ));
        assert_eq!(s.volumes["v"].qos.iops_reservation, 0);
        // 0 clears a field.
        let Ok(Applied::Volume(v)) = set(
            &mut s,
            QosChange {
                iops_limit: Some(0),
                iops_reservation: Some(2_000),
                ..QosChange::default()
            },
        ) else {
            panic!("clear");
        };
        assert_eq!(
            (v.qos.iops_limit, v.qos.iops_reservation, v.qos.weight),
            (0, 2_000, 300)
        );
    }
}
