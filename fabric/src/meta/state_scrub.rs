//! A volume's scrubs in the replicated state: `fabricctl scrub start` asks for one, and the
//! volume's writer reports what each PG's scrub found. `scrub status` and the schedule read
//! the record (see `crate::scrub`).

use super::command::{Applied, CommandError, Outcome};
use super::model::{PgScrubReport, ScrubRequest};
use super::state::ClusterState;

impl ClusterState {
    pub(super) fn request_scrub(&mut self, name: &str, deep: bool, at_ms: u64) -> Outcome {
        let volume = self
            .volumes
            .get_mut(name)
            .ok_or_else(|| CommandError::NotFound(format!("volume {name}")))?;
        let request = &mut volume.scrub.requested;
        *request = Some(match *request {
            // The pending request keeps its time: a writer already scrubbing for it finishes
            // it, and a deep one is made of it if asked.
            Some(pending) => ScrubRequest {
                deep: pending.deep || deep,
                ..pending
            },
            None => ScrubRequest { deep, at_ms },
        });
        Ok(Applied::Volume(volume.clone()))
    }

    /// Records the scrub of `pgs`; the caller checked the writer's attach epoch. Refused,
    /// changing nothing, for a PG the volume's pool does not have, a PG named twice or counts
    /// that do not add up.
    pub(super) fn report_scrub(
        &mut self,
        name: &str,
        deep: bool,
        started_ms: u64,
        pgs: &[PgScrubReport],
        fulfils: Option<u64>,
    ) -> Outcome {
        let volume = self
            .volumes
            .get(name)
            .ok_or_else(|| CommandError::NotFound(format!("volume {name}")))?;
        let pg_count = self
            .pools
            .get(&volume.spec.pool)
            .map_or(0, |p| p.spec.pg_count);
        let mut seen = std::collections::BTreeSet::new();
        for r in pgs {
            if r.pg >= pg_count || !seen.insert(r.pg) {
                return Err(CommandError::InvalidArgument(format!(
                    "volume {name}: PG {} is not one of its pool's {pg_count}, or is reported twice",
                    r.pg
                )));
            }
            if r.repaired + r.unrepaired > r.errors {
                return Err(CommandError::InvalidArgument(format!(
                    "volume {name}, PG {}: {} repaired and {} unrepaired of {} errors",
                    r.pg, r.repaired, r.unrepaired, r.errors
                )));
            }
        }
        let volume = self.volumes.get_mut(name).expect("looked up above");
        for r in pgs {
            let pg = volume.scrub.pgs.entry(r.pg).or_default();
            pg.last_ms = pg.last_ms.max(started_ms);
            if deep {
                pg.last_deep_ms = pg.last_deep_ms.max(started_ms);
            }
            pg.errors = r.errors;
            pg.repaired = r.repaired;
            pg.unrepaired = r.unrepaired;
            pg.errors_total += r.errors;
            pg.repaired_total += r.repaired;
        }
        let request = volume.scrub.requested;
        if let (Some(asked), Some(at)) = (request, fulfils)
            && asked.at_ms == at
            && (deep || !asked.deep)
        {
            volume.scrub.requested = None;
        }
        Ok(Applied::Volume(volume.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::command::CommandV1;
    use super::super::model::{PgScrub, Volume};
    use super::*;

    fn attached(s: &mut ClusterState) -> u64 {
        crate::meta::state_placement_test::volume_in_a_small_cluster(s, "v");
        let attach = CommandV1::AttachVolume {
            name: "v".into(),
            client: "gw".into(),
            force: false,
        };
        s.apply(&attach.into()).expect("attach");
        s.volumes["v"].attach_epoch
    }

    fn ask(s: &mut ClusterState, deep: bool, at_ms: u64) -> Volume {
        let command = CommandV1::RequestScrub {
            name: "v".into(),
            deep,
            at_ms,
        };
        match s.apply(&command.into()) {
            Ok(Applied::Volume(v)) => v,
            other => panic!("{other:?}"),
        }
    }

    fn report(
        epoch: u64,
        deep: bool,
        started_ms: u64,
        pgs: Vec<PgScrubReport>,
        fulfils: Option<u64>,
    ) -> CommandV1 {
        CommandV1::ReportScrub {
            volume: "v".into(),
            attach_epoch: epoch,
            deep,
            started_ms,
            pgs,
            fulfils,
        }
    }

    fn pg(pg: u32, errors: u64, repaired: u64) -> PgScrubReport {
        PgScrubReport {
            pg,
            errors,
            repaired,
            unrepaired: errors - repaired,
        }
    }

    #[test]
    fn a_request_is_kept_until_a_scrub_at_least_as_deep_reports_it_done() {
        let mut s = ClusterState::default();
        let epoch = attached(&mut s);
        assert_eq!(ask(&mut s, false, 100).scrub.requested.unwrap().at_ms, 100);
        // Asked again, deep: the same request, now deep.
        let v = ask(&mut s, true, 200);
        assert_eq!(
            v.scrub.requested,
            Some(ScrubRequest {
                deep: true,
                at_ms: 100
            })
        );
        // A light scrub does not fulfil a deep request.
        s.apply(&report(epoch, false, 150, vec![pg(0, 0, 0)], Some(100)).into())
            .unwrap();
        assert!(s.volumes["v"].scrub.requested.is_some());
        s.apply(&report(epoch, true, 250, vec![pg(0, 2, 1), pg(3, 0, 0)], Some(100)).into())
            .unwrap();
        let v = &s.volumes["v"];
        assert_eq!(v.scrub.requested, None);
        assert_eq!(
            v.scrub.pgs[&0],
            PgScrub {
                last_ms: 250,
                last_deep_ms: 250,
                errors: 2,
                repaired: 1,
                unrepaired: 1,
                errors_total: 2,
                repaired_total: 1,
            }
        );
        // A later light scrub finds nothing: the last scrub's counts go, the totals stay.
        s.apply(&report(epoch, false, 300, vec![pg(0, 0, 0)], None).into())
            .unwrap();
        let p = s.volumes["v"].scrub.pgs[&0];
        assert_eq!((p.last_ms, p.last_deep_ms, p.errors), (300, 250, 0));
        assert_eq!((p.errors_total, p.repaired_total), (2, 1));
    }

    #[test]
    fn bad_reports_and_fenced_writers_change_nothing() {
        let mut s = ClusterState::default();
        let epoch = attached(&mut s);
        ask(&mut s, false, 100);
        let before = s.volumes["v"].clone();
        let pg_count = s.pools[&before.spec.pool].spec.pg_count;
        for bad in [
            report(epoch + 1, false, 1, vec![pg(0, 0, 0)], Some(100)),
            report(epoch, false, 1, vec![pg(pg_count, 0, 0)], Some(100)),
            report(epoch, false, 1, vec![pg(1, 0, 0), pg(1, 0, 0)], Some(100)),
            report(
                epoch,
                false,
                1,
                vec![PgScrubReport {
                    pg: 0,
                    errors: 1,
                    repaired: 1,
                    unrepaired: 1,
                }],
                Some(100),
            ),
        ] {
            assert!(s.apply(&bad.clone().into()).is_err(), "{bad}");
            assert_eq!(s.volumes["v"], before, "{bad}");
        }
        // A writer superseded by a newer attach is fenced.
        let takeover = CommandV1::AttachVolume {
            name: "v".into(),
            client: "other".into(),
            force: true,
        };
        s.apply(&takeover.into()).unwrap();
        let fenced = report(epoch, false, 1, vec![pg(0, 0, 0)], Some(100));
        assert!(matches!(
            s.apply(&fenced.into()),
            Err(CommandError::FailedPrecondition(_))
        ));
        assert!(matches!(
            s.apply(
                &CommandV1::RequestScrub {
                    name: "nope".into(),
                    deep: false,
                    at_ms: 1
                }
                .into()
            ),
            Err(CommandError::NotFound(_))
        ));
    }
}
