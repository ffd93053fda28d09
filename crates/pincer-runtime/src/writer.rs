//! The store writer: one blocking task that owns every hot-path write and applies them in
//! group commits. Callers `await` [`StoreWriter::run`]; the writer takes whatever is queued
//! (up to [`MAX_BATCH`] operations), runs each under its own savepoint inside ONE
//! transaction, commits once, and only then answers each caller. A failing operation rolls
//! back alone; a failing commit fails every operation of the batch.
//!
//! Why: with SQLite in WAL mode a commit appends every page it touched to the WAL, so one
//! commit per message pays for the same b-tree pages again and again. Batching amortises that
//! (the >20,000 routed messages/s target in BENCHMARKS.md depends on it), without weakening
//! durability: nobody is told "done" before the commit that contains their write.

use crate::supervisor::Supervisor;
use pincer_store::{Store, StoreError, Tx};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Max operations per transaction.
pub const MAX_BATCH: usize = 512;

type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
type Op = Box<dyn FnOnce(&Tx<'_>) -> Completion + Send>;

enum Msg {
    Op(Op),
    /// Apply what is queued before this, then exit.
    Stop,
}

/// Handle to the writer. Cheap to clone.
#[derive(Clone)]
pub struct StoreWriter {
    tx: mpsc::UnboundedSender<Msg>,
}

impl StoreWriter {
    /// Start the writer on `sup`'s blocking pool. It exits after [`StoreWriter::stop`] (or when
    /// every handle is dropped), having applied everything queued before.
    pub fn spawn(store: Arc<Store>, sup: &Supervisor) -> (StoreWriter, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let handle = sup.spawn_blocking("store-writer", move || {
            let mut batch: Vec<Op> = Vec::with_capacity(MAX_BATCH);
            let mut stop = false;
            while !stop {
                match rx.blocking_recv() {
                    Some(Msg::Op(op)) => batch.push(op),
                    Some(Msg::Stop) | None => break,
                }
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(Msg::Op(op)) => batch.push(op),
                        Ok(Msg::Stop) => {
                            stop = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
                let ops = std::mem::take(&mut batch);
                let result = store.transaction(|tx| {
                    for op in ops {
                        completions.push(op(tx));
                    }
                    Ok(())
                });
                let commit = result.map_err(|e| e.to_string());
                if let Err(e) = &commit {
                    tracing::error!(error = %e, ops = completions.len(), "group commit failed");
                }
                for c in completions {
                    c(commit.clone());
                }
            }
        });
        (StoreWriter { tx }, handle)
    }

    /// Ask the writer to exit once everything queued so far is applied.
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }

    /// Run `f` inside the next group commit and return its result once that commit is durable.
    /// Errors: `f`'s own error (its writes are rolled back), or [`StoreError::Aborted`] when the
    /// commit itself failed or the writer is gone.
    pub async fn run<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        let (otx, orx) = oneshot::channel::<Result<R, StoreError>>();
        let op: Op = Box::new(move |tx: &Tx<'_>| -> Completion {
            let r = tx.atomic(f);
            Box::new(move |commit: Result<(), String>| {
                let _ = otx.send(match commit {
                    Ok(()) => r,
                    Err(detail) => Err(StoreError::Aborted { detail }),
                });
            })
        });
        if self.tx.send(Msg::Op(op)).is_err() {
            return Err(StoreError::Aborted { detail: "store writer stopped".into() });
        }
        orx.await.unwrap_or_else(|_| Err(StoreError::Aborted { detail: "store writer stopped".into() }))
    }
}
