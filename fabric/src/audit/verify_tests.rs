//! Tampering with an export, every way the issue names, and pruning.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::*;
use crate::audit::entry::{AuditCall, Verdict};
use crate::audit::log::AuditLimits;
use crate::identity::ca::{self, CertificateAuthority};
use crate::identity::principal::ClusterName;

struct Fixture {
    _dir: tempfile::TempDir,
    root: CertificateDer<'static>,
    key: SigningKey,
    certs: BTreeMap<String, String>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc();
    ca::init(dir.path(), &ClusterName::new("prod").unwrap(), now).unwrap();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let key = SigningKey::from_bytes(&[11u8; 32]);
    let public = key.verifying_key().to_bytes();
    let mut certs = BTreeMap::new();
    certs.insert(
        crate::hex::encode(&public),
        ca.certify_cell_key(&public, now).unwrap(),
    );
    Fixture {
        root: CertificateDer::from_pem_slice(ca.root_pem().as_bytes()).unwrap(),
        _dir: dir,
        key,
        certs,
    }
}

fn now_ms() -> u64 {
    crate::meta::clock::unix_ms()
}

fn log_of(f: &Fixture, n: u64, limits: AuditLimits) -> AuditLog {
    let mut log = AuditLog::default();
    log.set_limits(limits).unwrap();
    for i in 0..n {
        let call = AuditCall {
            time_ms: now_ms(),
            principal: "fabric://prod/user/alice".into(),
            verb: "volume.create".into(),
            target: format!("volume/v{i}"),
            request_sha256: leaf_hash(&i.to_be_bytes()),
            peer: "10.0.0.5:4242".into(),
        };
        log.append(call, Verdict::Done, String::new(), 3, || {
            Some(f.key.clone())
        });
    }
    log.checkpoint(now_ms(), Some(&f.key));
    log
}

fn export(f: &Fixture, log: &AuditLog) -> Vec<String> {
    let mut out = Vec::new();
    let texts: Vec<String> = log.entries().map(|e| e.text()).collect();
    write_export(
        &mut out,
        &ExportHeader::of(log, &f.certs),
        texts.iter().map(String::as_str),
    )
    .unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn check(f: &Fixture, lines: &[String]) -> Result<Verified, Tampered> {
    let text = lines.join("\n") + "\n";
    verify(text.as_bytes(), std::slice::from_ref(&f.root), &[])
}

fn big() -> AuditLimits {
    AuditLimits {
        retain: 0,
        capacity: 100_000,
    }
}

#[test]
fn an_untouched_export_verifies() {
    let f = fixture();
    let log = log_of(&f, 2500, big());
    let v = check(&f, &export(&f, &log)).unwrap();
    assert_eq!((v.first_index, v.size, v.entries), (0, 2500, 2500));
    assert_eq!(v.root, log.root());
    assert_eq!(v.cluster, "prod");
    assert_eq!(v.checkpoints, 3, "1024, 2048 and the tail");
}

#[test]
fn a_flipped_byte_is_named() {
    let f = fixture();
    let lines = export(&f, &log_of(&f, 2500, big()));
    // Line 1 is the header; entry i is line i + 2, index i + 1 of the vector.
    let mut changed = lines.clone();
    changed[1500 + 1] = changed[1500 + 1].replacen("volume/v1500", "volume/v1501", 1);
    let err = check(&f, &changed).unwrap_err();
    assert_eq!(err.entry, Some(1500), "{err}");
    assert!(err.reason.contains("was changed"), "{err}");

    // Flipping a byte of the recorded hash is caught the same way.
    let mut changed = lines.clone();
    let mut bytes = changed[42 + 1].clone().into_bytes();
    bytes[0] = if bytes[0] == b'0' { b'1' } else { b'0' };
    changed[42 + 1] = String::from_utf8(bytes).unwrap();
    assert_eq!(check(&f, &changed).unwrap_err().entry, Some(42));

    // A forger who rewrites the hash too is caught at the next signed checkpoint, which
    // names the range from its first entry.
    let mut forged = lines.clone();
    let text =
        forged[1500 + 1]
            .split_once(' ')
            .unwrap()
            .1
            .replacen("volume/v1500", "volume/v9999", 1);
    forged[1500 + 1] = entry_line(&text);
    let err = check(&f, &forged).unwrap_err();
    assert_eq!(err.entry, Some(1024), "{err}");
    assert!(err.reason.contains("recorded hash rewritten"), "{err}");
}

#[test]
fn a_deleted_reordered_or_inserted_entry_is_named() {
    let f = fixture();
    let lines = export(&f, &log_of(&f, 2500, big()));
    let mut deleted = lines.clone();
    deleted.remove(700 + 1);
    assert_eq!(check(&f, &deleted).unwrap_err().entry, Some(700));

    let mut reordered = lines.clone();
    reordered.swap(10 + 1, 11 + 1);
    let err = check(&f, &reordered).unwrap_err();
    assert_eq!(err.entry, Some(10), "{err}");
    assert!(err.reason.contains("removed, inserted or moved"), "{err}");

    let mut inserted = lines.clone();
    inserted.insert(5 + 1, lines[4 + 1].clone());
    assert_eq!(check(&f, &inserted).unwrap_err().entry, Some(5));
}

#[test]
fn a_truncated_export_is_named_where_it_was_cut() {
    let f = fixture();
    let mut lines = export(&f, &log_of(&f, 2500, big()));
    lines.truncate(lines.len() - 7);
    let err = check(&f, &lines).unwrap_err();
    assert_eq!(err.entry, Some(2493), "{err}");
    assert!(err.reason.contains("cut off"), "{err}");
}

#[test]
fn a_pruned_log_still_verifies_and_a_foreign_root_does_not() {
    let f = fixture();
    let log = log_of(
        &f,
        5000,
        AuditLimits {
            retain: 2000,
            capacity: 100_000,
        },
    );
    assert!(log.first_index() > 0);
    let lines = export(&f, &log);
    let v = check(&f, &lines).unwrap();
    assert_eq!(v.first_index, log.first_index());
    assert_eq!(v.size, 5000);

    let other = fixture();
    let text = lines.join("\n") + "\n";
    let err = verify(text.as_bytes(), std::slice::from_ref(&other.root), &[]).unwrap_err();
    assert!(err.reason.contains("does not lead to the root"), "{err}");
}

#[test]
fn a_required_witness_must_have_cosigned() {
    let f = fixture();
    let mut log = log_of(&f, 100, big());
    let witness = SigningKey::from_bytes(&[21u8; 32]);
    let size = log.checkpoints().last().unwrap().size;
    let cosig = log
        .checkpoints()
        .last()
        .unwrap()
        .cosign("auditor", &witness);
    let want = vec![crate::hex::encode(witness.verifying_key().as_bytes())];
    let text = export(&f, &log).join("\n") + "\n";
    assert!(verify(text.as_bytes(), std::slice::from_ref(&f.root), &want).is_err());
    log.cosign(size, cosig).unwrap();
    let text = export(&f, &log).join("\n") + "\n";
    let v = verify(text.as_bytes(), std::slice::from_ref(&f.root), &want).unwrap();
    assert_eq!(v.witnesses[0].witness, "auditor");
    assert_eq!(v.witnesses[0].size, size);
}
