//! Shutdown signal and drain: tasks watch one token; the app waits until every
//! tracked connection task has finished, under a grace period.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Handle shared by listeners and connection tasks.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A handle that has not been triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask every listener to stop accepting and every connection to finish.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown begins.
    pub async fn triggered(&self) {
        self.token.cancelled().await
    }

    /// Spawn a task that shutdown waits for.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// Number of tracked tasks still running.
    pub fn active(&self) -> usize {
        self.tracker.len()
    }

    /// Wait up to `grace` for tracked tasks to finish; true if all finished.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}
