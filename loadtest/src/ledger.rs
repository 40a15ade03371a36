//! Loss, duplicate and order accounting against the fabric's cursors.
//!
//! Every `msg` frame carries its `seq` and the `prev` delivered before it on the subscription (or
//! the subscription's starting cursor). A receiver that keeps the last `seq` it saw knows, frame by
//! frame: `seq <= last` is a duplicate; `prev != last` breaks the chain, and the acknowledged
//! messages in `(last, prev]` never reached it. Seqs are stream sequences shared by every
//! conversation of a stream partition, so they are not contiguous per conversation: which seqs a
//! receiver should have had comes from the senders' acks ([`AckBook`]), not from counting.
//!
//! At the end a receiver should hold every acked message of its conversation after its starting
//! cursor; what it lacks is the acked seqs above its last `seq`, plus those inside its chain holes.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// What one `msg` frame was, for one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// New and chained to the previous one.
    InOrder,
    /// New, but its `prev` is not the last seq seen: something was skipped (or reordered).
    OutOfOrder,
    /// Seen before (`seq <= last`).
    Duplicate,
}

/// One receiver's view of its subscription to one conversation, across reconnects.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReceiverLedger {
    /// Cursor of the first subscription; `None` until subscribed.
    start: Option<u64>,
    /// Last seq seen (or the starting cursor).
    last: u64,
    /// `(after, upto]` ranges the chain skipped.
    holes: Vec<(u64, u64)>,
    /// Frames with `seq <= last`.
    pub(crate) duplicates: u64,
    /// Frames whose `prev` was not `last`, and resumes that started elsewhere than asked.
    pub(crate) order_violations: u64,
}

impl ReceiverLedger {
    /// Where to resume: the last seq seen, once subscribed.
    pub(crate) fn resume_after(&self) -> Option<u64> {
        self.start.map(|_| self.last)
    }

    /// A `subscribed` reply with `cursor`.
    pub(crate) fn on_subscribed(&mut self, cursor: u64) {
        match self.start {
            None => {
                self.start = Some(cursor);
                self.last = cursor;
            }
            Some(_) if cursor == self.last => {}
            Some(_) => {
                // A resume must start where it was asked to; a later start skips messages.
                self.order_violations += 1;
                if cursor > self.last {
                    self.holes.push((self.last, cursor));
                    self.last = cursor;
                }
            }
        }
    }

    /// A `msg` frame.
    pub(crate) fn on_msg(&mut self, seq: u64, prev: u64) -> Arrival {
        if seq <= self.last {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        let arrival = if prev == self.last {
            Arrival::InOrder
        } else {
            self.order_violations += 1;
            if prev > self.last {
                self.holes.push((self.last, prev.min(seq - 1)));
            }
            Arrival::OutOfOrder
        };
        self.last = seq;
        arrival
    }

    /// Adds this receiver to `book` (receivers that never subscribed add nothing).
    pub(crate) fn file(&self, conv: u32, book: &mut ReceiptBook) {
        let Some(start) = self.start else { return };
        *book.ranges.entry((conv, start, self.last)).or_default() += 1;
        book.holes
            .extend(self.holes.iter().map(|&(a, b)| (conv, a, b)));
        book.duplicates += self.duplicates;
        book.order_violations += self.order_violations;
    }
}

/// What many receivers saw, compacted: receivers with the same conversation, start and last seq
/// are one entry, so a worker's report stays small with 15,000 receivers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReceiptBook {
    /// `(conv, start, last) -> receivers`.
    #[serde(with = "ranges_as_list")]
    pub(crate) ranges: BTreeMap<(u32, u64, u64), u64>,
    /// `(conv, after, upto)`: a receiver's chain skipped `(after, upto]`.
    pub(crate) holes: Vec<(u32, u64, u64)>,
    /// Duplicate frames.
    pub(crate) duplicates: u64,
    /// Chain breaks.
    pub(crate) order_violations: u64,
}

impl ReceiptBook {
    /// Adds another worker's book.
    pub(crate) fn merge(&mut self, other: ReceiptBook) {
        for (k, n) in other.ranges {
            *self.ranges.entry(k).or_default() += n;
        }
        self.holes.extend(other.holes);
        self.duplicates += other.duplicates;
        self.order_violations += other.order_violations;
    }
}

/// JSON maps need string keys: ship the ranges as a list.
mod ranges_as_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    type Ranges = BTreeMap<(u32, u64, u64), u64>;

    pub(super) fn serialize<S: Serializer>(r: &Ranges, s: S) -> Result<S::Ok, S::Error> {
        r.iter()
            .map(|(&(c, a, b), &n)| (c, a, b, n))
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ranges, D::Error> {
        let list = Vec::<(u32, u64, u64, u64)>::deserialize(d)?;
        Ok(list
            .into_iter()
            .map(|(c, a, b, n)| ((c, a, b), n))
            .collect())
    }
}

/// The acknowledged messages of each conversation: `(seq, step)` where `step` is the rate step
/// the message was sent in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct AckBook {
    pub(crate) acks: Vec<(u32, Vec<(u64, u32)>)>,
}

/// The result of checking receipts against acks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Accounting {
    /// Distinct acknowledged messages.
    pub(crate) acked_messages: u64,
    /// Deliveries that should have happened: for each receiver, the acked messages of its
    /// conversation after its starting cursor.
    pub(crate) expected_deliveries: u64,
    /// Expected deliveries that never arrived.
    pub(crate) lost: u64,
    /// Of those, per rate step of the message's send.
    pub(crate) lost_per_step: Vec<u64>,
    /// Receivers that missed at least one message.
    pub(crate) receivers_with_loss: u64,
    /// Receivers checked (subscribed at least once).
    pub(crate) receivers: u64,
    /// Frames received twice.
    pub(crate) duplicates: u64,
    /// Chain breaks (`prev` not the last seq seen).
    pub(crate) order_violations: u64,
}

/// Checks every receiver of `receipts` against the acknowledged messages of `acks`.
pub(crate) fn account(acks: &AckBook, receipts: &ReceiptBook, steps: usize) -> Accounting {
    let mut by_conv: HashMap<u32, Vec<(u64, u32)>> = HashMap::new();
    for (conv, list) in &acks.acks {
        by_conv.entry(*conv).or_default().extend_from_slice(list);
    }
    for list in by_conv.values_mut() {
        list.sort_unstable();
        // A retried send is acked twice with the same seq.
        list.dedup_by_key(|a| a.0);
    }
    let empty = Vec::new();
    // Acked messages of `conv` with seq in (after, upto].
    let within = |conv: u32, after: u64, upto: u64| -> &[(u64, u32)] {
        let list = by_conv.get(&conv).unwrap_or(&empty);
        let lo = list.partition_point(|a| a.0 <= after);
        let hi = list.partition_point(|a| a.0 <= upto);
        &list[lo..hi.max(lo)]
    };
    let mut out = Accounting {
        acked_messages: by_conv.values().map(|l| l.len() as u64).sum(),
        lost_per_step: vec![0; steps.max(1)],
        duplicates: receipts.duplicates,
        order_violations: receipts.order_violations,
        ..Accounting::default()
    };
    let lose = |missing: &[(u64, u32)], receivers: u64, out: &mut Accounting| {
        out.lost += missing.len() as u64 * receivers;
        for &(_, step) in missing {
            let slot = (step as usize).min(out.lost_per_step.len() - 1);
            out.lost_per_step[slot] += receivers;
        }
    };
    for (&(conv, start, last), &n) in &receipts.ranges {
        out.receivers += n;
        out.expected_deliveries += within(conv, start, u64::MAX).len() as u64 * n;
        let missing = within(conv, last, u64::MAX);
        if !missing.is_empty() {
            out.receivers_with_loss += n;
        }
        lose(missing, n, &mut out);
    }
    for &(conv, after, upto) in &receipts.holes {
        let missing = within(conv, after, upto);
        if !missing.is_empty() {
            // Counted as one receiver with loss per hole: an upper bound when one receiver has
            // several holes, which only a broken fabric produces.
            out.receivers_with_loss += 1;
        }
        lose(missing, 1, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(acks: &[(u32, &[u64])]) -> AckBook {
        AckBook {
            acks: acks
                .iter()
                .map(|(c, seqs)| (*c, seqs.iter().map(|&s| (s, 0)).collect()))
                .collect(),
        }
    }

    #[test]
    fn a_receiver_that_saw_the_whole_chain_lost_nothing() {
        // Conversation 0's messages are seqs 3, 5, 9 (the stream is shared with other convs).
        let acks = book(&[(0, &[3, 5, 9])]);
        let mut r = ReceiverLedger::default();
        r.on_subscribed(2);
        assert_eq!(r.on_msg(3, 2), Arrival::InOrder);
        assert_eq!(r.on_msg(5, 3), Arrival::InOrder);
        assert_eq!(r.on_msg(9, 5), Arrival::InOrder);
        let mut receipts = ReceiptBook::default();
        r.file(0, &mut receipts);
        let a = account(&acks, &receipts, 1);
        assert_eq!(
            (
                a.expected_deliveries,
                a.lost,
                a.duplicates,
                a.order_violations
            ),
            (3, 0, 0, 0)
        );
    }

    #[test]
    fn skipped_and_missing_tail_messages_are_lost_duplicates_and_breaks_are_counted() {
        let acks = book(&[(0, &[3, 5, 9, 12]), (1, &[4])]);
        let mut r = ReceiverLedger::default();
        r.on_subscribed(0);
        r.on_msg(3, 0);
        // 5 never arrives: 9 says its prev was 5.
        assert_eq!(r.on_msg(9, 5), Arrival::OutOfOrder);
        assert_eq!(r.on_msg(9, 5), Arrival::Duplicate);
        assert_eq!(r.on_msg(3, 0), Arrival::Duplicate);
        // 12 never arrives before the end.
        let mut receipts = ReceiptBook::default();
        r.file(0, &mut receipts);
        // A second receiver of conversation 1 that subscribed after seq 4: nothing expected.
        let mut late = ReceiverLedger::default();
        late.on_subscribed(4);
        late.file(1, &mut receipts);
        // One that never subscribed is not a receiver.
        ReceiverLedger::default().file(1, &mut receipts);
        let a = account(&acks, &receipts, 1);
        assert_eq!(a.receivers, 2);
        assert_eq!(a.expected_deliveries, 4);
        assert_eq!(a.lost, 2, "seq 5 (hole) and seq 12 (tail)");
        assert_eq!((a.duplicates, a.order_violations), (2, 1));
        assert_eq!(a.acked_messages, 5);
    }

    #[test]
    fn a_resume_from_the_cursor_keeps_the_chain_and_retried_acks_count_once() {
        let mut acks = book(&[(0, &[1, 2, 3])]);
        acks.acks.push((0, vec![(2, 0)])); // the same message acked again after a retry
        let mut r = ReceiverLedger::default();
        r.on_subscribed(0);
        r.on_msg(1, 0);
        assert_eq!(r.resume_after(), Some(1));
        r.on_subscribed(1);
        r.on_msg(2, 1);
        r.on_msg(3, 2);
        let mut receipts = ReceiptBook::default();
        r.file(0, &mut receipts);
        let a = account(&acks, &receipts, 1);
        assert_eq!((a.acked_messages, a.lost, a.order_violations), (3, 0, 0));
        // A resume that starts past the requested cursor skips messages.
        let mut skipped = ReceiverLedger::default();
        skipped.on_subscribed(0);
        skipped.on_subscribed(2);
        skipped.on_msg(3, 2);
        let mut receipts = ReceiptBook::default();
        skipped.file(0, &mut receipts);
        let a = account(&acks, &receipts, 1);
        assert_eq!((a.lost, a.order_violations), (2, 1));
    }

    #[test]
    fn loss_is_attributed_to_the_step_a_message_was_sent_in_and_books_merge() {
        let acks = AckBook {
            acks: vec![(0, vec![(1, 0), (2, 1), (3, 1)])],
        };
        let mut a = ReceiptBook::default();
        let mut r = ReceiverLedger::default();
        r.on_subscribed(0);
        r.on_msg(1, 0);
        r.file(0, &mut a);
        let mut b = ReceiptBook::default();
        r.file(0, &mut b);
        // Shipped between processes as JSON.
        let b: ReceiptBook = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        a.merge(b);
        let acc = account(&acks, &a, 2);
        assert_eq!(acc.receivers, 2);
        assert_eq!(acc.lost_per_step, vec![0, 4]);
        assert_eq!(acc.receivers_with_loss, 2);
    }
}
