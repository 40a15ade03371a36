//! Coalescing: the messages of one conversation for one offline member within a window become one
//! event. No I/O and no clock of its own (the caller passes `now`), so it is tested directly.
//!
//! A conversation's window opens with its first message that has an offline recipient and closes
//! `window` later; messages after that open the next one. At the close, each recipient gets one
//! batch: how many messages, the first and last sequence, the last `keep` messages, and the
//! holds (`D`) of every message in it, released when the batch's event is done.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatfabric_nats::{ConvId, UserId};

use crate::event::MessageView;

/// What one recipient gets for one window.
#[derive(Debug)]
pub struct Batch<D> {
    /// Messages in it.
    pub count: u64,
    /// Sequence of the first.
    pub first_seq: u64,
    /// Sequence of the last.
    pub last_seq: u64,
    /// The last few messages, oldest first.
    pub last: VecDeque<Arc<MessageView>>,
    /// One hold per message.
    pub held: Vec<D>,
}

/// A closed window's batch for one recipient.
#[derive(Debug)]
pub struct Due<D> {
    /// The conversation.
    pub conv: ConvId,
    /// The recipient.
    pub user: UserId,
    /// What they get.
    pub batch: Batch<D>,
}

/// The open windows of one stream partition.
#[derive(Debug)]
pub struct Coalescer<D> {
    window: Duration,
    keep: usize,
    open: HashMap<ConvId, BTreeMap<UserId, Batch<D>>>,
    /// Closing times in opening order (every window lasts the same, so this is sorted).
    closing: VecDeque<(Instant, ConvId)>,
}

impl<D: Clone> Coalescer<D> {
    /// Windows of `window` keeping the last `keep` messages (at least one).
    pub fn new(window: Duration, keep: usize) -> Self {
        Self {
            window,
            keep: keep.max(1),
            open: HashMap::new(),
            closing: VecDeque::new(),
        }
    }

    /// Adds a message for `recipients` (non-empty), each batch holding a clone of `held`.
    pub fn add(
        &mut self,
        now: Instant,
        msg: Arc<MessageView>,
        conv: &ConvId,
        recipients: Vec<UserId>,
        held: D,
    ) {
        let window = match self.open.get_mut(conv) {
            Some(w) => w,
            None => {
                self.closing.push_back((now + self.window, conv.clone()));
                self.open.entry(conv.clone()).or_default()
            }
        };
        for user in recipients {
            let batch = window.entry(user).or_insert_with(|| Batch {
                count: 0,
                first_seq: msg.seq,
                last_seq: msg.seq,
                last: VecDeque::new(),
                held: Vec::new(),
            });
            batch.count += 1;
            batch.first_seq = batch.first_seq.min(msg.seq);
            batch.last_seq = batch.last_seq.max(msg.seq);
            if batch.last.len() == self.keep {
                batch.last.pop_front();
            }
            batch.last.push_back(Arc::clone(&msg));
            batch.held.push(held.clone());
        }
    }

    /// When the next window closes.
    pub fn next_close(&self) -> Option<Instant> {
        self.closing.front().map(|(t, _)| *t)
    }

    /// The batches of every window closed at `now`.
    pub fn due(&mut self, now: Instant) -> Vec<Due<D>> {
        let mut out = Vec::new();
        while let Some((t, _)) = self.closing.front() {
            if *t > now {
                break;
            }
            let Some((_, conv)) = self.closing.pop_front() else {
                break;
            };
            if let Some(window) = self.open.remove(&conv) {
                out.extend(window.into_iter().map(|(user, batch)| Due {
                    conv: conv.clone(),
                    user,
                    batch,
                }));
            }
        }
        out
    }

    /// Open windows.
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(seq: u64) -> Arc<MessageView> {
        Arc::new(MessageView {
            seq,
            id: format!("m{seq}"),
            sender: UserId::new("alice").unwrap(),
            ts: seq,
            body: format!("body {seq}"),
        })
    }

    fn users(names: &[&str]) -> Vec<UserId> {
        names.iter().map(|n| UserId::new(*n).unwrap()).collect()
    }

    #[test]
    fn a_burst_becomes_one_batch_per_recipient_per_window() {
        let t0 = Instant::now();
        let w = Duration::from_secs(2);
        let room = ConvId::new("room").unwrap();
        let mut c = Coalescer::new(w, 2);
        c.add(t0, view(1), &room, users(&["bob", "carol"]), 1u64);
        c.add(
            t0 + Duration::from_millis(500),
            view(2),
            &room,
            users(&["bob"]),
            2,
        );
        c.add(
            t0 + Duration::from_millis(900),
            view(5),
            &room,
            users(&["bob", "carol"]),
            5,
        );
        assert!(c.due(t0 + Duration::from_millis(1999)).is_empty());
        assert_eq!(c.next_close(), Some(t0 + w));
        let due = c.due(t0 + w);
        assert_eq!(due.len(), 2);
        let bob = &due[0];
        assert_eq!(bob.user.as_str(), "bob");
        assert_eq!(
            (bob.batch.count, bob.batch.first_seq, bob.batch.last_seq),
            (3, 1, 5)
        );
        let kept: Vec<u64> = bob.batch.last.iter().map(|m| m.seq).collect();
        assert_eq!(kept, vec![2, 5]);
        assert_eq!(bob.batch.held, vec![1, 2, 5]);
        let carol = &due[1];
        assert_eq!(
            (
                carol.batch.count,
                carol.batch.first_seq,
                carol.batch.last_seq
            ),
            (2, 1, 5)
        );
        assert_eq!(c.open_windows(), 0);
        // The next message opens the next window.
        c.add(t0 + w, view(6), &room, users(&["bob"]), 6);
        assert_eq!(c.next_close(), Some(t0 + w + w));
        assert_eq!(c.due(t0 + w + w).len(), 1);
    }

    #[test]
    fn conversations_have_their_own_windows() {
        let t0 = Instant::now();
        let w = Duration::from_secs(1);
        let (a, b) = (ConvId::new("a").unwrap(), ConvId::new("b").unwrap());
        let mut c = Coalescer::new(w, 1);
        c.add(t0, view(1), &a, users(&["bob"]), ());
        c.add(
            t0 + Duration::from_millis(600),
            view(2),
            &b,
            users(&["bob"]),
            (),
        );
        let first = c.due(t0 + w);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].conv, a);
        assert_eq!(c.due(t0 + Duration::from_millis(1599)).len(), 0);
        assert_eq!(c.due(t0 + Duration::from_millis(1600))[0].conv, b);
    }
}
