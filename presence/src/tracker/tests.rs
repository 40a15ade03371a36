//! The state machine against made-up clocks: grace, reconnects, burial, lost writes.

use super::*;

const TIMING: Timing = Timing {
    gateway_timeout: Duration::from_secs(10),
    offline_grace: Duration::from_secs(3),
};

fn alice() -> UserId {
    UserId::new("alice").unwrap()
}

fn online(actions: &[Action]) -> Option<bool> {
    actions.iter().find_map(|a| match a {
        Action::Publish { entry, .. } => Some(entry.online),
        _ => None,
    })
}

#[test]
fn online_at_once_offline_after_grace() {
    let t0 = Instant::now();
    let mut t = Tracker::new(TIMING);
    t.gateway_put("g1", 1, t0, 0);
    let a = t.device_put(&alice(), "g1", 2, t0, 0);
    assert_eq!(online(&a), Some(true));
    t.stored(
        &alice(),
        Some((
            PresenceEntry {
                online: true,
                last_seen: 0,
            },
            3,
        )),
        t0,
        0,
    );
    assert!(t.device_deleted(&alice(), "g1", t0, 5).is_empty());
    assert!(
        t.tick(t0 + Duration::from_secs(2), 0).is_empty(),
        "still in grace"
    );
    let a = t.tick(t0 + Duration::from_secs(3), 0);
    assert_eq!(
        a,
        vec![Action::Publish {
            user: alice(),
            entry: PresenceEntry {
                online: false,
                last_seen: 5
            },
            expected: Some(3)
        }]
    );
}

#[test]
fn reconnect_within_grace_does_not_flap() {
    let t0 = Instant::now();
    let mut t = Tracker::new(TIMING);
    t.device_put(&alice(), "g1", 2, t0, 0);
    t.stored(
        &alice(),
        Some((
            PresenceEntry {
                online: true,
                last_seen: 0,
            },
            3,
        )),
        t0,
        0,
    );
    t.device_deleted(&alice(), "g1", t0, 0);
    let a = t.device_put(&alice(), "g2", 4, t0 + Duration::from_secs(1), 0);
    assert!(a.is_empty(), "{a:?}");
    assert!(t.tick(t0 + Duration::from_secs(5), 0).is_empty());
}

#[test]
fn dead_gateway_is_buried_and_its_users_go_offline_unless_elsewhere() {
    let t0 = Instant::now();
    let bob = UserId::new("bob").unwrap();
    let mut t = Tracker::new(TIMING);
    t.gateway_put("g1", 1, t0, 0);
    t.gateway_put("g2", 1, t0, 0);
    for (u, rev) in [(alice(), 10), (bob.clone(), 20)] {
        t.device_put(&u, "g1", rev, t0, 0);
        t.stored(
            &u,
            Some((
                PresenceEntry {
                    online: true,
                    last_seen: 0,
                },
                rev + 1,
            )),
            t0,
            0,
        );
    }
    t.device_put(&bob, "g2", 30, t0, 0);
    // g2 keeps beating, g1 falls silent.
    t.gateway_put("g2", 5, t0 + Duration::from_secs(9), 0);
    let a = t.tick(t0 + Duration::from_secs(11), 0);
    assert!(
        matches!(&a[..], [Action::Bury { gateway, devices, .. }] if gateway == "g1" && devices.len() == 2),
        "{a:?}"
    );
    t.gateway_put("g2", 6, t0 + Duration::from_secs(11), 0);
    let a = t.tick(t0 + Duration::from_secs(14), 0);
    assert_eq!(a.len(), 1, "{a:?}");
    assert!(
        matches!(&a[0], Action::Publish { user, entry, .. } if user == &alice() && !entry.online)
    );
}

fn published(online: bool, rev: u64) -> Option<(PresenceEntry, u64)> {
    Some((
        PresenceEntry {
            online,
            last_seen: 0,
        },
        rev,
    ))
}

#[test]
fn keys_left_by_a_gone_gateway_are_buried_again_until_deleted() {
    let t0 = Instant::now();
    let mut t = Tracker::new(TIMING);
    // Keys of a gateway that stopped (heartbeat deleted) or whose burial failed.
    t.device_put(&alice(), "g1", 7, t0, 0);
    t.stored(&alice(), published(true, 8), t0, 0);
    t.gateway_deleted("g1", t0, 0);
    let burials = |a: &[Action]| {
        a.iter()
            .filter(|a| matches!(a, Action::Bury { gateway, devices, .. } if gateway == "g1" && devices == &vec![(alice(), 7)]))
            .count()
    };
    assert_eq!(burials(&t.tick(t0 + Duration::from_millis(500), 0)), 1);
    assert_eq!(
        burials(&t.tick(t0 + Duration::from_secs(5), 0)),
        0,
        "not at once again"
    );
    assert_eq!(
        burials(&t.tick(t0 + Duration::from_secs(11), 0)),
        1,
        "the key is still there"
    );
    t.device_deleted(&alice(), "g1", t0 + Duration::from_secs(12), 0);
    assert_eq!(burials(&t.tick(t0 + Duration::from_secs(30), 0)), 0, "gone");
}

#[test]
fn a_transition_whose_write_was_lost_is_tried_again() {
    let t0 = Instant::now();
    let mut t = Tracker::new(TIMING);
    t.gateway_put("g1", 1, t0, 0);
    t.device_put(&alice(), "g1", 2, t0, 0);
    t.stored(&alice(), published(true, 3), t0, 0);
    t.device_deleted(&alice(), "g1", t0, 0);
    let offline = t.tick(t0 + Duration::from_secs(3), 0);
    assert_eq!(online(&offline), Some(false));
    // The write's outcome never came back (KV failed): the user is still published online.
    let mut retried = Vec::new();
    for s in 4..12 {
        retried.extend(t.tick(t0 + Duration::from_secs(s), 0));
    }
    assert_eq!(online(&retried), Some(false), "{retried:?}");
}
