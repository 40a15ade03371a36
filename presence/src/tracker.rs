//! The presence state machine, free of I/O so it can be tested with made-up clocks.
//!
//! Inputs are the presence bucket's entries (as the watch delivers them) and clock ticks; outputs
//! are [`Action`]s the service carries out. A user is **live** while one of their device keys names
//! a live gateway. A gateway is live while its heartbeat is younger than `gateway_timeout`
//! (measured on this process's clock, from when the heartbeat arrived: nats-server 2.9 emits no
//! watch event when `max_age` expires a key, so expiry is ours to detect). A device key naming a
//! gateway we have never heard from counts that gateway as heard from now, so a snapshot read in
//! any order never flaps anyone.
//!
//! A gateway that is no longer live but still has device keys (buried, or cleanly stopped with
//! keys left behind) is buried again every `gateway_timeout` until its keys are gone, so a burial
//! cut short by NATS trouble never leaves keys (or users online) behind. Every `offline_grace`
//! all users are re-evaluated, so a transition whose write failed is tried again.
//!
//! Published presence (`user.<user>`) follows liveness: live -> online at once; not live ->
//! offline once `offline_grace` passed without the user becoming live again (a reconnect within
//! the grace, on any gateway, is invisible). Each write carries the revision it expects, so with
//! several presence services exactly one wins each transition.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chatfabric_nats::wire::PresenceEntry;
use chatfabric_nats::UserId;

/// The timing of failure detection. `gateway_timeout + offline_grace + tick` bounds the time from
/// a gateway's death to its users' offline events.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A gateway whose heartbeat is older than this is dead.
    pub gateway_timeout: Duration,
    /// A user without live devices goes offline after this long.
    pub offline_grace: Duration,
}

/// What the service must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write `entry` to `user.<user>` if its revision is still `expected` (`None`: create), then,
    /// if the write won, publish the event to the user's conversations.
    Publish {
        /// Whose presence.
        user: UserId,
        /// The new published state.
        entry: PresenceEntry,
        /// The revision the key must have (`None`: the key must not exist).
        expected: Option<u64>,
    },
    /// A gateway died: delete its heartbeat (if still at `revision`; 0: only if it has none) and,
    /// if that held, its device keys (each if still at its revision, so a gateway that comes back
    /// and re-asserts them keeps them).
    Bury {
        /// The gateway.
        gateway: String,
        /// Its heartbeat's last revision (0: never seen).
        revision: u64,
        /// Its device keys and their revisions.
        devices: Vec<(UserId, u64)>,
    },
}

#[derive(Debug)]
struct Gateway {
    heard: Instant,
    revision: u64,
}

#[derive(Debug, Default)]
struct User {
    /// Device keys: gateway -> revision.
    devices: HashMap<String, u64>,
    /// The published entry and its revision.
    stored: Option<(PresenceEntry, u64)>,
    /// When the user stopped being live (process clock, wall ms), while still published online.
    lost: Option<(Instant, u64)>,
}

/// Presence state of one presence service.
#[derive(Debug)]
pub struct Tracker {
    timing: Timing,
    gateways: HashMap<String, Gateway>,
    /// Users with at least one device key on each gateway.
    on_gateway: HashMap<String, HashSet<UserId>>,
    users: HashMap<UserId, User>,
    /// Gateways no longer live whose device keys were last asked to be deleted then.
    buried: HashMap<String, Instant>,
    /// When every user was last re-evaluated.
    reconciled: Option<Instant>,
}

impl Tracker {
    /// An empty state.
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            gateways: HashMap::new(),
            on_gateway: HashMap::new(),
            users: HashMap::new(),
            buried: HashMap::new(),
            reconciled: None,
        }
    }

    /// Users known (with a device or a published entry).
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Live gateways.
    pub fn gateways(&self) -> usize {
        self.gateways.len()
    }

    /// A heartbeat of `gateway` at `revision`.
    pub fn gateway_put(
        &mut self,
        gateway: &str,
        revision: u64,
        now: Instant,
        wall: u64,
    ) -> Vec<Action> {
        let was_live = self.gateways.contains_key(gateway);
        self.gateways.insert(
            gateway.to_string(),
            Gateway {
                heard: now,
                revision,
            },
        );
        if was_live {
            return Vec::new();
        }
        self.evaluate_gateway_users(gateway, now, wall)
    }

    /// `gateway`'s heartbeat was deleted (a clean shutdown, or another service buried it).
    pub fn gateway_deleted(&mut self, gateway: &str, now: Instant, wall: u64) -> Vec<Action> {
        if self.gateways.remove(gateway).is_none() {
            return Vec::new();
        }
        self.evaluate_gateway_users(gateway, now, wall)
    }

    /// `user` has a connection on `gateway` (key revision `revision`).
    pub fn device_put(
        &mut self,
        user: &UserId,
        gateway: &str,
        revision: u64,
        now: Instant,
        wall: u64,
    ) -> Vec<Action> {
        self.gateways.entry(gateway.to_string()).or_insert(Gateway {
            heard: now,
            revision: 0,
        });
        self.on_gateway
            .entry(gateway.to_string())
            .or_default()
            .insert(user.clone());
        self.users
            .entry(user.clone())
            .or_default()
            .devices
            .insert(gateway.to_string(), revision);
        self.evaluate(user, now, wall).into_iter().collect()
    }

    /// `user` has no connection on `gateway` any more.
    pub fn device_deleted(
        &mut self,
        user: &UserId,
        gateway: &str,
        now: Instant,
        wall: u64,
    ) -> Vec<Action> {
        if let Some(users) = self.on_gateway.get_mut(gateway) {
            users.remove(user);
            if users.is_empty() {
                self.on_gateway.remove(gateway);
            }
        }
        match self.users.get_mut(user) {
            Some(u) => {
                u.devices.remove(gateway);
            }
            None => return Vec::new(),
        }
        self.evaluate(user, now, wall).into_iter().collect()
    }

    /// The published entry of `user` is now `entry` at `revision` (`None`: deleted or absent).
    /// Older revisions than the one we hold are ignored.
    pub fn stored(
        &mut self,
        user: &UserId,
        entry: Option<(PresenceEntry, u64)>,
        now: Instant,
        wall: u64,
    ) -> Vec<Action> {
        let slot = self.users.entry(user.clone()).or_default();
        if let (Some((_, held)), Some((_, new))) = (&slot.stored, &entry) {
            if new < held {
                return Vec::new();
            }
        }
        slot.stored = entry;
        self.evaluate(user, now, wall).into_iter().collect()
    }

    /// Advances time: buries gateways whose heartbeat is too old and publishes users whose grace
    /// ran out.
    pub fn tick(&mut self, now: Instant, wall: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let dead: Vec<String> = self
            .gateways
            .iter()
            .filter(|(_, g)| now.duration_since(g.heard) > self.timing.gateway_timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for gateway in dead {
            let revision = self.gateways.remove(&gateway).map_or(0, |g| g.revision);
            actions.push(self.bury(&gateway, revision, now));
            actions.extend(self.evaluate_gateway_users(&gateway, now, wall));
        }
        // Device keys of gateways that are gone: bury again until the keys are deleted.
        self.buried.retain(|g, _| self.on_gateway.contains_key(g));
        let leftover: Vec<String> = self
            .on_gateway
            .keys()
            .filter(|g| !self.gateways.contains_key(*g))
            .filter(|g| {
                self.buried
                    .get(*g)
                    .is_none_or(|at| now.duration_since(*at) > self.timing.gateway_timeout)
            })
            .cloned()
            .collect();
        for gateway in leftover {
            actions.push(self.bury(&gateway, 0, now));
        }
        if self
            .reconciled
            .is_none_or(|at| now.duration_since(at) >= self.timing.offline_grace)
        {
            self.reconciled = Some(now);
            let users: Vec<UserId> = self.users.keys().cloned().collect();
            actions.extend(users.iter().filter_map(|u| self.evaluate(u, now, wall)));
        }
        let grace = self.timing.offline_grace;
        let expired: Vec<UserId> = self
            .users
            .iter()
            .filter(|(_, u)| {
                u.lost
                    .is_some_and(|(at, _)| now.duration_since(at) >= grace)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for user in expired {
            let Some(slot) = self.users.get_mut(&user) else {
                continue;
            };
            let Some((_, lost_wall)) = slot.lost.take() else {
                continue;
            };
            actions.push(Action::Publish {
                user: user.clone(),
                entry: PresenceEntry {
                    online: false,
                    last_seen: lost_wall,
                },
                expected: slot.stored.map(|(_, rev)| rev),
            });
        }
        actions
    }

    /// Deletes what `gateway` left: its heartbeat (if still at `revision`, 0: if absent) and its
    /// device keys.
    fn bury(&mut self, gateway: &str, revision: u64, now: Instant) -> Action {
        self.buried.insert(gateway.to_string(), now);
        let devices = self
            .on_gateway
            .get(gateway)
            .into_iter()
            .flatten()
            .filter_map(|u| Some((u.clone(), *self.users.get(u)?.devices.get(gateway)?)))
            .collect();
        Action::Bury {
            gateway: gateway.to_string(),
            revision,
            devices,
        }
    }

    fn evaluate_gateway_users(&mut self, gateway: &str, now: Instant, wall: u64) -> Vec<Action> {
        let users: Vec<UserId> = self
            .on_gateway
            .get(gateway)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        users
            .iter()
            .filter_map(|u| self.evaluate(u, now, wall))
            .collect()
    }

    fn is_live(&self, user: &User) -> bool {
        user.devices.keys().any(|g| self.gateways.contains_key(g))
    }

    /// Brings `user`'s published state towards its liveness.
    fn evaluate(&mut self, user: &UserId, now: Instant, wall: u64) -> Option<Action> {
        let live = self.is_live(self.users.get(user)?);
        let slot = self.users.get_mut(user)?;
        let published_online = slot.stored.is_some_and(|(e, _)| e.online);
        if live {
            slot.lost = None;
            if !published_online {
                return Some(Action::Publish {
                    user: user.clone(),
                    entry: PresenceEntry {
                        online: true,
                        last_seen: wall,
                    },
                    expected: slot.stored.map(|(_, rev)| rev),
                });
            }
        } else if published_online {
            slot.lost.get_or_insert((now, wall));
        } else {
            slot.lost = None;
            if slot.devices.is_empty() {
                // Nothing left to track but the published entry; keep its revision for the next
                // transition only while the state machine has a reason to hold it.
                if slot.stored.is_none() {
                    self.users.remove(user);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
