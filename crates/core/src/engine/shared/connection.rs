//! The shared engine's connections: a pooled PostgreSQL client, reconnecting
//! when the server went away, and how a failure of either server is named.

use std::io::{self};

use super::Inner;
use super::index::{self, PostgresError};
use super::location::SharedLocation;
use crate::error::{BoxError, Result, StoreError};

impl Inner {
    /// A pooled connection, naming the server when it cannot be reached.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|source| {
            let source: BoxError = match source {
                deadpool_postgres::PoolError::Backend(error) => Box::new(PostgresError(error)),
                other => other.to_string().into(),
            };
            StoreError::Service {
                root: self.location.display.clone(),
                service: "PostgreSQL",
                at: self.location.postgres_at.clone(),
                action: "connecting",
                source,
            }
        })
    }

    /// Checks both services at open, and brings the schema up to date.
    pub(super) async fn connect(&self) -> Result<()> {
        let mut client = self.client().await?;
        index::create_schema(&mut client)
            .await
            .map_err(|reason| StoreError::Service {
                root: self.location.display.clone(),
                service: "PostgreSQL",
                at: self.location.postgres_at.clone(),
                action: "creating or upgrading the schema",
                source: reason.into(),
            })?;
        // A key that is never written: finding it absent proves the bucket
        // is there and answers.
        let probe = object_store::path::Path::from("theater-store-probe");
        let reached = self.objects.exists(&probe).await;
        self.object_store(reached, "reaching the bucket")?;
        std::fs::create_dir_all(&self.location.cache_dir).map_err(|source| StoreError::Io {
            store: "root".into(),
            action: "creating the read cache",
            path: self.location.cache_dir.clone(),
            source,
        })
    }

    pub(super) fn index<T>(
        &self,
        result: Result<T, tokio_postgres::Error>,
        action: &'static str,
    ) -> Result<T> {
        result.map_err(|source| postgres_error(&self.location, action, PostgresError(source)))
    }

    pub(super) fn object_store<T>(
        &self,
        result: Result<T, object_store::Error>,
        action: &'static str,
    ) -> Result<T> {
        result.map_err(|source| StoreError::Service {
            root: self.location.display.clone(),
            service: "the object store",
            at: self.objects.at.clone(),
            action,
            source: Box::new(source),
        })
    }
}

pub(super) fn generic(source: io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "local staging",
        source: Box::new(source),
    }
}

pub(super) fn postgres_error(
    location: &SharedLocation,
    action: &'static str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    StoreError::Service {
        root: location.display.clone(),
        service: "PostgreSQL",
        at: location.postgres_at.clone(),
        action,
        source: Box::new(source),
    }
}
