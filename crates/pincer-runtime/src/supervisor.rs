//! The supervisor: the one owner of every long-lived task. Everything the runtime spawns goes
//! through [`Supervisor::spawn`], so shutdown can cancel the whole tree and wait for it to
//! drain under a deadline (tokio-util `CancellationToken` + `TaskTracker`).

use std::future::Future;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Owner of the runtime's task tree. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Supervisor {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

/// How a shutdown ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Every task returned before the deadline.
    Clean,
    /// The deadline passed; remaining tasks were left to be dropped with the runtime.
    Forced,
}

impl Supervisor {
    /// A new, empty supervisor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawn a tracked task. `name` is only used for tracing.
    pub fn spawn<F>(&self, name: &'static str, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tracing::trace!(task = name, "spawn");
        self.tracker.spawn(fut)
    }

    /// Spawn a tracked blocking task (a thread from tokio's blocking pool).
    pub fn spawn_blocking<F, T>(&self, name: &'static str, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        tracing::trace!(task = name, "spawn_blocking");
        self.tracker.spawn_blocking(f)
    }

    /// The root cancellation token (cancelled at shutdown).
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// A child token: cancelled with the root, or on its own.
    pub fn child_token(&self) -> CancellationToken {
        self.cancel.child_token()
    }

    /// True once shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Cancel every task and wait up to `deadline` for all of them to return.
    pub async fn shutdown(&self, deadline: Duration) -> StopOutcome {
        self.cancel.cancel();
        self.tracker.close();
        match tokio::time::timeout(deadline, self.tracker.wait()).await {
            Ok(()) => StopOutcome::Clean,
            Err(_) => StopOutcome::Forced,
        }
    }

    /// Number of tasks still running.
    pub fn task_count(&self) -> usize {
        self.tracker.len()
    }
}
