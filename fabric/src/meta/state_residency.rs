//! Residency: data stays inside its jurisdiction.
//!
//! An operator labels locations of the fault-domain tree (`jurisdiction=de` on `row=r1` or on
//! `cell=fra1`); the label becomes a tag of every bucket at that location, inherited by the
//! disks under it. A pool that requires `residency=de` is a pool whose tag filter asks for
//! `jurisdiction=de`: placement never picks a disk without it, and every path that moves data
//! goes through placement (rebuild after a node is out, drain, the balancer's overrides, which
//! `placement::overrides` checks for eligibility). A relabel that would leave such a pool
//! unable to place its replicas is refused, naming the pool and its rule, and changes nothing;
//! one that takes a location out of a jurisdiction moves that pool's replicas off it.

use std::collections::BTreeMap;

use super::command::{Applied, CommandError, Outcome};
use super::pgmap::LOCATION_LEVELS;
use super::state::ClusterState;

/// The label key a pool's residency names.
pub const JURISDICTION: &str = "jurisdiction";
/// Most labels on one location, and longest key or value.
const LABELS_MAX: usize = 16;
const LABEL_BYTES_MAX: usize = 64;

fn check_label(what: &str, s: &str) -> Result<(), CommandError> {
    let ok = !s.is_empty()
        && s.len() <= LABEL_BYTES_MAX
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CommandError::InvalidArgument(format!(
            "label {what} {s:?}: 1 to {LABEL_BYTES_MAX} letters, digits, '-', '_' or '.'"
        )))
    }
}

/// How a pool's tag filter reads in messages: `residency=de` for the jurisdiction.
pub fn rule_words(tags: &[(String, String)]) -> String {
    tags.iter()
        .map(|(k, v)| match k.as_str() {
            JURISDICTION => format!("residency={v}"),
            _ => format!("{k}={v}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl ClusterState {
    /// Sets the labels of `location` (`level=value`); no labels removes them.
    pub(super) fn set_labels(
        &mut self,
        location: &str,
        labels: &BTreeMap<String, String>,
    ) -> Outcome {
        let (level, value) = location.split_once('=').ok_or_else(|| {
            CommandError::InvalidArgument(format!(
                "location {location:?}: want level=name, such as row=r1"
            ))
        })?;
        if !LOCATION_LEVELS.contains(&level) {
            return Err(CommandError::InvalidArgument(format!(
                "location level {level:?} is not one of {}",
                LOCATION_LEVELS.join(", ")
            )));
        }
        check_label("location", value)?;
        if labels.len() > LABELS_MAX {
            return Err(CommandError::InvalidArgument(format!(
                "{} labels: at most {LABELS_MAX}",
                labels.len()
            )));
        }
        for (k, v) in labels {
            check_label("key", k)?;
            check_label("value", v)?;
            if LOCATION_LEVELS.contains(&k.as_str()) {
                return Err(CommandError::InvalidArgument(format!(
                    "label {k:?} is a location level, set by the nodes themselves"
                )));
            }
        }
        let before = self.labels.clone();
        if labels.is_empty() {
            self.labels.remove(location);
        } else {
            self.labels.insert(location.to_owned(), labels.clone());
        }
        let changed = self.evolve_topology().and_then(|evolved| {
            self.check_residency(evolved.as_ref())?;
            self.follow_topology(evolved)
        });
        if let Err(e) = changed {
            self.labels = before;
            return Err(e);
        }
        Ok(Applied::Nothing)
    }

    /// Refuses `evolved` (the topology with the labels as they are now, if it changed) when
    /// some pool with a tag filter could not place its replicas on it: such a pool would keep
    /// its old map, with replicas where its rule no longer allows them.
    fn check_residency(
        &self,
        evolved: Option<&super::pgmap::Topology>,
    ) -> Result<(), CommandError> {
        let Some(topology) = evolved else {
            return Ok(());
        };
        for pool in self.pools.values() {
            let rule = &pool.spec.rule;
            if rule.tag_filter.is_empty() {
                continue;
            }
            topology
                .placement_pool(pool.id, &pool.spec.name, rule, pool.spec.pg_count)
                .map_err(|e| {
                    CommandError::FailedPrecondition(format!(
                        "pool {} requires {}: the change would leave it unable to place its \
                         replicas ({e})",
                        pool.spec.name,
                        rule_words(&rule.tag_filter)
                    ))
                })?;
        }
        Ok(())
    }
}
