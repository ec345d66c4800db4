//! Whether a watch's cache holds its first full list, for any number of waiters.

use kube::runtime::watcher;
use tokio::sync::watch::error::RecvError;

/// Whether a cache holds its first full list, for any number of waiters. Its stream says so when
/// the reflector passes InitDone (the reflector has applied it to the store by then).
/// `Store::wait_until_ready` is not used for this: it wakes only the last task that polled it, so
/// with several waiters the others could wait forever (a budget pass that began before the
/// TrainingJob cache filled never ended, and held up every shutdown after it).
#[derive(Clone)]
pub struct Synced(tokio::sync::watch::Receiver<bool>);

impl Synced {
    /// Waits until the cache has synced; an error when its stream has ended first (the operator
    /// is stopping).
    pub async fn wait(&self) -> Result<(), RecvError> {
        let mut rx = self.0.clone();
        rx.wait_for(|synced| *synced).await.map(|_| ())
    }
}

pub fn synced() -> (tokio::sync::watch::Sender<bool>, Synced) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    (tx, Synced(rx))
}

/// A stream inspector that marks the cache synced at its first InitDone.
pub fn mark_synced<K>(tx: tokio::sync::watch::Sender<bool>) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) {
    move |event| {
        if let Ok(watcher::Event::InitDone) = event {
            tx.send_replace(true);
        }
    }
}
