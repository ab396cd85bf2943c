//! A caller with no rights calling in a loop (`fabricd dev --nodes 3`, 400 refused calls over
//! one connection as fast as the member answers): the audit log takes its refusals at a bounded
//! rate, each entry past the budget carrying how many were counted since, so that every refused
//! call is in the log, as an entry or in a count, while the log grows by a few dozen entries.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fabric::identity::Transport;
use fabric::meta::client::Client;
use fabric_suite::{fabricctl, issue_cert};
use proto::meta as pb;
use serde_json::Value;

const CALLS: u64 = 400;
const PRINCIPAL: &str = "fabric://dev/user/mallory";

/// How many refusals an entry stands for: itself and any count it carries.
fn refusals_in(entry: &Value) -> u64 {
    let detail = entry["detail"].as_str().unwrap_or_default();
    let count = |marker: &str| -> Option<u64> {
        let before = detail.split(marker).next()?;
        before.split_whitespace().last()?.parse().ok()
    };
    if detail.contains(" refused calls of ") && detail.contains(" counted, not written") {
        count(" refused calls of ").unwrap()
    } else if detail.contains(" earlier refused calls of ") {
        1 + count(" earlier refused calls of ").unwrap()
    } else {
        1
    }
}

#[test]
fn a_flood_of_refused_calls_is_audited_at_a_bounded_rate_and_every_one_is_counted() {
    let (_serial, _dir, data, _dev) = fabric_suite::three_node_cluster();
    let certs: PathBuf = data.join("users/mallory");
    issue_cert(&data, "user", "mallory", &certs, &[]);
    let cluster: Value =
        serde_json::from_slice(&std::fs::read(data.join("cluster.json")).unwrap()).unwrap();
    let member = cluster["members"][0][1].as_str().unwrap().to_owned();

    fabric::identity::tls::install_default_provider();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    runtime.block_on(async {
        let client = Client::new(vec![member], Transport::load(&certs).unwrap());
        for _ in 0..CALLS {
            let refused = client
                .call(|mut c| async move {
                    c.create_pool(pb::CreatePoolRequest {
                        name: "not-yours".into(),
                        ..Default::default()
                    })
                    .await
                })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
        }
    });
    let flood = started.elapsed();
    eprintln!("{CALLS} refused calls in {flood:?}");

    // Every refusal accounted for, once the last count is flushed.
    let deadline = Instant::now() + Duration::from_secs(20);
    let entries = loop {
        let listed = fabricctl(
            &data,
            &[
                "audit",
                "list",
                "--principal",
                PRINCIPAL,
                "--limit",
                "10000",
            ],
        );
        let entries = listed.as_array().unwrap().clone();
        if entries.iter().map(refusals_in).sum::<u64>() >= CALLS {
            break entries;
        }
        assert!(
            Instant::now() < deadline,
            "{} refusals accounted for in {entries:#?}",
            entries.iter().map(refusals_in).sum::<u64>()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(entries.iter().map(refusals_in).sum::<u64>(), CALLS);
    assert!(entries.iter().all(|e| e["verdict"] == "denied"));
    // The burst of 20, five a second after it, and one flush.
    let bound = 20 + 5 * (flood.as_secs() + 1) + 1;
    assert!(
        (entries.len() as u64) <= bound,
        "{} entries for {CALLS} refusals in {flood:?} (bound {bound})",
        entries.len()
    );
    assert!(
        entries.len() as u64 <= CALLS / 2,
        "the flood took {flood:?}: too slow to test the bound"
    );
}
