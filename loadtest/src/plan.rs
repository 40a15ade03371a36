//! The plan of a run: who every connection and publisher is, which conversation it belongs to,
//! which worker holds it, where it connects from and to, whether it sends or receives over SSE.
//!
//! Connection `i` of the run (members of active conversations first, then idle connections)
//! belongs to worker `i % workers`, goes to gateway `i % gateways` and connects from source
//! address `i % sources`, so every worker, gateway and source address gets an even share and each
//! conversation's members are spread over all of them. A share `--sse-share` of the active members
//! receives over SSE, spread evenly over the conversations; every other active member sends.
//!
//! NATS publisher `k` belongs to worker `k % workers`; with N publishers and C conversations it
//! is a member of, and posts round-robin into, the conversations `c` with
//! `c % min(N, C) == k % min(N, C)`. Every sender, WebSocket member or publisher, sends at the
//! same rate, so a worker's share of the aggregate rate is its share of the senders.
//!
//! Everything here is a pure function of the [`Settings`]: the coordinator (creating the groups),
//! every worker process (taking its share) and the report agree without talking.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::settings::Settings;

/// What a worker needs to know to play its part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerPlan {
    /// This worker's index; it owns the connections whose global index `i % workers == index`.
    pub(crate) index: usize,
    /// Number of workers (at least 1).
    pub(crate) workers: usize,
    /// The run's settings (with the secret, which `Settings` does not serialize for reports).
    pub(crate) settings: Settings,
    /// The token secret.
    pub(crate) jwt_secret: String,
    /// Conversation ids: the active ones, then the quiet ones that hold idle connections.
    pub(crate) convs: Vec<String>,
    /// True when the worker shares the coordinator's process (its CPU is already counted).
    pub(crate) in_process: bool,
}

/// Who a connection is and where it goes.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// Global connection index (unique over all workers), used in client ids.
    pub(crate) index: usize,
    /// The user it authenticates as.
    pub(crate) user: String,
    /// The conversation it subscribes (and sends) to.
    pub(crate) conv: Arc<str>,
    /// The conversation's index in the plan.
    pub(crate) conv_idx: u32,
    /// Index into the worker's targets.
    pub(crate) target: usize,
    /// Local address to connect from.
    pub(crate) source: Option<IpAddr>,
    /// Receives over server-sent events instead of WebSocket (and never sends).
    pub(crate) sse: bool,
}

/// One publisher of a worker.
#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    /// Its index over all publishers of the run (unique, used in client ids).
    pub(crate) index: usize,
    /// Its user id, the `<bot>` token of its subjects.
    pub(crate) user: String,
    /// `(conversation index, id)` of the conversations it posts into, in turn.
    pub(crate) convs: Vec<(u32, Arc<str>)>,
}

/// The conversation index and user id of connection `i` of the run.
pub(crate) fn member_at(s: &Settings, i: usize) -> (usize, String) {
    let active = s.member_conns();
    if i < active {
        let (conv, m) = (i / s.members, i % s.members);
        (conv, format!("{}-c{conv}-m{m}", s.run_id))
    } else {
        let k = i - active;
        let (room, m) = (k / s.idle_room_size, k % s.idle_room_size);
        (s.conversations + room, format!("{}-i{room}-m{m}", s.run_id))
    }
}

/// The users of conversation `conv` (active ones first, then the quiet ones); an active
/// conversation's members are followed by its NATS publishers.
pub(crate) fn users_of(s: &Settings, conv: usize) -> Vec<String> {
    if conv < s.conversations {
        let members = (conv * s.members..(conv + 1) * s.members).map(|i| member_at(s, i).1);
        let publishers = publishers_of(conv, s.nats_publishers, s.conversations)
            .map(|k| publisher_id(&s.run_id, k));
        members.chain(publishers).collect()
    } else {
        let room = conv - s.conversations;
        let start = s.member_conns() + room * s.idle_room_size;
        let range = start..(start + s.idle_room_size).min(s.total_conns());
        range.map(|i| member_at(s, i).1).collect()
    }
}

/// Whether connection `i` of `members` active-member connections is an SSE receiver, for a
/// share `share` in [0, 1): the SSE members are spread evenly over the conversations.
pub(crate) fn is_sse(i: usize, members: usize, share: f64) -> bool {
    i < members && ((i + 1) as f64 * share).floor() > (i as f64 * share).floor()
}

/// The members that send: every active member that is not an SSE receiver.
pub(crate) fn senders(members: usize, share: f64) -> impl Iterator<Item = usize> {
    (0..members).filter(move |&i| !is_sse(i, members, share))
}

/// WebSocket members that send (active members that are not SSE receivers).
pub(crate) fn ws_senders(s: &Settings) -> usize {
    senders(s.member_conns(), s.sse_share).count()
}

/// The share of the aggregate rate the NATS publishers send: every sender, WebSocket member
/// or publisher, sends at the same rate.
pub(crate) fn nats_share(s: &Settings) -> f64 {
    let all = ws_senders(s) + s.nats_publishers;
    if all == 0 {
        return 0.0;
    }
    s.nats_publishers as f64 / all as f64
}

/// The user id of publisher `k`.
pub(crate) fn publisher_id(run_id: &str, k: usize) -> String {
    format!("{run_id}-bot{k}")
}

/// The active conversations publisher `k` of `publishers` posts into (round-robin), among
/// `conversations`. With no more publishers than conversations each conversation has exactly one
/// publisher; with more, each publisher has exactly one conversation. Either way every
/// conversation gets at most `publishers.div_ceil(conversations)` extra members.
pub(crate) fn conversations_of(
    k: usize,
    publishers: usize,
    conversations: usize,
) -> impl Iterator<Item = usize> {
    let groups = publishers.min(conversations).max(1);
    (k % groups..conversations).step_by(groups)
}

/// The publishers of active conversation `conv`: the inverse of [`conversations_of`].
pub(crate) fn publishers_of(
    conv: usize,
    publishers: usize,
    conversations: usize,
) -> impl Iterator<Item = usize> {
    let groups = publishers.min(conversations).max(1);
    (conv % groups..publishers).step_by(groups)
}

/// The members worker `plan.index` holds.
pub(crate) fn worker_members(plan: &WorkerPlan) -> Vec<Member> {
    let s = &plan.settings;
    let workers = plan.workers.max(1);
    let sources = s.source_addrs.len();
    (plan.index..s.total_conns())
        .step_by(workers)
        .map(|i| {
            let (conv_idx, user) = member_at(s, i);
            Member {
                index: i,
                user,
                conv: Arc::from(plan.convs[conv_idx].as_str()),
                conv_idx: conv_idx as u32,
                target: i % s.gateways.len(),
                source: (sources > 0).then(|| s.source_addrs[i % sources]),
                sse: is_sse(i, s.member_conns(), s.sse_share),
            }
        })
        .collect()
}

/// The NATS publishers worker `plan.index` holds.
pub(crate) fn worker_publishers(plan: &WorkerPlan) -> Vec<Publisher> {
    let s = &plan.settings;
    (plan.index..s.nats_publishers)
        .step_by(plan.workers.max(1))
        .map(|k| Publisher {
            index: k,
            user: publisher_id(&s.run_id, k),
            convs: conversations_of(k, s.nats_publishers, s.conversations)
                .map(|c| (c as u32, Arc::from(plan.convs[c].as_str())))
                .collect(),
        })
        .collect()
}

/// The share of all senders (sending members and NATS publishers) that this worker holds: every
/// sender sends at the same rate.
pub(crate) fn senders_share(plan: &WorkerPlan) -> f64 {
    let s = &plan.settings;
    let workers = plan.workers.max(1);
    let (mut mine, mut all) = (0usize, 0usize);
    let publishers = 0..s.nats_publishers;
    for i in senders(s.member_conns(), s.sse_share).chain(publishers) {
        all += 1;
        mine += usize::from(i % workers == plan.index);
    }
    if all == 0 {
        return 0.0;
    }
    mine as f64 / all as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::tests::resolve;

    fn plan(index: usize, workers: usize) -> WorkerPlan {
        let settings = Settings {
            gateways: vec!["ws://127.0.0.1:1/ws".into(), "ws://127.0.0.1:2/ws".into()],
            source_addrs: vec![
                [127, 0, 0, 2].into(),
                [127, 0, 0, 3].into(),
                [127, 0, 0, 4].into(),
            ],
            conversations: 3,
            members: 4,
            sse_share: 0.25,
            idle: 5,
            idle_room_size: 2,
            workers,
            ..resolve(&["--run-id", "t"]).unwrap()
        };
        let convs = (0..settings.conversations + settings.idle_conversations())
            .map(|i| format!("g{i}"))
            .collect();
        WorkerPlan {
            index,
            workers,
            settings,
            jwt_secret: String::new(),
            convs,
            in_process: false,
        }
    }

    #[test]
    fn workers_split_connections_evenly_and_spread_gateways_and_sources() {
        let all: Vec<Member> = (0..3).flat_map(|w| worker_members(&plan(w, 3))).collect();
        assert_eq!(all.len(), 17);
        let mut indexes: Vec<usize> = all.iter().map(|m| m.index).collect();
        indexes.sort_unstable();
        assert_eq!(
            indexes,
            (0..17).collect::<Vec<_>>(),
            "each connection exactly once"
        );
        let users: std::collections::HashSet<_> = all.iter().map(|m| &m.user).collect();
        assert_eq!(users.len(), 17, "each connection its own user");
        // Member 5 is conversation 1's second member; 12 is the first idle one.
        let m5 = all.iter().find(|m| m.index == 5).unwrap();
        assert_eq!((m5.conv_idx, &*m5.conv, m5.target), (1, "g1", 1));
        assert_eq!(m5.source, Some([127, 0, 0, 4].into()));
        let idle = all.iter().find(|m| m.index == 12).unwrap();
        assert_eq!((idle.conv_idx, &*idle.conv), (3, "g3"));
        // Worker shares of the senders add up to the whole rate.
        let share: f64 = (0..3).map(|w| senders_share(&plan(w, 3))).sum();
        assert!((share - 1.0).abs() < 1e-9);
    }

    #[test]
    fn publishers_are_spread_over_workers_and_take_a_sender_share() {
        let with_publishers = |w| {
            let mut p = plan(w, 3);
            p.settings.nats_publishers = 4;
            p
        };
        let all: Vec<Publisher> = (0..3)
            .flat_map(|w| worker_publishers(&with_publishers(w)))
            .collect();
        let mut indexes: Vec<usize> = all.iter().map(|p| p.index).collect();
        indexes.sort_unstable();
        assert_eq!(indexes, [0, 1, 2, 3], "each publisher exactly once");
        // 4 publishers over 3 conversations: publisher 3 shares conversation 0 with publisher 0.
        let p3 = all.iter().find(|p| p.index == 3).unwrap();
        assert_eq!(p3.user, "t-bot3");
        assert_eq!(p3.convs, [(0, Arc::from("g0"))]);
        // 9 WebSocket senders (12 members, a quarter SSE) and 4 publishers share the rate.
        let shares: Vec<f64> = (0..3).map(|w| senders_share(&with_publishers(w))).collect();
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(ws_senders(&with_publishers(0).settings), 9);
        assert!((nats_share(&with_publishers(0).settings) - 4.0 / 13.0).abs() < 1e-9);
    }

    #[test]
    fn users_are_numbered_by_conversation_then_idle_room() {
        let s = Settings {
            conversations: 2,
            members: 3,
            idle: 5,
            idle_room_size: 4,
            ..resolve(&["--run-id", "r"]).unwrap()
        };
        assert_eq!(users_of(&s, 1), ["r-c1-m0", "r-c1-m1", "r-c1-m2"]);
        assert_eq!(
            users_of(&s, 2),
            ["r-i0-m0", "r-i0-m1", "r-i0-m2", "r-i0-m3"]
        );
        assert_eq!(
            users_of(&s, 3),
            ["r-i1-m0"],
            "the last quiet room holds the rest"
        );
        assert_eq!(member_at(&s, 10), (3, "r-i1-m0".to_string()));
        // NATS publishers join the active conversations only.
        let s = Settings {
            nats_publishers: 3,
            ..s
        };
        assert_eq!(
            users_of(&s, 0),
            ["r-c0-m0", "r-c0-m1", "r-c0-m2", "r-bot0", "r-bot2"]
        );
        assert_eq!(users_of(&s, 1), ["r-c1-m0", "r-c1-m1", "r-c1-m2", "r-bot1"]);
        assert_eq!(users_of(&s, 2).len(), 4);
    }

    /// `(publisher, conversation)` pairs.
    type Pairs = Vec<(usize, usize)>;

    /// Every (publisher, conversation) pair, from both directions.
    fn pairs(publishers: usize, conversations: usize) -> (Pairs, Pairs) {
        let mut by_publisher: Vec<_> = (0..publishers)
            .flat_map(|k| conversations_of(k, publishers, conversations).map(move |c| (k, c)))
            .collect();
        let mut by_conv: Vec<_> = (0..conversations)
            .flat_map(|c| publishers_of(c, publishers, conversations).map(move |k| (k, c)))
            .collect();
        by_publisher.sort_unstable();
        by_conv.sort_unstable();
        (by_publisher, by_conv)
    }

    #[test]
    fn publishers_cover_every_conversation_and_memberships_match() {
        for (p, c) in [
            (5, 10),
            (5, 12),
            (10, 10),
            (12, 5),
            (1, 3),
            (3, 1),
            (7, 100),
        ] {
            let (by_publisher, by_conv) = pairs(p, c);
            assert_eq!(by_publisher, by_conv, "{p} publishers, {c} conversations");
            for k in 0..p {
                assert!(
                    conversations_of(k, p, c).next().is_some(),
                    "publisher {k} of {p} over {c} posts somewhere"
                );
            }
            for conv in 0..c {
                let n = publishers_of(conv, p, c).count();
                assert!(n >= 1 && n <= p.div_ceil(c), "conversation {conv}: {n}");
            }
        }
        // Fewer publishers than conversations: each conversation has exactly one.
        assert_eq!(pairs(5, 12).0.len(), 12);
        assert_eq!(conversations_of(1, 5, 12).collect::<Vec<_>>(), [1, 6, 11]);
        // More: each publisher has exactly one.
        assert_eq!(pairs(12, 5).0.len(), 12);
        assert_eq!(publishers_of(1, 12, 5).collect::<Vec<_>>(), [1, 6, 11]);
        assert_eq!(pairs(0, 5).0.len(), 0);
    }

    #[test]
    fn sse_members_are_spread_and_never_send() {
        let members = 100;
        let sse: Vec<usize> = (0..members).filter(|&i| is_sse(i, members, 0.2)).collect();
        assert_eq!(sse.len(), 20);
        assert!(
            sse.windows(2).all(|w| w[1] - w[0] == 5),
            "evenly spread: {sse:?}"
        );
        assert_eq!(senders(members, 0.2).count(), 80);
        assert!(
            !is_sse(150, members, 0.2),
            "idle connections stay WebSocket"
        );
        assert_eq!(senders(members, 0.0).count(), 100);
    }

    #[test]
    fn nats_publishers_share_the_rate_per_sender_and_fit_in_the_groups() {
        let s = resolve(&["--nats-publishers", "5", "--run-id", "t"]).unwrap();
        assert_eq!(s.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(ws_senders(&s), 100);
        assert!((nats_share(&s) - 5.0 / 105.0).abs() < 1e-12);
        // SSE receivers do not send, so the publishers' share grows.
        let s = resolve(&[
            "--nats-publishers",
            "20",
            "--sse-share",
            "0.2",
            "--run-id",
            "t",
        ])
        .unwrap();
        assert!((nats_share(&s) - 0.2).abs() < 1e-12, "20 of 80 + 20");
        assert_eq!(nats_share(&resolve(&["--run-id", "t"]).unwrap()), 0.0);
        // 998 members + 2 publishers per group + the creator: over the limit.
        assert!(resolve(&[
            "--members",
            "998",
            "--conversations",
            "2",
            "--nats-publishers",
            "4",
            "--run-id",
            "t"
        ])
        .is_err());
        assert!(resolve(&[
            "--conversations",
            "0",
            "--idle",
            "10",
            "--nats-publishers",
            "1",
            "--run-id",
            "t"
        ])
        .is_err());
    }
}
