//! Watching a shared root: one connection per process LISTENs for the
//! notifications the change log's trigger sends at commit, and moves the
//! engine's commit signal for each. Notifications can be lost (a dropped
//! connection, a restarted server), so the signal also moves once a
//! second and on every reconnect: watchers then read the log again and
//! find whatever they missed.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};

use super::SharedEngine;
use super::index;
use crate::engine::CommitSignal;

/// How often watchers read the log even without a notification.
const CATCH_UP: Duration = Duration::from_secs(1);

/// How long to wait before connecting again after the connection failed.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

impl SharedEngine {
    /// The commit signal, starting this process's listener on first use.
    pub(super) fn commit_receiver(&self) -> tokio::sync::watch::Receiver<u64> {
        let receiver = self.commits.subscribe();
        self.listening.get_or_init(|| {
            let config = self.inner.location.postgres.clone();
            self.handle()
                .spawn(listen(config, Arc::downgrade(&self.commits)));
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
