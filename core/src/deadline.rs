//! Shard-local coarse deadlines for the waits on the request path (head,
//! body, idle keep-alive, upstream first byte, reads and writes).
//!
//! Every such wait needs a limit, but almost none reaches it, and at tens of
//! thousands of requests per second an exact timer per wait (a clock read to
//! create it, a sorted-map insert when the wait blocks, a removal when it
//! ends) cost ~3% of the gateway's CPU. These limits are seconds long; a
//! [`RESOLUTION`] of slack is immaterial. So a deadline is a slot in a
//! timing wheel counted in ticks: registering it reads no clock and does
//! O(1) work, dropping it is O(1), and one ticker task per shard, running
//! only while deadlines exist (100 wakeups a second while deadlines come
//! and go, a few microseconds each), advances the wheel and wakes what
//! expired. A tick in which nothing was registered (a shard holding only
//! idle keep-alive connections) sends the ticker to sleep until the
//! earliest deadline; while it sleeps, a registration takes the time from
//! the executor's latest clock reading (at most a turn old, so no clock
//! read of its own) and wakes it when it is due sooner, so an idle shard
//! costs no CPU. Side by side (64 connections) this bought about 1% more
//! requests per second; taking the limits away altogether would have
//! bought 3%.
//!
//! Invariants: ticks are counted from the clock (the executor's readings of
//! it, each at most a turn old), not from sleeps. A deadline
//! is registered against the wheel's last tick, rounded up and given two
//! ticks of margin, so it fires between its duration and three
//! [`RESOLUTION`]s later, provided the shard's event loop turns at least once
//! per tick (a shard stalled longer fires deadlines early by the stall, as
//! waits measured from a stale clock would). Thread-local: a glommio shard is
//! one thread, and nothing here is shared.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Tick length; deadlines fire up to three of these late.
pub const RESOLUTION: Duration = Duration::from_millis(10);

/// Wheel size in ticks; longer deadlines go around more than once.
const SLOTS: usize = 512;

const RESOLUTION_NANOS: u64 = RESOLUTION.as_nanos() as u64;

/// `d` in nanoseconds as a u64, which ticks are computed in (a 128-bit
/// division is a library call, and it runs per wait); past 584 years it
/// saturates.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs `fut` until `dur` has passed; `Err(TimedOut)` after that (up to three
/// [`RESOLUTION`]s later), under a deadline of its own. Must run inside a
/// glommio executor.
pub fn with_timeout<T>(
    dur: Duration,
    fut: impl Future<Output = io::Result<T>>,
) -> impl Future<Output = io::Result<T>> {
    wait(None, dur, fut, false)
}

/// [`with_timeout`] for a connection's wait for its next request, which
/// ends as well, with `Err(TimedOut)`, once [`end_idle_waits`] is called
/// (a stopping shard closes its idle connections). Riding on the wait's
/// deadline entry, that costs the wait nothing: a separate shutdown signal
/// raced against it was a registration and a removal (a waker clone and
/// drop) per request.
pub fn with_idle_timeout<T>(
    dur: Duration,
    fut: impl Future<Output = io::Result<T>>,
) -> impl Future<Output = io::Result<T>> {
    wait(None, dur, fut, true)
}

/// Ends every idle wait ([`with_idle_timeout`]) on this thread now, and
/// every later one as soon as it blocks: for the rest of the thread's life,
/// which for a shard's thread ends with its drain.
pub fn end_idle_waits() {
    let woken: Vec<Waker> = WHEEL.with(|w| {
        let mut w = w.borrow_mut();
        w.idle_ended = true;
        w.entries
            .iter_mut()
            .flatten()
            .filter(|e| e.idle && !e.fired)
            .map(|e| {
                e.fired = true;
                e.waker.clone()
            })
            .collect()
    });
    woken.into_iter().for_each(Waker::wake);
}

/// One deadline for a run of waits of one kind, each limited to `dur` from
/// its own start: a stream's reads, one per event. The first wait that
/// blocks registers it; each later one moves it back, which is a store (the
/// ticker moves the entry to its new slot when it reaches the old one),
/// where a [`with_timeout`] per wait registers and drops an entry each
/// time. Between waits the entry stays registered and cannot end a wait:
/// one that came due meanwhile is armed again by the next wait.
#[derive(Debug, Default)]
pub struct Idle {
    deadline: Option<Deadline>,
}

impl Idle {
    /// Runs `fut` until `dur` has passed; `Err(TimedOut)` after that (up to
    /// three [`RESOLUTION`]s later).
    pub fn wait<'a, T: 'a>(
        &'a mut self,
        dur: Duration,
        fut: impl Future<Output = io::Result<T>> + 'a,
    ) -> impl Future<Output = io::Result<T>> + 'a {
        wait(&mut self.deadline, dur, fut, false)
    }
}

/// `fut` within `dur`, under `deadline` (a wait's own, or an [`Idle`]'s):
/// registered, or moved back when there is one, the first time `fut` is
/// pending. `idle`: [`end_idle_waits`] ends it too.
async fn wait<T>(
    mut deadline: impl std::borrow::BorrowMut<Option<Deadline>>,
    dur: Duration,
    fut: impl Future<Output = io::Result<T>>,
    idle: bool,
) -> io::Result<T> {
    let deadline = std::borrow::BorrowMut::borrow_mut(&mut deadline);
    let mut fut = pin!(fut);
    let mut armed = false;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        if !armed {
            armed = true;
            match deadline {
                Some(d) => d.rearm(dur, cx.waker()),
                None => *deadline = Some(Deadline::register(dur, cx.waker(), idle)),
            }
        } else if deadline.as_ref().is_some_and(|d| d.expired(cx.waker())) {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")));
        }
        Poll::Pending
    })
    .await
}

/// The wheel's clock: the time of its last tick while the ticker ticks
/// (then between zero and two [`RESOLUTION`]s behind the real clock),
/// otherwise the executor's latest clock reading. For ages checked against limits of seconds
/// (how long a pooled connection has been idle), where a clock read per
/// request is measurable and ticks of slack are not.
pub fn coarse_now() -> Instant {
    WHEEL.with(|w| {
        let mut w = w.borrow_mut();
        w.catch_up();
        let epoch = w.epoch.unwrap_or_else(Instant::now);
        epoch + Duration::from_nanos(w.tick.saturating_mul(RESOLUTION_NANOS))
    })
}

struct Entry {
    /// The tick at or after which it expires.
    due: u64,
    waker: Waker,
    fired: bool,
    /// Ended by [`end_idle_waits`] as well.
    idle: bool,
    /// Tells a reused slab index from the entry a wheel slot remembers.
    generation: u32,
}

#[derive(Default)]
struct Wheel {
    /// Ticks since `epoch`, as of the last clock read.
    tick: u64,
    /// The last tick whose slot the ticker has swept (at most `tick`).
    swept: u64,
    /// Something was registered since the ticker last looked.
    registered: bool,
    /// The ticker sleeps until tick `wake_at` (nothing was registered for a
    /// tick): `tick` is not kept current meanwhile.
    sleeping: bool,
    wake_at: u64,
    /// Set (and the ticker woken) by a registration due before `wake_at`.
    nudged: bool,
    ticker: Option<Waker>,
    epoch: Option<Instant>,
    /// Live and free entries; `free` lists the free indices.
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    live: usize,
    /// Per slot: (entry index, generation) registered for a tick that maps
    /// there. Stale pairs (dropped entries) are skipped when the slot comes.
    slots: Vec<Vec<(usize, u32)>>,
    next_generation: u32,
    ticker_running: bool,
    /// [`end_idle_waits`] was called: idle entries are born fired.
    idle_ended: bool,
}

thread_local! {
    static WHEEL: RefCell<Wheel> = RefCell::new(Wheel::default());
}

/// A registered deadline; dropping it unregisters.
#[derive(Debug)]
struct Deadline {
    index: usize,
    generation: u32,
}

impl Deadline {
    fn register(dur: Duration, waker: &Waker, idle: bool) -> Deadline {
        let (deadline, start_ticker) = WHEEL.with(|w| {
            let mut w = w.borrow_mut();
            w.catch_up();
            w.registered = true;
            let due = w.due_in(dur);
            let generation = w.next_generation;
            w.next_generation = w.next_generation.wrapping_add(1);
            let fired = idle && w.idle_ended;
            if fired {
                waker.wake_by_ref();
            }
            let entry = Entry {
                due,
                waker: waker.clone(),
                fired,
                idle,
                generation,
            };
            let index = match w.free.pop() {
                Some(i) => {
                    w.entries[i] = Some(entry);
                    i
                }
                None => {
                    w.entries.push(Some(entry));
                    w.entries.len() - 1
                }
            };
            w.live += 1;
            w.place(index, generation, due);
            let start = !w.ticker_running;
            w.ticker_running = true;
            (Deadline { index, generation }, start)
        });
        if start_ticker {
            glommio::spawn_local(ticker()).detach();
        }
        deadline
    }

    /// True once expired; otherwise keeps `waker` as the one to wake.
    fn expired(&self, waker: &Waker) -> bool {
        WHEEL.with(|w| {
            let mut w = w.borrow_mut();
            match w.entries.get_mut(self.index) {
                Some(Some(e)) if e.generation == self.generation => {
                    if !e.fired && !e.waker.will_wake(waker) {
                        e.waker = waker.clone();
                    }
                    e.fired
                }
                _ => false,
            }
        })
    }

    /// Due `dur` from now instead, with `waker` to wake. A later due is
    /// only stored: the entry stays in the slot of its earlier due, and the
    /// sweep that reaches that slot moves it on. A fired entry, or a due
    /// sooner than the stored one, goes into its slot as registering does.
    fn rearm(&self, dur: Duration, waker: &Waker) {
        WHEEL.with(|w| {
            let mut w = w.borrow_mut();
            w.catch_up();
            let due = w.due_in(dur);
            let Some(Some(e)) = w.entries.get_mut(self.index) else {
                return;
            };
            if e.generation != self.generation {
                return;
            }
            if !e.waker.will_wake(waker) {
                e.waker = waker.clone();
            }
            if !e.fired && due >= e.due {
                e.due = due;
                return;
            }
            // A pair left in a later slot finds the entry fired, or due
            // sooner, when its slot comes, and is dropped or moved then.
            e.fired = false;
            e.due = due;
            w.registered = true;
            w.place(self.index, self.generation, due);
        });
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        WHEEL.with(|w| {
            let mut w = w.borrow_mut();
            let ours = matches!(
                w.entries.get(self.index),
                Some(Some(e)) if e.generation == self.generation
            );
            if ours {
                w.entries[self.index] = None;
                w.free.push(self.index);
                w.live -= 1;
            }
        });
    }
}

impl Wheel {
    /// Brings `tick` to the clock when no ticker keeps it current: the
    /// ticker is stopped (nothing is live, so nothing is left to sweep) or
    /// asleep. While it ticks, `tick` is at most a tick behind and no
    /// clock is read.
    fn catch_up(&mut self) {
        if !self.ticker_running {
            self.advance_to_now();
            self.swept = self.tick;
        } else if self.sleeping {
            self.advance_to_now();
        }
    }

    /// The tick a deadline `dur` from now is due at. The current tick is
    /// partly over, and the ticker may be up to a tick behind the clock:
    /// two ticks of margin.
    fn due_in(&self, dur: Duration) -> u64 {
        let ticks = nanos(dur).div_ceil(RESOLUTION_NANOS);
        self.tick.saturating_add(ticks).saturating_add(2)
    }

    /// Puts an entry in the slot of its due tick, waking a sleeping ticker
    /// that would otherwise sleep past it.
    fn place(&mut self, index: usize, generation: u32, due: u64) {
        if self.slots.is_empty() {
            self.slots = (0..SLOTS).map(|_| Vec::new()).collect();
        }
        self.slots[(due % SLOTS as u64) as usize].push((index, generation));
        if self.sleeping && due < self.wake_at && !self.nudged {
            self.nudged = true;
            if let Some(t) = self.ticker.take() {
                t.wake();
            }
        }
    }

    /// Reads the executor's latest clock reading, not the clock: at most a
    /// turn old, which the two ticks of margin absorb (a turn longer than
    /// a tick is a stall, as above), and on a stream's every event or a
    /// slow shard's every request a clock read would cost more than the
    /// rest of the wheel's work.
    fn advance_to_now(&mut self) {
        let now = glommio::executor()
            .recent_instant()
            .unwrap_or_else(Instant::now);
        let epoch = *self.epoch.get_or_insert(now);
        // Most reads fall in the tick of the last one: one comparison.
        if now < epoch + Duration::from_nanos((self.tick + 1) * RESOLUTION_NANOS) {
            return;
        }
        self.tick = nanos(now.saturating_duration_since(epoch)) / RESOLUTION_NANOS;
    }

    /// Moves to the clock's tick, collecting the wakers of what expired.
    fn advance(&mut self, woken: &mut Vec<Waker>) {
        let from = self.swept;
        self.advance_to_now();
        let to = self.tick;
        self.swept = to;
        if self.slots.is_empty() {
            return;
        }
        // A long stall visits every slot once, not once per missed tick.
        let span = (to - from).min(SLOTS as u64);
        for t in (to - span + 1)..=to {
            let here = (t % SLOTS as u64) as usize;
            let slot = std::mem::take(&mut self.slots[here]);
            let mut keep = Vec::new();
            for (index, generation) in slot {
                let Some(Some(e)) = self.entries.get_mut(index) else {
                    continue;
                };
                if e.generation != generation || e.fired {
                    continue;
                }
                if e.due <= to {
                    e.fired = true;
                    woken.push(e.waker.clone());
                    continue;
                }
                // Due on a later lap of the wheel, or moved back since it
                // was put here ([`Deadline::rearm`]).
                match (e.due % SLOTS as u64) as usize {
                    there if there == here => keep.push((index, generation)),
                    there => self.slots[there].push((index, generation)),
                }
            }
            // Each tick of the span has its own slot, and a pair moved on
            // goes to another: nothing was put in this one meanwhile.
            self.slots[here] = keep;
        }
    }

    /// The earliest tick a live deadline is due at: the slots are visited
    /// in order from the next unswept tick, one lap at most, so the cost is
    /// the wheel's size and the live entries, never the slab's high water.
    fn earliest_due(&self) -> Option<u64> {
        if self.slots.is_empty() {
            return None;
        }
        let mut later: Option<u64> = None;
        for t in self.swept + 1..=self.swept + SLOTS as u64 {
            for &(index, generation) in &self.slots[(t % SLOTS as u64) as usize] {
                let Some(Some(e)) = self.entries.get(index) else {
                    continue;
                };
                if e.generation != generation || e.fired {
                    continue;
                }
                // Unswept entries are due after `swept`: in this slot, on
                // this lap, only at `t` itself, and then nothing is sooner.
                if e.due <= t {
                    return Some(e.due);
                }
                later = Some(later.map_or(e.due, |m| m.min(e.due)));
            }
        }
        later
    }
}

/// What the ticker does after a tick.
enum Next {
    Tick,
    /// Nothing was registered during the tick: sleep this long, unless a
    /// registration due sooner wakes it.
    Sleep(Duration),
    Stop,
}

/// Advances the wheel every tick while deadlines come and go; sleeps until
/// the earliest one while none are registered; stops when none is left
/// (the next registration starts it again).
async fn ticker() {
    let mut woken = Vec::new();
    loop {
        glommio::timer::sleep(RESOLUTION).await;
        let next = WHEEL.with(|w| {
            let mut w = w.borrow_mut();
            w.advance(&mut woken);
            if w.live == 0 {
                w.ticker_running = false;
                // Slots hold only stale pairs now.
                w.slots.iter_mut().for_each(Vec::clear);
                return Next::Stop;
            }
            if std::mem::take(&mut w.registered) {
                return Next::Tick;
            }
            match w.earliest_due() {
                Some(due) if due > w.tick + 1 => {
                    w.sleeping = true;
                    w.nudged = false;
                    w.wake_at = due;
                    Next::Sleep(RESOLUTION * (due - w.tick - 1) as u32)
                }
                _ => Next::Tick,
            }
        });
        for waker in woken.drain(..) {
            waker.wake();
        }
        match next {
            Next::Stop => return,
            Next::Tick => {}
            Next::Sleep(dur) => {
                let nudged = std::future::poll_fn(|cx| {
                    WHEEL.with(|w| {
                        let mut w = w.borrow_mut();
                        if w.nudged {
                            Poll::Ready(())
                        } else {
                            w.ticker = Some(cx.waker().clone());
                            Poll::Pending
                        }
                    })
                });
                futures_lite::future::or(nudged, glommio::timer::sleep(dur)).await;
                WHEEL.with(|w| {
                    let mut w = w.borrow_mut();
                    // Ticking again: until the next sweep, registrations
                    // and `coarse_now` read `tick`, which must be current.
                    w.advance_to_now();
                    w.sleeping = false;
                    w.nudged = false;
                    w.ticker = None;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;

    fn run<T>(f: impl Future<Output = T> + 'static) -> T {
        LocalExecutorBuilder::default()
            .make()
            .expect("executor")
            .run(f)
    }

    #[test]
    fn never_fires_before_its_duration() {
        run(async {
            for ms in [0u64, 5, 30, 120] {
                let start = Instant::now();
                let r: io::Result<()> =
                    with_timeout(Duration::from_millis(ms), std::future::pending()).await;
                let took = start.elapsed();
                assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
                assert!(
                    took >= Duration::from_millis(ms),
                    "{ms} ms fired after {took:?}"
                );
            }
        });
    }

    #[test]
    fn a_ready_future_wins_and_leaves_nothing_behind() {
        run(async {
            let r = with_timeout(Duration::from_millis(50), async {
                glommio::timer::sleep(Duration::from_millis(5)).await;
                Ok(7)
            })
            .await;
            assert_eq!(r.unwrap(), 7);
            assert_eq!(WHEEL.with(|w| w.borrow().live), 0);
            // The ticker stops once nothing is registered, and a later
            // deadline starts it again.
            glommio::timer::sleep(RESOLUTION * 3).await;
            assert!(!WHEEL.with(|w| w.borrow().ticker_running));
            let r: io::Result<()> =
                with_timeout(Duration::from_millis(20), std::future::pending()).await;
            assert!(r.is_err());
        });
    }

    /// A stream's reads: each wait has its own limit, however long the run
    /// of waits, and time spent between waits counts against none.
    #[test]
    fn an_idle_deadline_limits_each_wait_of_a_run_not_the_run() {
        run(async {
            let mut idle = Idle::default();
            let ms = Duration::from_millis;
            let quick = || async {
                glommio::timer::sleep(Duration::from_millis(20)).await;
                Ok(())
            };
            // Eight 20 ms waits under a 50 ms limit: 160 ms in all.
            for _ in 0..8 {
                idle.wait(ms(50), quick()).await.unwrap();
            }
            // Past the limit between waits: the next wait still has 50 ms.
            glommio::timer::sleep(ms(90)).await;
            idle.wait(ms(50), quick()).await.unwrap();
            // One wait longer than the limit ends with it.
            let start = Instant::now();
            let r: io::Result<()> = idle.wait(ms(50), std::future::pending()).await;
            assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
            let took = start.elapsed();
            assert!(took >= ms(50) && took < ms(300), "fired after {took:?}");
            // And the run goes on after a timeout.
            idle.wait(ms(50), quick()).await.unwrap();
            let r: io::Result<()> = idle.wait(ms(30), std::future::pending()).await;
            assert!(r.is_err());
            drop(idle);
            assert_eq!(WHEEL.with(|w| w.borrow().live), 0);
        });
    }

    /// Shutdown ends the idle waits (a connection's wait for its next
    /// request), at once and from then on, and no other wait.
    #[test]
    fn ending_idle_waits_ends_those_and_only_those() {
        run(async {
            let ms = Duration::from_millis;
            let idle = glommio::spawn_local(async move {
                let r: io::Result<()> = with_idle_timeout(ms(60_000), std::future::pending()).await;
                r.unwrap_err().kind()
            });
            let busy = glommio::spawn_local(async move {
                with_timeout(ms(200), async {
                    glommio::timer::sleep(ms(100)).await;
                    Ok(())
                })
                .await
            });
            glommio::timer::sleep(ms(20)).await;
            let start = Instant::now();
            end_idle_waits();
            assert_eq!(idle.await, io::ErrorKind::TimedOut);
            assert!(start.elapsed() < ms(50), "took {:?}", start.elapsed());
            busy.await.unwrap();
            // An idle wait that blocks later ends at once; one that does
            // not block is not cut.
            let r: io::Result<()> = with_idle_timeout(ms(60_000), std::future::pending()).await;
            assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
            assert_eq!(
                with_idle_timeout(ms(60_000), async { Ok(3) })
                    .await
                    .unwrap(),
                3
            );
            assert!(start.elapsed() < ms(500));
        });
    }

    #[test]
    fn many_deadlines_each_fire_once_in_order_of_length() {
        run(async {
            let order = std::rc::Rc::new(RefCell::new(Vec::new()));
            let tasks: Vec<_> = [80u64, 10, 40, 5_500, 20]
                .into_iter()
                .map(|ms| {
                    let order = order.clone();
                    glommio::spawn_local(async move {
                        let r: io::Result<()> =
                            with_timeout(Duration::from_millis(ms), std::future::pending()).await;
                        assert!(r.is_err());
                        order.borrow_mut().push(ms);
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
            // 5.5 s goes around the 5.12 s wheel once more before firing.
            assert_eq!(*order.borrow(), [10, 20, 40, 80, 5_500]);
        });
    }

    #[test]
    fn an_idle_wheel_sleeps_and_a_sooner_deadline_wakes_it() {
        run(async {
            let long = glommio::spawn_local(async {
                let start = Instant::now();
                let r: io::Result<()> =
                    with_timeout(Duration::from_millis(600), std::future::pending()).await;
                assert!(r.is_err());
                start.elapsed()
            });
            // A tick with no registration: the ticker sleeps until the
            // long deadline instead of ticking.
            glommio::timer::sleep(RESOLUTION * 4).await;
            assert!(WHEEL.with(|w| w.borrow().sleeping));
            let start = Instant::now();
            let r: io::Result<()> =
                with_timeout(Duration::from_millis(30), std::future::pending()).await;
            assert!(r.is_err());
            let took = start.elapsed();
            assert!(
                took >= Duration::from_millis(30) && took < Duration::from_millis(300),
                "a 30 ms deadline registered while the ticker slept fired after {took:?}"
            );
            let took = long.await;
            assert!(
                took >= Duration::from_millis(600) && took < Duration::from_millis(900),
                "600 ms fired after {took:?}"
            );
            assert!(coarse_now() <= Instant::now());
        });
    }

    #[test]
    fn a_deadline_registered_as_the_ticker_wakes_from_its_sleep_is_on_time() {
        run(async {
            let keep = glommio::spawn_local(async {
                let r: io::Result<()> =
                    with_timeout(Duration::from_millis(300), std::future::pending()).await;
                assert!(r.is_err());
            });
            glommio::timer::sleep(RESOLUTION * 3).await;
            assert!(WHEEL.with(|w| w.borrow().sleeping));
            // Wait for the sleep to end on its timer (the ticker wakes a
            // tick before the long deadline is due), then register.
            while WHEEL.with(|w| w.borrow().sleeping) {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            let before = coarse_now();
            assert!(Instant::now().duration_since(before) < RESOLUTION * 3);
            let start = Instant::now();
            let r: io::Result<()> =
                with_timeout(Duration::from_millis(100), std::future::pending()).await;
            assert!(r.is_err());
            assert!(
                start.elapsed() >= Duration::from_millis(100),
                "a 100 ms deadline fired after {:?}",
                start.elapsed()
            );
            keep.await;
        });
    }
}
