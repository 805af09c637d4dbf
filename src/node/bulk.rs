//! Where the CPU work of large packets runs. Checking, the policy walk, signing and encrypting a
//! packet of megabytes (and opening and checking one on arrival, reading a sealed copy back from
//! its segment, parsing an API draft of megabytes) take milliseconds of CPU each. On the async
//! workers, or on threads of the same priority, they make a FLASH alert wait for a core: on this
//! project's 2-core machine, a FLASH commit's `fsync` returned within a millisecond but its
//! thread then waited up to 8 ms to run again, behind the bulk's crypto.
//!
//! So URGENT and ROUTINE work of that size runs here: a few threads at a lower scheduling
//! priority (10 `nice` steps below the node's own, at most 19, on Linux). Under the kernel's
//! fair scheduler that is a weight about ten times smaller, not a strict priority: when the
//! async workers, the store's writer and the network want a core they get most of it at once,
//! and bulk gets what is left. Jobs are taken URGENT first, then ROUTINE, in order within each;
//! a job whose caller stopped waiting is dropped unrun. FLASH work, however large, is never
//! niced: it runs on tokio's blocking pool at the node's priority. Small work ([`LARGE`]) stays
//! where it is: a hop to another thread would cost more than the work.
//!
//! Decision: the threads are the process's (one pool for every node in it), as many as the
//! machine has cores, at most 8; if the OS refuses the lower priority the pool still runs, at
//! normal priority, and says so once in the log.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Condvar, Mutex, OnceLock};

use tracing::warn;

use crate::markings::Priority;

/// Packets at least this large (CBOR) are checked, sealed and read back on the pool: hashing,
/// signing and encrypting 4 MiB takes milliseconds, and a FLASH alert's tasks must not wait for
/// a core that long.
pub(crate) const LARGE: usize = 64 * 1024;

/// How much lower than the node's own threads the pool's run (`nice` steps; 19 at most).
const NICE: i32 = 10;

/// Jobs a line holds at most, waiting, for [`run_bounded`]: an API draft may be 16 MiB, and
/// clients that post large drafts and hang up would otherwise queue memory without a bound.
/// Beyond it the draft is refused as [`BulkError::Busy`] (503). The node's own work is not
/// bounded here: a receive batch is already within the partner's memory budget, a submit within
/// the API's.
const QUEUED_AT_MOST: usize = 64;

type Job = Box<dyn FnOnce() + Send>;

/// The queue: URGENT's line, then ROUTINE's.
struct Queue {
    lines: Mutex<[VecDeque<Job>; 2]>,
    ready: Condvar,
}

/// Why work given to the pool has no result.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// The work panicked (a bug); the pool goes on.
    #[error("the work on a large packet failed (a panic; see the log)")]
    Panicked,
    /// The work was dropped unrun (it cannot be: the pool's threads never stop; kept as an error
    /// rather than a panic all the same).
    #[error("the bulk work pool did not answer")]
    Stopped,
    /// As many large drafts are already waiting as the node takes ([`QUEUED_AT_MOST`]).
    #[error("the node is busy with large packets; try again shortly")]
    Busy,
}

/// The line of non-FLASH work.
fn line(p: Priority) -> usize {
    usize::from(p == Priority::Routine)
}

/// The process's pool, started on first use; `None` if no thread could be started (then work
/// runs where it is asked for, as before the pool).
fn queue() -> Option<&'static Queue> {
    static QUEUE: OnceLock<Option<&'static Queue>> = OnceLock::new();
    *QUEUE.get_or_init(|| {
        let q: &'static Queue =
            Box::leak(Box::new(Queue { lines: Mutex::new(Default::default()), ready: Condvar::new() }));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
        let mut started = 0;
        for i in 0..threads {
            let spawned = std::thread::Builder::new().name(format!("liaison-bulk-{i}")).spawn(move || {
                if let Err(e) = lower_priority() {
                    if i == 0 {
                        warn!(error = %e, "bulk work runs at normal priority: the OS refused a lower one");
                    }
                }
                work(q);
            });
            started += usize::from(spawned.is_ok());
        }
        (started > 0).then_some(q)
    })
}

/// A pool thread: takes the most urgent job, runs it, forever.
fn work(q: &Queue) {
    loop {
        let job = {
            let mut lines = q.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            loop {
                if let Some(job) = take(&mut lines) {
                    break job;
                }
                lines = q.ready.wait(lines).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        job();
    }
}

/// Adds `job` to the line of `priority`, unless the line holds `at_most` jobs already.
fn enqueue(q: &Queue, priority: Priority, job: Job, at_most: usize) -> Result<(), BulkError> {
    let mut lines = q.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let line = &mut lines[line(priority)];
    if line.len() >= at_most {
        return Err(BulkError::Busy);
    }
    line.push_back(job);
    Ok(())
}

/// The next job: the oldest of the most urgent line that has one.
fn take(lines: &mut [VecDeque<Job>; 2]) -> Option<Job> {
    lines.iter_mut().find_map(VecDeque::pop_front)
}

#[cfg(target_os = "linux")]
fn lower_priority() -> std::io::Result<()> {
    // On Linux, a thread's nice value is its own: PRIO_PROCESS with the thread's id. A new
    // thread starts at its creator's (a runtime worker's: the node's), which this lowers.
    let me = Some(rustix::thread::gettid());
    let own = rustix::process::getpriority_process(me)?;
    Ok(rustix::process::setpriority_process(me, (own + NICE).min(19))?)
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "per-thread priority is set on Linux only"))
}

/// Runs `f` off the async workers and waits for it: FLASH work on tokio's blocking pool at the
/// node's priority, other work on the pool, in the line of `priority`. A panic in `f` is
/// [`BulkError::Panicked`]. If the caller stops waiting before `f` starts, `f` is dropped unrun
/// (a client that hung up leaves no work queued behind it).
pub(crate) async fn run<T, F>(priority: Priority, f: F) -> Result<T, BulkError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    run_within(priority, f, usize::MAX).await
}

/// [`run`], refused as [`BulkError::Busy`] if the line already holds [`QUEUED_AT_MOST`] jobs.
pub(crate) async fn run_bounded<T, F>(priority: Priority, f: F) -> Result<T, BulkError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    run_within(priority, f, QUEUED_AT_MOST).await
}

async fn run_within<T, F>(priority: Priority, f: F, at_most: usize) -> Result<T, BulkError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let q = match queue() {
        Some(q) if priority != Priority::Flash => q,
        _ => return tokio::task::spawn_blocking(f).await.map_err(|_| BulkError::Panicked),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        if tx.is_closed() {
            return;
        }
        let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
    });
    enqueue(q, priority, job, at_most)?;
    q.ready.notify_one();
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(BulkError::Panicked),
        Err(_) => Err(BulkError::Stopped),
    }
}

/// [`run`] if `large`, else `f` here and now.
pub(crate) async fn run_if<T, F>(large: bool, priority: Priority, f: F) -> Result<T, BulkError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if large {
        run(priority, f).await
    } else {
        Ok(f())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_the_job_and_returns_its_result() {
        let v = run(Priority::Routine, || 6 * 7).await.unwrap();
        assert_eq!(v, 42);
        assert_eq!(run_if(false, Priority::Flash, || "inline").await.unwrap(), "inline");
    }

    #[tokio::test]
    async fn a_panic_is_an_error_and_the_pool_goes_on() {
        for p in [Priority::Urgent, Priority::Flash] {
            let caught = run(p, || -> u8 { panic!("boom in the pool") }).await;
            assert!(matches!(caught, Err(BulkError::Panicked)), "{p:?}");
        }
        assert_eq!(run(Priority::Urgent, || 1).await.unwrap(), 1);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn flash_work_is_never_niced() {
        let nice = || rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        assert_eq!(run(Priority::Flash, nice).await.unwrap(), nice());
    }

    /// A caller that stops waiting before its job starts leaves nothing to run.
    #[tokio::test]
    async fn a_job_whose_caller_went_away_is_not_run() {
        let q = Queue { lines: Mutex::new(Default::default()), ready: Condvar::new() };
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let flag = ran.clone();
        q.lines.lock().unwrap()[line(Priority::Routine)].push_back(Box::new(move || {
            if tx.is_closed() {
                return;
            }
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }));
        drop(rx);
        take(&mut q.lines.lock().unwrap()).unwrap()();
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_pool_runs_at_a_lower_priority() {
        let nice = || rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let mine = nice();
        let theirs = run(Priority::Routine, nice).await.unwrap();
        assert_eq!(theirs, (mine + NICE).min(19), "the pool's threads are niced");
    }

    #[test]
    fn a_full_line_refuses_more() {
        let q = Queue { lines: Mutex::new(Default::default()), ready: Condvar::new() };
        for _ in 0..QUEUED_AT_MOST {
            enqueue(&q, Priority::Routine, Box::new(|| ()), QUEUED_AT_MOST).unwrap();
        }
        assert!(matches!(enqueue(&q, Priority::Routine, Box::new(|| ()), QUEUED_AT_MOST), Err(BulkError::Busy)));
        enqueue(&q, Priority::Routine, Box::new(|| ()), usize::MAX).expect("the node's own work is not bounded");
        enqueue(&q, Priority::Urgent, Box::new(|| ()), QUEUED_AT_MOST).expect("each line has its own bound");
        for _ in 0..3 {
            take(&mut q.lines.lock().unwrap()).unwrap()();
        }
        enqueue(&q, Priority::Routine, Box::new(|| ()), QUEUED_AT_MOST).expect("room again once two are taken");
    }

    #[test]
    fn urgent_is_taken_first() {
        // The queue alone, without threads: the order in which a worker takes jobs.
        let q = Queue { lines: Mutex::new(Default::default()), ready: Condvar::new() };
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        for (p, name) in [(Priority::Routine, "routine"), (Priority::Urgent, "urgent"), (Priority::Routine, "later")] {
            let order = order.clone();
            q.lines.lock().unwrap()[line(p)].push_back(Box::new(move || order.lock().unwrap().push(name)));
        }
        while let Some(job) = take(&mut q.lines.lock().unwrap()) {
            job();
        }
        assert_eq!(*order.lock().unwrap(), ["urgent", "routine", "later"]);
    }
}
