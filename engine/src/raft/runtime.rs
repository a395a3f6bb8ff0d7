//! openraft's `AsyncRuntime` on glommio (openraft feature `singlethreaded`: no `Send` bounds).
//!
//! openraft is written against a tokio-like runtime: it spawns its core loop and one task per
//! replication stream, sleeps, races futures against timeouts and hands results back through
//! oneshot channels. Here every one of those runs on the glommio `LocalExecutor` of the thread
//! that created the `Raft`, that is, on the core that owns the partition: no locks, no
//! cross-thread wake-ups, and Raft work is scheduled with the partition's own work.
//!
//! Two semantic differences from tokio are bridged:
//! - a glommio `JoinHandle` cancels its task when dropped; openraft drops handles of tasks
//!   that must keep running, so every spawned task is detached (`GJoinHandle`);
//! - glommio timers resolve to the `Instant` they fired at; openraft wants `()` (`GSleep`).

use futures::channel::oneshot;
use glommio::timer::Timer;
use openraft::async_runtime::AsyncOneshotSendExt;
use openraft::{AsyncRuntime, OptionalSend};
use std::fmt;
use std::future::Future;
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The runtime type named in walletd's `RaftTypeConfig`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GlommioRuntime;

/// A point in time for openraft (`openraft::Instant` is a foreign trait and
/// `std::time::Instant` a foreign type, hence the newtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GInstant(pub std::time::Instant);

impl Add<Duration> for GInstant {
    type Output = GInstant;
    fn add(self, d: Duration) -> GInstant {
        GInstant(self.0 + d)
    }
}

impl AddAssign<Duration> for GInstant {
    fn add_assign(&mut self, d: Duration) {
        self.0 += d
    }
}

impl Sub<Duration> for GInstant {
    type Output = GInstant;
    fn sub(self, d: Duration) -> GInstant {
        GInstant(self.0 - d)
    }
}

impl SubAssign<Duration> for GInstant {
    fn sub_assign(&mut self, d: Duration) {
        self.0 -= d
    }
}

impl Sub<GInstant> for GInstant {
    type Output = Duration;
    /// Saturates at zero: openraft subtracts instants taken in either order.
    fn sub(self, earlier: GInstant) -> Duration {
        self.0.saturating_duration_since(earlier.0)
    }
}

impl openraft::Instant for GInstant {
    fn now() -> Self {
        GInstant(std::time::Instant::now())
    }
}

/// A spawned task ended without a result. glommio reports cancellation and panic alike; a
/// panic unwinds through the executor (the core's thread ends), so one observed here is a
/// cancellation.
#[derive(Debug, PartialEq, Eq)]
pub struct JoinError;

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("glommio task cancelled")
    }
}

impl std::error::Error for JoinError {}

/// The handle of a *detached* glommio task: dropping it leaves the task running (tokio's
/// semantics, which openraft relies on); awaiting it yields the task's output.
pub struct GJoinHandle<T>(glommio::task::JoinHandle<T>);

impl<T> Future for GJoinHandle<T> {
    type Output = Result<T, JoinError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| r.ok_or(JoinError))
    }
}

/// A glommio timer that resolves to `()`.
pub struct GSleep(Timer);

impl Future for GSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// A future did not finish within its time limit.
#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed(pub Duration);

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timed out after {:?}", self.0)
    }
}

impl std::error::Error for Elapsed {}

pin_project_lite::pin_project! {
    /// `fut` raced against a timer. (glommio's own `timeout` is an `async fn`, whose type
    /// cannot be named in `AsyncRuntime::Timeout`, and wants a `glommio::Result`.)
    pub struct GTimeout<F> {
        #[pin]
        fut: F,
        timer: Timer,
        limit: Duration,
    }
}

impl<F: Future> Future for GTimeout<F> {
    type Output = Result<F::Output, Elapsed>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The future first: a result that is ready when the timer fires still counts.
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(this.timer).poll(cx) {
            Poll::Ready(_) => Poll::Ready(Err(Elapsed(*this.limit))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The sending half of openraft's oneshot channels.
pub struct GOneshotSender<T>(oneshot::Sender<T>);

impl<T> fmt::Debug for GOneshotSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GOneshotSender")
    }
}

impl<T> AsyncOneshotSendExt<T> for GOneshotSender<T> {
    fn send(self, t: T) -> Result<(), T> {
        self.0.send(t)
    }
}

/// Time left until `deadline` (zero once it passed).
fn until(deadline: GInstant) -> Duration {
    deadline
        .0
        .saturating_duration_since(std::time::Instant::now())
}

impl AsyncRuntime for GlommioRuntime {
    type JoinError = JoinError;
    type JoinHandle<T: OptionalSend + 'static> = GJoinHandle<T>;
    type Sleep = GSleep;
    type Instant = GInstant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = GTimeout<T>;
    type ThreadLocalRng = rand::rngs::ThreadRng;
    type OneshotSender<T: OptionalSend> = GOneshotSender<T>;
    type OneshotReceiverError = oneshot::Canceled;
    type OneshotReceiver<T: OptionalSend> = oneshot::Receiver<T>;

    /// Runs `future` on the current executor, in the current task queue, detached.
    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        GJoinHandle(glommio::spawn_local(future).detach())
    }

    fn sleep(d: Duration) -> GSleep {
        GSleep(Timer::new(d))
    }

    fn sleep_until(deadline: GInstant) -> GSleep {
        GSleep(Timer::new(until(deadline)))
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(limit: Duration, fut: F) -> GTimeout<F> {
        GTimeout {
            fut,
            timer: Timer::new(limit),
            limit,
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: GInstant,
        fut: F,
    ) -> GTimeout<F> {
        let limit = until(deadline);
        GTimeout {
            fut,
            timer: Timer::new(limit),
            limit,
        }
    }

    fn is_panic(_: &JoinError) -> bool {
        // See `JoinError`: a panic never reaches a handle.
        false
    }

    fn thread_rng() -> rand::rngs::ThreadRng {
        rand::thread_rng()
    }

    fn oneshot<T: OptionalSend>() -> (GOneshotSender<T>, oneshot::Receiver<T>) {
        let (tx, rx) = oneshot::channel();
        (GOneshotSender(tx), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;
    use openraft::Instant as _;
    use std::cell::Cell;
    use std::rc::Rc;

    fn on_executor(test: impl FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send + 'static) {
        LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(test)
            .expect("an executor")
            .join()
            .expect("the test ran");
    }

    #[test]
    fn a_dropped_handle_leaves_its_task_running() {
        on_executor(|| {
            Box::pin(async {
                let ran = Rc::new(Cell::new(false));
                let flag = ran.clone();
                drop(GlommioRuntime::spawn(async move {
                    GlommioRuntime::sleep(Duration::from_millis(5)).await;
                    flag.set(true);
                }));
                GlommioRuntime::sleep(Duration::from_millis(30)).await;
                assert!(ran.get(), "openraft drops handles of tasks that must go on");
                let value = GlommioRuntime::spawn(async { 7 }).await;
                assert_eq!(value, Ok(7));
            })
        });
    }

    #[test]
    fn timeouts_race_the_future_against_the_clock() {
        on_executor(|| {
            Box::pin(async {
                let started = GInstant::now();
                let late = GlommioRuntime::timeout(
                    Duration::from_millis(10),
                    GlommioRuntime::sleep(Duration::from_secs(5)),
                )
                .await;
                assert_eq!(late, Err(Elapsed(Duration::from_millis(10))));
                let waited = GInstant::now() - started;
                assert!(waited >= Duration::from_millis(10), "{waited:?}");
                assert!(waited < Duration::from_secs(1), "{waited:?}");

                let quick =
                    GlommioRuntime::timeout_at(GInstant::now() + Duration::from_secs(5), async {
                        3
                    })
                    .await;
                assert_eq!(quick, Ok(3));

                let before = GInstant::now();
                GlommioRuntime::sleep_until(before + Duration::from_millis(5)).await;
                assert!(GInstant::now() - before >= Duration::from_millis(5));
                // Instants subtract in either order without panicking.
                assert_eq!(before - GInstant::now(), Duration::ZERO);
            })
        });
    }

    #[test]
    fn oneshots_deliver_once_and_report_a_dropped_sender() {
        on_executor(|| {
            Box::pin(async {
                let (tx, rx) = GlommioRuntime::oneshot::<u32>();
                GlommioRuntime::spawn(async move {
                    let _ = tx.send(42);
                });
                assert_eq!(rx.await, Ok(42));
                let (tx, rx) = GlommioRuntime::oneshot::<u32>();
                drop(tx);
                assert!(rx.await.is_err());
            })
        });
    }
}
