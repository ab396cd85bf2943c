//! A served volume's scrubs: whenever its record says a scrub was asked for, and otherwise
//! once a minute, the gateway looks at what is due (`crate::scrub::schedule`) and runs it.

use std::sync::Arc;
use std::time::Duration;

use super::attach::Attached;
use crate::meta::client::Client;
use crate::scrub::Intervals;

/// How often a served volume's schedule is looked at when its record does not move.
const CHECK_EVERY: Duration = Duration::from_secs(60);

/// Runs the volume's scrubs as they come due, until `stop` turns true (looked at between
/// PGs) or the attachment is superseded.
pub(super) async fn scrub_when_due(
    attached: Attached,
    client: Arc<Client>,
    intervals: Intervals,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut view = attached.scrub.subscribe();
    let since_ms = crate::meta::clock::unix_ms();
    loop {
        if attached.superseded.refusal().is_some() {
            return;
        }
        let due = view
            .borrow_and_update()
            .due(since_ms, crate::meta::clock::unix_ms(), intervals);
        if let Some(due) = due {
            let stopping = || *stop.borrow();
            match crate::scrub::run(&attached, &client, &due, stopping).await {
                Ok(Some(v)) => {
                    // The record as this scrub left it, before the watch brings it.
                    attached.scrub.send_modify(|view| {
                        view.record = v.scrub.unwrap_or_default();
                    });
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(volume = %attached.name, error = %format!("{e:#}"), "scrub failed; tried again later");
                }
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            changed = view.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}
