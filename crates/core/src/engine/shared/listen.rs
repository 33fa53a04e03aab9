//! Watching a shared root. A host that moved labels of a store announces
//! it on a PostgreSQL channel once its write has committed, and one
//! connection per process LISTENs there and moves the engine's commit
//! signal for each announcement. Announcements can be lost (a host that
//! dies between its commit and its announcement, a dropped connection, a
//! restarted server), so the signal also moves once a second and on every
//! reconnect: watchers then read the log again and find whatever they
//! missed.
//!
//! The announcement is not made inside the write's own transaction: a
//! NOTIFY holds a lock on the whole database from before its commit
//! until the commit is on disk, so writes to different stores, from every
//! host, would commit one after another (8 writers on 8 stores: 2,144–
//! 2,485 puts a second with the NOTIFY in the write, 3,033–3,180 now).
//! Announcements made while one is on its way go out together in the
//! next, in a transaction that does not wait for the disk.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};

use super::index;
use super::{Inner, SharedEngine};
use crate::engine::{Change, CommitSignal, logs_changes};
use crate::error::Result;
use crate::names::StoreId;

/// How often watchers read the log even without a notification.
const CATCH_UP: Duration = Duration::from_secs(1);

/// The least time between two announcements of one host: what is written
/// meanwhile goes out together in the next, so a busy writer costs
/// PostgreSQL one small transaction a window rather than one a write. The
/// first write after a quiet window is announced at once.
const ANNOUNCE_GATHER: Duration = Duration::from_millis(5);

/// How long an engine being closed waits for its last announcements.
const LAST_ANNOUNCEMENTS: Duration = Duration::from_millis(250);

/// How long to wait before connecting again after the connection failed.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

impl SharedEngine {
    /// The commit signal, starting this process's listener on first use.
    pub(super) fn commit_receiver(&self) -> tokio::sync::watch::Receiver<u64> {
        let receiver = self.inner.commits.subscribe();
        self.listening.get_or_init(|| {
            let config = self.inner.location.postgres.clone();
            self.handle()
                .spawn(listen(config, Arc::downgrade(&self.inner.commits)));
        });
        receiver
    }
}

/// Listens until the engine is dropped, reconnecting as needed.
async fn listen(config: tokio_postgres::Config, signal: Weak<CommitSignal>) {
    loop {
        if let Ok((client, mut connection)) = config.connect(NoTls).await {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            let listened = async {
                client
                    .batch_execute(&format!("LISTEN {}", index::CHANGES_CHANNEL))
                    .await
            };
            // The client's statement needs the connection driven beside it.
            let mut listened = std::pin::pin!(listened);
            let mut ready = false;
            let mut ticker = tokio::time::interval(CATCH_UP);
            loop {
                tokio::select! {
                    done = &mut listened, if !ready => {
                        if done.is_err() {
                            break;
                        }
                        ready = true;
                    }
                    message = messages.next() => match message {
                        Some(Ok(AsyncMessage::Notification(_))) => {
                            let Some(signal) = signal.upgrade() else { return };
                            signal.bump();
                        }
                        Some(Ok(_)) => {}
                        // The connection is gone: connect again.
                        Some(Err(_)) | None => break,
                    },
                    _ = ticker.tick() => {
                        let Some(signal) = signal.upgrade() else { return };
                        signal.bump();
                    }
                }
            }
        }
        let Some(signal) = signal.upgrade() else {
            return;
        };
        // Whatever was notified while disconnected is read again.
        signal.bump();
        drop(signal);
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}

/// Stores whose labels this host moved, waiting to be announced (in
/// store order, within one announcement).
#[derive(Debug, Default)]
pub(super) struct Announcements {
    pending: Mutex<BTreeSet<StoreId>>,
    /// Whether a task is sending them now (or waiting out its window).
    sending: AtomicBool,
    /// Whether stores taken from `pending` are on their way now (set
    /// under `pending`'s lock, as they are taken).
    on_the_wire: AtomicBool,
}

impl Inner {
    /// Tells this host's watchers at once, and every other host's listener
    /// in the background, that labels of `stores` moved; call it once the
    /// writes have committed.
    pub(super) fn announce(self: &Arc<Self>, stores: impl IntoIterator<Item = StoreId>) {
        let mut stores = stores.into_iter().peekable();
        if stores.peek().is_none() {
            return;
        }
        self.commits.bump();
        self.announcements
            .pending
            .lock()
            .expect("not poisoned")
            .extend(stores);
        if self.announcements.sending.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let stores: Vec<StoreId> = {
                    let mut pending = inner.announcements.pending.lock().expect("not poisoned");
                    inner
                        .announcements
                        .on_the_wire
                        .store(!pending.is_empty(), Ordering::Release);
                    std::mem::take(&mut *pending).into_iter().collect()
                };
                if stores.is_empty() {
                    inner.announcements.sending.store(false, Ordering::Release);
                    // A store added since the take, whose caller saw this
                    // task still sending, is sent here.
                    let more = !inner
                        .announcements
                        .pending
                        .lock()
                        .expect("not poisoned")
                        .is_empty();
                    if more && !inner.announcements.sending.swap(true, Ordering::AcqRel) {
                        continue;
                    }
                    return;
                }
                // A lost announcement delays watchers until their next
                // read of the log (at most a second); the writes stand.
                if let Err(error) = inner.send_announcement(&stores).await {
                    tracing::debug!(root = %inner.location.display, %error, "announcing label changes");
                }
                inner
                    .announcements
                    .on_the_wire
                    .store(false, Ordering::Release);
                // Writes that follow within the window go out together.
                tokio::time::sleep(ANNOUNCE_GATHER).await;
            }
        });
    }

    /// Waits, blocking, until what this host has yet to announce is sent,
    /// for [`LAST_ANNOUNCEMENTS`] at most: called as the engine closes, so
    /// that the last writes of a short-lived process (a CLI command, an
    /// actor's run) wake other hosts' watchers now rather than at their
    /// next read of the log.
    pub(super) fn finish_announcing(&self) {
        let deadline = std::time::Instant::now() + LAST_ANNOUNCEMENTS;
        while std::time::Instant::now() < deadline {
            let pending = self.announcements.pending.lock().expect("not poisoned");
            if pending.is_empty() && !self.announcements.on_the_wire.load(Ordering::Acquire) {
                return;
            }
            drop(pending);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    async fn send_announcement(&self, stores: &[StoreId]) -> Result<()> {
        let client = self.client().await?;
        let names: Vec<&str> = stores.iter().map(StoreId::as_str).collect();
        let sent = index::announce(&client, &names).await;
        self.index(sent, "announcing label changes")
    }
}

/// The store whose labels `change` may move, if its store keeps a change
/// log (reserved stores keep none, and no one watches them).
pub(super) fn announced_store(change: &Change) -> Option<&StoreId> {
    match change {
        Change::AddObject { label: None, .. } => None,
        Change::Record { change, .. } => change.as_deref().and_then(announced_store),
        Change::ByActor { change, .. } | Change::WithinQuota { change, .. } => {
            announced_store(change)
        }
        other => other.store().filter(|store| logs_changes(store)),
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio_postgres::AsyncMessage;

    /// A label write is announced on the channel every host listens on,
    /// naming its store, even when its root closes right after; content
    /// stored without a label is not.
    #[test]
    fn label_writes_are_announced_to_other_hosts_by_store() {
        let super::super::TestRoot {
            services,
            root_string,
            database,
            root,
            _cache,
        } = super::super::TestRoot::new();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            // Another host's listener, as a bare connection.
            let (client, mut connection) = tokio_postgres::connect(
                &format!(
                    "host=127.0.0.1 port={} user=theater dbname={database}",
                    services.postgres_port()
                ),
                tokio_postgres::NoTls,
            )
            .await
            .unwrap();
            let (sender, mut announced) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(Ok(message)) = messages.next().await {
                    if let AsyncMessage::Notification(notification) = message {
                        let _ = sender.send(notification.payload().to_owned());
                    }
                }
            });
            client
                .batch_execute(&format!("LISTEN {}", super::index::CHANGES_CHANNEL))
                .await
                .unwrap();

            // Announcements go out in store order, and one host's one
            // after another: had "a-quiet" been announced, it would come
            // before "b-watched".
            root.store("a-quiet")
                .unwrap()
                .store("no label")
                .await
                .unwrap();
            let watched = root.store("b-watched").unwrap();
            watched.store_at_label("day", "one").await.unwrap();
            let first = tokio::time::timeout(std::time::Duration::from_secs(30), announced.recv())
                .await
                .expect("no announcement within 30 s of a label write")
                .unwrap();
            assert_eq!(first, "b-watched");

            // A root closed right after its write (a CLI command ending)
            // still announces it before its engine stops.
            let closing = crate::StoreRoot::at(&root_string, crate::Options::default()).unwrap();
            let store = closing.store("c-closing").unwrap();
            store.store_at_label("day", "two").await.unwrap();
            drop(store);
            drop(closing);
            let next = tokio::time::timeout(std::time::Duration::from_secs(30), announced.recv())
                .await
                .expect("no announcement of a write made just before its root closed")
                .unwrap();
            assert_eq!(next, "c-closing");
        });
    }
}
