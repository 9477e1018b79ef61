//! The CPU pool: a few OS threads, shared by every job of the daemon, that run the heavy
//! stages of the audio chain (resampling, MP3 decoding, MP3/Opus/FLAC encoding).
//!
//! A job hands the pool one bounded work item at a time ([`CpuPool::run`]: about 40 ms of
//! audio through its chain) and waits for it before it sends the next, and the pool runs items
//! in the order they were submitted (one FIFO queue). So the pool is round-robin across the
//! jobs that have work: a long text waits behind a short one's next item, never the other way
//! round. A panic inside an item is caught on the pool thread (the thread lives on) and becomes
//! an error for that item's job only.
//!
//! Why not rayon: `spawn_fifo` from outside the pool goes through rayon's injector, which is
//! FIFO, but its worker threads also pop their own local deques (LIFO for `spawn`, FIFO for
//! `spawn_fifo`) and steal, which makes "one queue, strict submission order" an implementation
//! detail; and herald needs none of its fork-join machinery. One mutex-guarded queue and a
//! condition variable are all a strict FIFO needs, with no new dependency.
//!
//! It must not run anything that blocks on I/O or waits for another job (a pool thread waiting
//! would stall every job behind it).

use std::{
    collections::VecDeque,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Condvar, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::oneshot;

/// One work item.
type Item = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    items: Mutex<QueueState>,
    ready: Condvar,
    /// Items submitted and not yet started (read without the lock).
    waiting: AtomicUsize,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Item>,
    /// How many items at the front are in the first lane.
    first: usize,
    closed: bool,
}

/// A work item panicked (a bug); its job fails, the pool goes on.
#[derive(Debug, thiserror::Error)]
#[error("a work item panicked")]
pub struct Panicked;

/// A fixed set of threads running work items in submission order.
pub struct CpuPool {
    queue: Arc<Queue>,
    threads: usize,
}

impl std::fmt::Debug for CpuPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuPool")
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl CpuPool {
    /// A pool of `threads` threads (0: one per available core).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            threads
        };
        let queue = Arc::new(Queue::default());
        for i in 0..threads {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("herald-cpu-{i}"))
                .spawn(move || work(&queue))?;
        }
        Ok(Self { queue, threads })
    }

    /// How many threads the pool runs.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Whether an item is queued and not started: another job is waiting for a thread, so a
    /// running item should end at its next boundary instead of going on.
    pub fn others_waiting(&self) -> bool {
        self.queue.waiting.load(Ordering::Relaxed) > 0
    }

    /// Runs `f` on a pool thread, after every item submitted before it has started, and
    /// returns its result; `Err(Panicked)` when `f` panicked. Dropping the future does not
    /// stop an item already queued (it is short); its result is dropped.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Panicked> {
        self.run_in(Lane::Fair, f).await
    }

    /// Runs `f` like [`Self::run`], in `lane`: [`Lane::First`] goes ahead of every item
    /// queued in the fair lane.
    pub async fn run_in<T: Send + 'static>(
        &self,
        lane: Lane,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Panicked> {
        let (tx, rx) = oneshot::channel();
        self.submit(
            lane,
            Box::new(move || {
                let result = catch_unwind(AssertUnwindSafe(f));
                let _ = tx.send(result);
            }),
        );
        match rx.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) | Err(_) => Err(Panicked),
        }
    }

    fn submit(&self, lane: Lane, item: Item) {
        self.queue.waiting.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = crate::error::lock(&self.queue.items);
            match lane {
                Lane::Fair => state.items.push_back(item),
                Lane::First => {
                    // After the other first-lane items, ahead of the fair ones.
                    let at = state.first;
                    state.items.insert(at, item);
                    state.first += 1;
                }
            }
        }
        self.queue.ready.notify_one();
    }
}

/// Where an item queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Behind every item queued before it: round-robin across jobs.
    Fair,
    /// Ahead of the fair lane, in order among its own: audio a local device plays, which
    /// cannot wait behind a backlog of conversions without an underrun.
    First,
}

impl Drop for CpuPool {
    /// The threads finish the queued items, then exit.
    fn drop(&mut self) {
        crate::error::lock(&self.queue.items).closed = true;
        self.queue.ready.notify_all();
    }
}

/// A pool thread: the next item, in order, until the pool is dropped and the queue empty.
fn work(queue: &Queue) {
    loop {
        let item = {
            let mut state = crate::error::lock(&queue.items);
            loop {
                if let Some(item) = state.items.pop_front() {
                    state.first = state.first.saturating_sub(1);
                    queue.waiting.fetch_sub(1, Ordering::Relaxed);
                    break item;
                }
                if state.closed {
                    return;
                }
                state = queue
                    .ready
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        // `run` catches the item's panic itself; this only guards the thread.
        let _ = catch_unwind(AssertUnwindSafe(item));
    }
}

static GLOBAL: OnceLock<CpuPool> = OnceLock::new();
static CONFIGURED: OnceLock<usize> = OnceLock::new();

/// Sets the size of the daemon's pool (`synthesis.cpu_threads`; 0 = one thread per core).
/// Call it before the first job: the pool starts at its first use, with this size or, if
/// never set, one thread per core. Returns `false` if it was set already.
pub fn configure(threads: usize) -> bool {
    CONFIGURED.set(threads).is_ok()
}

/// The daemon's pool, started at its first use.
///
/// # Panics
/// If the operating system refuses to start a thread (the daemon cannot work without them).
pub fn global() -> &'static CpuPool {
    GLOBAL.get_or_init(|| {
        let threads = CONFIGURED.get().copied().unwrap_or(0);
        let pool = CpuPool::new(threads).expect("cannot start the CPU pool's threads");
        tracing::debug!(threads = pool.threads(), "CPU pool started");
        pool
    })
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    /// A job: `items` work items, one in flight at a time, each logging `name` then working
    /// `item` long.
    async fn job(
        pool: Arc<CpuPool>,
        log: Arc<Mutex<Vec<&'static str>>>,
        name: &'static str,
        items: usize,
        item: Duration,
        started: Option<Arc<AtomicUsize>>,
    ) {
        for _ in 0..items {
            let log = Arc::clone(&log);
            pool.run(move || {
                log.lock().unwrap().push(name);
                std::thread::sleep(item);
            })
            .await
            .expect("no panic");
            if let Some(s) = &started {
                s.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_started_later_interleaves_with_a_long_one() {
        let pool = Arc::new(CpuPool::new(1).expect("pool"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let done_long = Arc::new(AtomicUsize::new(0));
        let long = tokio::spawn(job(
            Arc::clone(&pool),
            Arc::clone(&log),
            "long",
            40,
            Duration::from_millis(10),
            Some(Arc::clone(&done_long)),
        ));
        // The short job starts once the long one is well under way.
        while done_long.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        job(
            Arc::clone(&pool),
            Arc::clone(&log),
            "short",
            5,
            Duration::from_millis(10),
            None,
        )
        .await;
        long.await.expect("long job");
        let log = log.lock().unwrap().clone();
        let first_short = log.iter().position(|n| *n == "short").expect("short ran");
        let last_short = log.iter().rposition(|n| *n == "short").expect("short ran");
        // Round-robin: from its first item to its last, the short job waits at most one of
        // the long job's items per item of its own (a FIFO of one item per job). A pool that
        // ran the long job first would put all 40 of its items before the short job's.
        let long_between = log[first_short..=last_short]
            .iter()
            .filter(|n| **n == "long")
            .count();
        assert!(long_between <= 5, "{log:?}");
        assert!(
            log[last_short + 1..]
                .iter()
                .filter(|n| **n == "long")
                .count()
                >= 20,
            "the short job finished long before the long one: {log:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_item_fails_alone_and_the_thread_lives_on() {
        let pool = CpuPool::new(1).expect("pool");
        let before = pool
            .run(|| std::thread::current().id())
            .await
            .expect("runs");
        let panicked = pool.run(|| -> u32 { panic!("a bug in one job") }).await;
        assert!(panicked.is_err());
        let (after, value) = pool
            .run(|| (std::thread::current().id(), 7))
            .await
            .expect("the pool still runs items");
        assert_eq!(value, 7);
        // The same thread: it survived the panic (the pool has one).
        assert_eq!(before, after);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_first_lane_item_goes_ahead_of_a_queued_backlog_and_waiting_is_seen() {
        let pool = Arc::new(CpuPool::new(1).expect("pool"));
        let log = Arc::new(Mutex::new(Vec::new()));
        assert!(!pool.others_waiting());
        // Hold the only thread until the backlog is queued.
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let blocker = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.run(move || hold.recv().ok()).await })
        };
        let mut fair = Vec::new();
        for _ in 0..5 {
            let (pool, log) = (Arc::clone(&pool), Arc::clone(&log));
            fair.push(tokio::spawn(async move {
                pool.run(move || log.lock().unwrap().push("fair")).await
            }));
        }
        while pool.queue.waiting.load(Ordering::SeqCst) < 5 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(pool.others_waiting());
        let mut first = Vec::new();
        for name in ["first-1", "first-2"] {
            let (p, log) = (Arc::clone(&pool), Arc::clone(&log));
            first.push(tokio::spawn(async move {
                p.run_in(Lane::First, move || log.lock().unwrap().push(name))
                    .await
            }));
            while pool.queue.waiting.load(Ordering::SeqCst) < 5 + first.len() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        release.send(()).expect("blocker waits");
        blocker.await.expect("joined").expect("no panic");
        for t in first.into_iter().chain(fair) {
            t.await.expect("joined").expect("no panic");
        }
        let log = log.lock().unwrap().clone();
        assert_eq!(
            log,
            ["first-1", "first-2", "fair", "fair", "fair", "fair", "fair"]
        );
        assert!(!pool.others_waiting());
    }
}
