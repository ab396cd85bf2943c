//! The policy against the refusals a cluster must make, and properties over random bindings.

use proptest::prelude::*;

use super::*;

const ADMIN: &str = "fabric://c1/user/admin";
const ALICE: &str = "fabric://c1/user/alice";
const BOB: &str = "fabric://c1/user/bob";

/// Volumes `a1` and `a2` live in pool `a`, `b1` in pool `b`.
fn pool_of(volume: &str) -> Option<String> {
    volume.get(..1).map(str::to_owned)
}

fn vol(name: &str) -> Target {
    Target::Volume {
        pool: pool_of(name).unwrap(),
        name: name.into(),
    }
}

fn bind(policy: &mut Policy, principal: &str, role: &str, scope: &str) {
    let binding = Binding {
        principal: principal.into(),
        role: role.into(),
        scope: scope.parse().unwrap(),
    };
    policy.bind(ADMIN, binding, &pool_of).unwrap();
}

#[test]
fn a_viewer_reads_but_cannot_create_or_delete_and_the_refusal_names_verb_and_target() {
    let mut p = Policy::bootstrap(ADMIN).unwrap();
    bind(&mut p, ALICE, "viewer", "cluster");
    assert!(p.check(ALICE, Verb::VolumeGet, &vol("a1")).is_ok());
    let denied = p
        .check(ALICE, Verb::VolumeCreate, &Target::Pool("a".into()))
        .unwrap_err();
    assert_eq!(
        denied.to_string(),
        "fabric://c1/user/alice may not volume.create on pool/a: no binding grants volume.create at a scope covering it"
    );
    assert!(p.check(ALICE, Verb::VolumeDelete, &vol("a1")).is_err());
    // Nobody unbound may do anything.
    assert!(p.check(BOB, Verb::ClusterStatus, &Target::Cluster).is_err());
}

#[test]
fn a_volume_user_of_pool_a_cannot_attach_a_volume_of_pool_b_and_a_cluster_admin_can() {
    let mut p = Policy::bootstrap(ADMIN).unwrap();
    bind(&mut p, ALICE, "volume-user", "pool/a");
    assert!(p.check(ALICE, Verb::VolumeAttach, &vol("a1")).is_ok());
    let denied = p.check(ALICE, Verb::VolumeAttach, &vol("b1")).unwrap_err();
    assert!(
        denied
            .to_string()
            .contains("volume.attach on volume/b1 (pool/b)"),
        "{denied}"
    );
    assert!(p.check(ALICE, Verb::VolumeForceAttach, &vol("a1")).is_err());
    assert!(p.check(ADMIN, Verb::VolumeForceAttach, &vol("b1")).is_ok());
    assert!(
        p.check(ADMIN, Verb::RaftChangeVoters, &Target::Cluster)
            .is_ok()
    );
    // A binding to one volume covers that volume only.
    bind(&mut p, BOB, "volume-admin", "volume/a2");
    assert!(p.check(BOB, Verb::VolumeDelete, &vol("a2")).is_ok());
    assert!(p.check(BOB, Verb::VolumeDelete, &vol("a1")).is_err());
}

#[test]
fn nobody_grants_more_than_they_hold_and_refused_changes_change_nothing() {
    let mut p = Policy::bootstrap(ADMIN).unwrap();
    p.define_role(ADMIN, "binder", &["auth.bind".into(), "volume.get".into()])
        .unwrap();
    bind(&mut p, ALICE, "binder", "cluster");
    bind(&mut p, ALICE, "volume-admin", "pool/a");
    let before = p.clone();
    // Alice may bind what she holds, where she holds it...
    let ok = Binding {
        principal: BOB.into(),
        role: "volume-user".into(),
        scope: Scope::Volume("a1".into()),
    };
    assert_eq!(p.bind(ALICE, ok.clone(), &pool_of), Ok(true));
    assert_eq!(p.bind(ALICE, ok, &pool_of), Ok(false), "bound already");
    let after_ok = p.clone();
    // ...not in another pool, and not a role above her own.
    for (role, scope) in [
        ("volume-user", "pool/b"),
        ("operator", "pool/a"),
        ("volume-admin", "cluster"),
    ] {
        let refused = p.bind(
            ALICE,
            Binding {
                principal: BOB.into(),
                role: role.into(),
                scope: scope.parse().unwrap(),
            },
            &pool_of,
        );
        assert!(
            matches!(refused, Err(PolicyError::Escalation { .. })),
            "{role} at {scope}: {refused:?}"
        );
        assert_eq!(p, after_ok, "a refused bind changes nothing");
    }
    assert!(before.epoch < after_ok.epoch);
    // Bad input is refused by name.
    let bad = Binding {
        principal: "alice".into(),
        role: "viewer".into(),
        scope: Scope::Cluster,
    };
    assert!(matches!(
        p.bind(ADMIN, bad, &pool_of),
        Err(PolicyError::BadPrincipal(_))
    ));
    assert!(matches!(
        p.define_role(ADMIN, "viewer", &[]),
        Err(PolicyError::BuiltIn(_))
    ));
    assert!(matches!(
        p.define_role(ADMIN, "x", &["volume.explode".into()]),
        Err(PolicyError::UnknownVerb(_))
    ));
    assert!(matches!(
        p.remove_role(ADMIN, "binder"),
        Err(PolicyError::RoleInUse { .. })
    ));
}

#[test]
fn a_verb_is_checked_against_a_target_of_its_own_level() {
    let p = Policy::bootstrap(ADMIN).unwrap();
    assert!(matches!(
        p.check(ADMIN, Verb::VolumeDelete, &Target::Pool("a".into())),
        Err(Denied::WrongTarget { .. })
    ));
}

fn arb_binding() -> impl Strategy<Value = Binding> {
    let principal = prop::sample::select(vec![ALICE, BOB]);
    let role = prop::sample::select(role::BUILT_IN.to_vec());
    let scope = prop::sample::select(vec![
        "cluster",
        "pool/a",
        "pool/b",
        "volume/a1",
        "volume/b1",
    ]);
    (principal, role, scope).prop_map(|(p, r, s)| Binding {
        principal: p.into(),
        role: r.into(),
        scope: s.parse().unwrap(),
    })
}

fn targets() -> Vec<Target> {
    vec![
        Target::Cluster,
        Target::Pool("a".into()),
        Target::Pool("b".into()),
        vol("a1"),
        vol("a2"),
        vol("b1"),
    ]
}

proptest! {
    /// Whatever is bound: a grant reaches only targets inside its binding's scope, removing a
    /// binding never allows more, and what is allowed is exactly what some binding grants.
    #[test]
    fn grants_stay_inside_their_scopes(bindings in prop::collection::vec(arb_binding(), 0..8), drop in 0usize..8) {
        let mut p = Policy::bootstrap(ADMIN).unwrap();
        for b in &bindings {
            p.bind(ADMIN, b.clone(), &pool_of).unwrap();
        }
        let mut fewer = p.clone();
        if let Some(b) = bindings.get(drop) {
            fewer.unbind(ADMIN, b).unwrap();
        }
        for who in [ALICE, BOB] {
            for verb in Verb::ALL {
                for target in targets().into_iter().filter(|t| t.level() == verb.level()) {
                    let allowed = p.check(who, *verb, &target);
                    if let Ok(b) = &allowed {
                        prop_assert!(b.scope.covers(&target));
                        prop_assert!(role::built_in(&b.role).unwrap().contains(verb));
                        prop_assert_eq!(&b.principal, who);
                    }
                    let granted = bindings.iter().any(|b| b.principal == who
                        && b.scope.covers(&target)
                        && role::built_in(&b.role).unwrap().contains(verb));
                    prop_assert_eq!(allowed.is_ok(), granted);
                    if fewer.check(who, *verb, &target).is_ok() {
                        prop_assert!(allowed.is_ok(), "unbinding allowed more");
                    }
                }
            }
        }
    }
}
