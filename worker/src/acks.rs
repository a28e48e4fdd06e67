//! The acks of one consuming channel, sent together. The jobs of a batch are recorded by one
//! statement and ask for their acks within a moment of each other; one `basic.ack` with
//! `multiple` then settles them all, where one frame per job cost the broker about twice the CPU
//! per message (docs/BENCHMARKS.md).
//!
//! `multiple` settles every unsettled delivery of the channel up to its tag, so it is only ever
//! sent up to the first delivery taken from the consumer that has not asked for its ack: one still
//! running, or one on its way back to the queue (a `nack` or a `reject`, sent on its own, after
//! which [`Acks::settled`] lets the acks past it). Jobs that asked above such a delivery wait for
//! it at most [`HOLD`] (and no more than a quarter of the deliveries taken wait so), and then get an
//! ack of their own: a job that runs long (a slow relay, a claim waiting on a locked account)
//! delays the acks of the others by no more than that.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use lapin::{Channel, options::BasicAckOptions};
use tokio::{
    sync::{Notify, oneshot},
    time::Instant,
};

/// The longest an ack waits for the deliveries below it to ask for theirs, so that one frame acks
/// them all. Jobs in flight together finish in another order than they arrived (the lanes' batches
/// end in any order), and an ack of its own costs the broker more the more deliveries are unacked
/// before it (RabbitMQ looks for its tag from the oldest one on). A delivery still unacked holds a
/// place of the consumer's prefetch: at most [`HELD_SHARE`] of the deliveries taken wait so.
const HOLD: Duration = Duration::from_millis(50);

/// The most asks that wait for a delivery below them, as a share of the deliveries taken and not
/// settled (one in four): past it, they go at once, each in a frame of its own.
const HELD_SHARE: usize = 4;

/// What an ack's job learns: whether the broker's channel took it.
type Answer = oneshot::Sender<lapin::Result<()>>;

/// A job's request for its ack: the answer, and when it asked.
type Asked = (Answer, Instant);

/// The acks of one consuming channel.
pub struct Acks {
    inner: Arc<Inner>,
}

struct Inner {
    channel: Channel,
    state: Mutex<State>,
    /// Wakes a running flush: an ack asked for, a delivery settled otherwise.
    changed: Notify,
}

#[derive(Default)]
struct State {
    /// The deliveries taken from the consumer and not settled yet, by tag; those whose job asked
    /// for its ack hold the job's answer.
    open: BTreeMap<u64, Option<Asked>>,
    /// A flush is scheduled or running; it looks again before it ends.
    flushing: bool,
}

/// The frames one flush sends.
#[derive(Default)]
struct Flush {
    /// Every open delivery up to this tag asked for its ack: one frame (`multiple` when it
    /// covers more than one), answering these jobs.
    prefix: Option<(u64, Vec<Answer>)>,
    /// Asked, but above a delivery that has not, for [`HOLD`] already: an ack each.
    singles: Vec<(u64, Answer)>,
    /// When the next of the asks left waiting is due, if any is left.
    next_due: Option<Instant>,
}

impl Acks {
    /// The acks of `channel`, the one the consumer's deliveries arrive on.
    pub fn new(channel: Channel) -> Self {
        Self {
            inner: Arc::new(Inner {
                channel,
                state: Mutex::new(State::default()),
                changed: Notify::new(),
            }),
        }
    }

    /// Notes a delivery handed to a job; called in the order the consumer yields them.
    pub fn taken(&self, tag: u64) {
        self.inner.lock().open.insert(tag, None);
    }

    /// Notes that a taken delivery was settled otherwise (requeued or rejected), once that frame
    /// is sent: acks above it may now cover it.
    pub fn settled(&self, tag: u64) {
        self.inner.lock().open.remove(&tag);
        self.inner.changed.notify_one();
    }

    /// Acks the taken delivery `tag`, in one frame with the others asked for by then when every
    /// delivery below it has asked too, else alone after [`HOLD`]; answers once its frame is
    /// sent, like lapin's `Acker::ack`.
    pub async fn ack(&self, tag: u64) -> lapin::Result<bool> {
        let (answer, answered) = oneshot::channel();
        {
            let mut state = self.inner.lock();
            state.open.insert(tag, Some((answer, Instant::now())));
            self.schedule(&mut state);
        }
        self.inner.changed.notify_one();
        match answered.await {
            Ok(sent) => sent.map(|()| true),
            // The flush was dropped with its runtime: nothing was sent.
            Err(_) => Ok(false),
        }
    }

    /// Starts a flush unless one is running; a task of its own, so that a job whose settling
    /// times out cannot take the flush down with it.
    fn schedule(&self, state: &mut State) {
        if !state.flushing {
            state.flushing = true;
            tokio::spawn(flush(self.inner.clone()));
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The map holds no invariant that a panicking holder could break.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl State {
    /// Takes out of `open` the asks that can go now, as the frames that ack them: every ask up
    /// to the first delivery that has not asked, and those above it asked at least [`HOLD`]
    /// before `now` (all of them, when more than their [`HELD_SHARE`] wait).
    fn take_due(&mut self, now: Instant) -> Flush {
        let mut flush = Flush::default();
        let mut prefix_end = None;
        let mut blocked = false;
        let mut due = Vec::new();
        let mut waiting = Vec::new();
        for (tag, asked) in &self.open {
            match asked {
                None => blocked = true,
                Some(_) if !blocked => {
                    prefix_end = Some(*tag);
                    due.push(*tag);
                }
                Some((_, at)) if *at + HOLD <= now => due.push(*tag),
                Some((_, at)) => waiting.push((*tag, *at + HOLD)),
            }
        }
        if waiting.len() * HELD_SHARE > self.open.len() {
            due.extend(waiting.iter().map(|(tag, _)| *tag));
        } else {
            flush.next_due = waiting.iter().map(|(_, at)| *at).min();
        }
        let mut prefix = Vec::new();
        for tag in due {
            let Some(Some((answer, _))) = self.open.remove(&tag) else {
                continue;
            };
            match prefix_end {
                Some(end) if tag <= end => prefix.push(answer),
                _ => flush.singles.push((tag, answer)),
            }
        }
        flush.prefix = prefix_end.map(|end| (end, prefix));
        flush
    }
}

/// Sends what is due, until nothing is asked: first yielding once, so that the jobs woken together
/// with the one that scheduled it (a batch's record wakes them all) ask for theirs too; then, while
/// asks wait for a delivery below them, again whenever something changes or the first is due.
async fn flush(inner: Arc<Inner>) {
    loop {
        tokio::task::yield_now().await;
        let flush = {
            let mut state = inner.lock();
            let flush = state.take_due(Instant::now());
            if flush.prefix.is_none() && flush.singles.is_empty() && flush.next_due.is_none() {
                state.flushing = false;
                return;
            }
            flush
        };
        let sent_any = flush.prefix.is_some() || !flush.singles.is_empty();
        if let Some((end, answers)) = flush.prefix {
            let multiple = answers.len() > 1;
            let sent = send(&inner.channel, end, multiple).await;
            for answer in answers {
                let _ = answer.send(sent.clone());
            }
        }
        for (tag, answer) in flush.singles {
            let _ = answer.send(send(&inner.channel, tag, false).await);
        }
        if let (false, Some(due)) = (sent_any, flush.next_due) {
            tokio::select! {
                () = inner.changed.notified() => {}
                () = tokio::time::sleep_until(due) => {}
            }
        }
    }
}

async fn send(channel: &Channel, tag: u64, multiple: bool) -> lapin::Result<()> {
    metrics::counter!("resetmail_worker_ack_frames_total").increment(1);
    channel.basic_ack(tag, BasicAckOptions { multiple }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `open` with these entries: a tag, and when its job asked for its ack (`None`: it has not).
    fn state(
        entries: &[(u64, Option<Instant>)],
    ) -> (State, Vec<oneshot::Receiver<lapin::Result<()>>>) {
        let mut state = State::default();
        let mut receivers = Vec::new();
        for &(tag, asked) in entries {
            let asked = asked.map(|at| {
                let (answer, answered) = oneshot::channel();
                receivers.push(answered);
                (answer, at)
            });
            state.open.insert(tag, asked);
        }
        (state, receivers)
    }

    fn shape(flush: &Flush) -> (Option<(u64, usize)>, Vec<u64>) {
        (
            flush
                .prefix
                .as_ref()
                .map(|(end, answers)| (*end, answers.len())),
            flush.singles.iter().map(|(tag, _)| *tag).collect(),
        )
    }

    fn open_tags(state: &State) -> Vec<u64> {
        state.open.keys().copied().collect()
    }

    #[test]
    fn deliveries_that_all_asked_are_acked_by_one_frame_up_to_the_last() {
        let now = Instant::now();
        let (mut state, _answers) = state(&[(1, Some(now)), (2, Some(now)), (3, Some(now))]);
        let flush = state.take_due(now);
        assert_eq!(shape(&flush), (Some((3, 3)), vec![]));
        assert_eq!(flush.next_due, None);
        assert!(state.open.is_empty());
    }

    #[test]
    fn asks_above_a_delivery_still_running_wait_for_it_then_go_alone() {
        let now = Instant::now();
        let (mut state, _answers) = state(&[
            (1, Some(now)),
            (2, Some(now)),
            (3, None),
            (4, Some(now - HOLD)),
            (6, Some(now)),
        ]);
        let flush = state.take_due(now);
        assert_eq!(shape(&flush), (Some((2, 2)), vec![4]));
        assert_eq!(flush.next_due, Some(now + HOLD));
        assert_eq!(open_tags(&state), vec![3, 6]);

        // Its turn comes: it goes alone, the delivery below still running.
        let flush = state.take_due(now + HOLD);
        assert_eq!(shape(&flush), (None, vec![6]));
        assert_eq!(flush.next_due, None);
        assert_eq!(open_tags(&state), vec![3]);
    }

    #[test]
    fn once_the_delivery_below_asks_one_frame_acks_it_and_those_waiting_above() {
        let now = Instant::now();
        // Six more running above, so that the two waiting stay within their share.
        let (mut state, mut answers) = state(&[
            (3, None),
            (4, Some(now)),
            (5, Some(now)),
            (6, None),
            (7, None),
            (8, None),
            (9, None),
            (10, None),
            (11, None),
        ]);
        assert_eq!(shape(&state.take_due(now)), (None, vec![]));
        let (answer, answered) = oneshot::channel();
        answers.push(answered);
        state.open.insert(3, Some((answer, now)));
        assert_eq!(shape(&state.take_due(now)), (Some((5, 3)), vec![]));
        assert_eq!(open_tags(&state), vec![6, 7, 8, 9, 10, 11]);
    }

    #[test]
    fn a_delivery_settled_otherwise_no_longer_holds_up_the_acks_above_it() {
        let now = Instant::now();
        let (mut state, _answers) = state(&[(3, None), (4, Some(now)), (5, None), (6, None)]);
        assert_eq!(shape(&state.take_due(now)), (None, vec![]));
        state.open.remove(&3);
        assert_eq!(shape(&state.take_due(now)), (Some((4, 1)), vec![]));
    }

    #[test]
    fn too_many_asks_waiting_for_one_delivery_go_at_once() {
        let now = Instant::now();
        // One delivery running, four waiting above it: more than a quarter of the five.
        let (mut state, _answers) = state(&[
            (1, None),
            (2, Some(now)),
            (3, Some(now)),
            (4, Some(now)),
            (5, Some(now)),
        ]);
        let flush = state.take_due(now);
        assert_eq!(shape(&flush), (None, vec![2, 3, 4, 5]));
        assert_eq!(flush.next_due, None);

        // One waiting among eight taken is within the share: it waits.
        let (mut fewer, _answers) = self::state(&[
            (1, None),
            (2, None),
            (3, None),
            (4, None),
            (5, None),
            (6, None),
            (7, None),
            (8, Some(now)),
        ]);
        let flush = fewer.take_due(now);
        assert_eq!(shape(&flush), (None, vec![]));
        assert_eq!(flush.next_due, Some(now + HOLD));
    }

    #[test]
    fn with_nothing_asked_there_is_nothing_to_send_or_wait_for() {
        let (mut state, _answers) = state(&[(1, None), (2, None)]);
        let flush = state.take_due(Instant::now());
        assert_eq!(shape(&flush), (None, vec![]));
        assert_eq!(flush.next_due, None);
        assert_eq!(state.open.len(), 2);
    }
}
