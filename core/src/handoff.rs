//! The hand-off from shards to a writer thread (audit, usage): a crossbeam
//! channel whose receiver sleeps without spinning.
//!
//! crossbeam's blocking `recv` backs off before it parks: about a hundred
//! spins, then four `sched_yield`s. Under `taskset` a writer shares its CPU
//! with a shard, so each yield hands the CPU to the shard and back: two
//! context switches each, eight for every batch the writer waits for. That
//! cost the audit writer about 40 us a batch (0.5 us a request at 8k
//! requests a second). Here the receiver checks the queue once and parks;
//! a sender rings a doorbell after each send, which costs an atomic load
//! unless the receiver is parked, and one `unpark` when it is.
//!
//! Lock-free on the send side: the doorbell is an atomic flag; `unpark` is
//! a futex wake only when the receiver sleeps.

use crossbeam::channel::{self, RecvTimeoutError, TryRecvError, TrySendError};
use std::mem::ManuallyDrop;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Set while the receiver sleeps (or is about to); the thread it sleeps on;
/// the senders left (crossbeam's `is_empty` does not say whether the
/// channel is disconnected, and a receiver must not sleep on a channel no
/// one can send on).
#[derive(Debug, Default)]
struct Doorbell {
    asleep: AtomicBool,
    thread: OnceLock<Thread>,
    senders: AtomicUsize,
}

impl Doorbell {
    /// After a send (or a sender's drop): wakes the receiver when it
    /// sleeps. The fence pairs with the one in [`Receiver::sleep`]: either
    /// the receiver sees the message, or this sees it asleep.
    fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::Relaxed) && self.asleep.swap(false, Ordering::AcqRel) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }
}

pub fn bounded<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    wrap(channel::bounded(cap))
}

pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    wrap(channel::unbounded())
}

fn wrap<T>((tx, rx): (channel::Sender<T>, channel::Receiver<T>)) -> (Sender<T>, Receiver<T>) {
    let bell = Arc::new(Doorbell {
        senders: AtomicUsize::new(1),
        ..Doorbell::default()
    });
    (
        Sender {
            tx: ManuallyDrop::new(tx),
            bell: bell.clone(),
        },
        Receiver { rx, bell },
    )
}

#[derive(Debug)]
pub struct Sender<T> {
    /// Dropped by hand, before the ring: see the `Drop`.
    tx: ManuallyDrop<channel::Sender<T>>,
    bell: Arc<Doorbell>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.bell.senders.fetch_add(1, Ordering::Relaxed);
        Sender {
            tx: ManuallyDrop::new((*self.tx).clone()),
            bell: self.bell.clone(),
        }
    }
}

impl<T> Sender<T> {
    /// Blocks only on a full bounded channel (never on an unbounded one).
    pub fn send(&self, msg: T) -> Result<(), T> {
        let sent = self.tx.send(msg).map_err(|e| e.into_inner());
        self.bell.ring();
        sent
    }

    pub fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        self.tx.try_send(msg)?;
        self.bell.ring();
        Ok(())
    }
}

/// A dropped sender may be the last: the receiver wakes to see the channel
/// disconnected rather than sleeping on. The channel's sender goes first,
/// so that the receiver, once woken, finds it gone.
impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        // SAFETY: dropped once, here; `self.tx` is not used after.
        unsafe { ManuallyDrop::drop(&mut self.tx) };
        self.bell.senders.fetch_sub(1, Ordering::SeqCst);
        self.bell.ring();
    }
}

/// Used from one thread: the thread that first sleeps on it is the one a
/// send wakes.
#[derive(Debug)]
pub struct Receiver<T> {
    rx: channel::Receiver<T>,
    bell: Arc<Doorbell>,
}

impl<T> Receiver<T> {
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.rx.try_recv()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// The next message; sleeps until one comes or `deadline` passes (no
    /// deadline: until one comes or every sender is gone).
    pub fn recv_until(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        loop {
            match self.rx.try_recv() {
                Ok(m) => return Ok(m),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(RecvTimeoutError::Timeout),
                },
                None => None,
            };
            self.sleep(left);
        }
    }

    pub fn recv_timeout(&self, wait: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_until(Instant::now().checked_add(wait))
    }

    /// Parks unless something is queued or every sender is gone; may
    /// return early (a stale unpark), which callers loop over.
    fn sleep(&self, left: Option<Duration>) {
        let bell = &self.bell;
        bell.thread.get_or_init(std::thread::current);
        bell.asleep.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.rx.is_empty() && bell.senders.load(Ordering::Relaxed) > 0 {
            match left {
                Some(d) => std::thread::park_timeout(d),
                None => std::thread::park(),
            }
        }
        bell.asleep.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sleeping receiver wakes for a send from another thread, for
    /// its deadline, and when the last sender goes.
    #[test]
    #[allow(clippy::disallowed_methods)] // test threads, not shards
    fn a_receiver_wakes_for_a_send_a_deadline_and_the_last_sender_leaving() {
        let (tx, rx) = unbounded::<u32>();
        let t = std::thread::spawn(move || {
            for i in 0..1000 {
                tx.send(i).unwrap();
                if i % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        for i in 0..1000 {
            assert_eq!(rx.recv_until(None), Ok(i));
        }
        t.join().unwrap();
        assert_eq!(rx.recv_until(None), Err(RecvTimeoutError::Disconnected));

        let (tx, rx) = bounded::<u32>(1);
        let started = Instant::now();
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(20)),
            Err(RecvTimeoutError::Timeout)
        );
        assert!(started.elapsed() >= Duration::from_millis(20));
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(tx);
        });
        assert_eq!(rx.recv_until(None), Err(RecvTimeoutError::Disconnected));
        t.join().unwrap();
    }
}
