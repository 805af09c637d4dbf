//! Where the CPU work of large packets runs. Checking, the policy walk, signing and encrypting a
//! packet of megabytes (and opening and checking one on arrival, reading a sealed copy back from
//! its segment) take milliseconds of CPU each. On the async workers, or on threads of the same
//! priority, they make a FLASH alert wait for a core: on this project's 2-core machine, its
//! store commit's `fsync` returned within a millisecond but its thread then waited up to 8 ms
//! to run again, behind the bulk's crypto.
//!
//! So that work runs here: a few threads at a lower scheduling priority (`nice` 10 on Linux),
//! which the kernel gives a core only when the async workers, the store's writer and the
//! network have none to ask for. Jobs are taken FLASH first, then URGENT, then ROUTINE; within a
//! priority, in order. Small work ([`LARGE`]) stays where it is: a hop to another thread would
//! cost a FLASH alert more than the work.
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

/// How much lower than the node's own threads the pool's run (`nice` steps).
const NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// The queue: one line per priority, FLASH first.
struct Queue {
    lines: Mutex<[VecDeque<Job>; 3]>,
    ready: Condvar,
}

/// The pool failed to answer (it cannot: its jobs catch panics and its threads never stop;
/// kept as an error rather than a panic all the same).
#[derive(Debug, thiserror::Error)]
#[error("the bulk work pool did not answer")]
pub struct PoolStopped;

fn line(p: Priority) -> usize {
    match p {
        Priority::Flash => 0,
        Priority::Urgent => 1,
        Priority::Routine => 2,
    }
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

/// The next job: the oldest of the most urgent line that has one.
fn take(lines: &mut [VecDeque<Job>; 3]) -> Option<Job> {
    lines.iter_mut().find_map(VecDeque::pop_front)
}

#[cfg(target_os = "linux")]
fn lower_priority() -> std::io::Result<()> {
    // On Linux, a thread's nice value is its own: PRIO_PROCESS with the thread's id.
    Ok(rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICE)?)
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "per-thread priority is set on Linux only"))
}

/// Runs `f` on the pool, in the line of `priority`, and waits for it without holding an async
/// worker. A panic in `f` is raised again here. If the caller stops waiting, `f` still runs to
/// its end (it only computes; its result is dropped).
pub(crate) async fn run<T, F>(priority: Priority, f: F) -> Result<T, PoolStopped>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let Some(q) = queue() else { return Ok(f()) };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
    });
    q.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner)[line(priority)].push_back(job);
    q.ready.notify_one();
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => Err(PoolStopped),
    }
}

/// [`run`] if `large`, else `f` here and now.
pub(crate) async fn run_if<T, F>(large: bool, priority: Priority, f: F) -> Result<T, PoolStopped>
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
    async fn a_panic_is_raised_in_the_caller_and_the_pool_goes_on() {
        let caught = tokio::spawn(run(Priority::Urgent, || -> u8 { panic!("boom in the pool") })).await;
        assert!(caught.unwrap_err().is_panic());
        assert_eq!(run(Priority::Urgent, || 1).await.unwrap(), 1);
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
    fn flash_is_taken_first() {
        // The queue alone, without threads: the order in which a worker takes jobs.
        let q = Queue { lines: Mutex::new(Default::default()), ready: Condvar::new() };
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        for (p, name) in [(Priority::Routine, "routine"), (Priority::Urgent, "urgent"), (Priority::Flash, "flash")] {
            let order = order.clone();
            q.lines.lock().unwrap()[line(p)].push_back(Box::new(move || order.lock().unwrap().push(name)));
        }
        while let Some(job) = take(&mut q.lines.lock().unwrap()) {
            job();
        }
        assert_eq!(*order.lock().unwrap(), ["flash", "urgent", "routine"]);
    }
}
