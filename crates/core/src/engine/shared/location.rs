//! The shared engine's root string:
//! `postgres://USER[:PASSWORD]@HOST:PORT/DB?objects=s3://BUCKET/PREFIX`,
//! with optional `cache=DIR` (this host's read cache) and `cache_bytes=N`.
//! The object store's credentials, endpoint and region come from the
//! standard `AWS_*` variables. Nothing here ever prints a password.

use std::path::PathBuf;

use crate::error::{Result, StoreError};
use crate::options::Options;

/// Where a shared root lives, parsed from its root string.
#[derive(Clone)]
pub(crate) struct SharedLocation {
    /// The connection settings for PostgreSQL (the part before `?`).
    pub(crate) postgres: tokio_postgres::Config,
    /// `HOST:PORT` of PostgreSQL, for messages.
    pub(crate) postgres_at: String,
    /// The bucket holding content objects.
    pub(crate) bucket: String,
    /// The key prefix inside the bucket (no leading or trailing `/`).
    pub(crate) prefix: String,
    /// This host's read cache directory.
    pub(crate) cache_dir: PathBuf,
    /// The root string without its password: how the root is named.
    pub(crate) display: String,
    /// What every host's root string for this root has in common (no
    /// password, no cache settings): how other roots name it in records.
    pub(crate) identity: String,
}

impl std::fmt::Debug for SharedLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

/// Whether `root` names a shared root rather than a directory.
pub(crate) fn is_shared(root: &str) -> bool {
    root.starts_with("postgres://") || root.starts_with("postgresql://")
}

impl SharedLocation {
    /// Parses a root string, naming what is wrong with it. Settings in
    /// its query (`cache_bytes=N`) go into `options`: this is the one
    /// place a root string's tunables are read.
    pub(crate) fn parse(root: &str, options: &mut Options) -> Result<Self> {
        let url = url::Url::parse(root).map_err(|error| invalid(root, error.to_string()))?;
        let mut display_url = url.clone();
        if display_url.password().is_some() {
            let _ = display_url.set_password(Some("***"));
        }
        let display = display_url.to_string();
        let refuse = |reason: String| invalid(&display, reason);
        let mut objects = None;
        let mut cache_dir = None;
        for (key, value) in url.query_pairs() {
            match &*key {
                "objects" => objects = Some(value.into_owned()),
                "cache" => cache_dir = Some(PathBuf::from(value.into_owned())),
                "cache_bytes" => {
                    options.shared_cache_bytes = value.parse().map_err(|_| {
                        refuse(format!("cache_bytes={value} is not a number of bytes"))
                    })?;
                }
                other => return Err(refuse(format!("unknown setting `{other}`"))),
            }
        }
        let objects = objects.ok_or_else(|| {
            refuse("it names no object store: add `?objects=s3://BUCKET/PREFIX`".into())
        })?;
        let (bucket, prefix) = parse_objects(&objects).map_err(refuse)?;
        let host = url
            .host_str()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| refuse("it names no PostgreSQL host".into()))?;
        let port = url.port().unwrap_or(5432);
        let database = url.path().trim_start_matches('/');
        if database.is_empty() {
            return Err(refuse("it names no database (`/DB` after the host)".into()));
        }
        if url.username().is_empty() {
            return Err(refuse(
                "it names no PostgreSQL user (`USER@` before the host)".into(),
            ));
        }
        let decode = |text: &str| {
            percent_decode(text).ok_or_else(|| refuse(format!("`{text}` is badly escaped")))
        };
        let mut postgres = tokio_postgres::Config::new();
        postgres
            .host(host.trim_start_matches('[').trim_end_matches(']'))
            .port(port)
            .user(decode(url.username())?)
            .dbname(decode(database)?)
            .application_name("theater-store")
            .connect_timeout(std::time::Duration::from_secs(10));
        if let Some(password) = url.password() {
            postgres.password(decode(password)?);
        }
        let cache_dir = match cache_dir {
            Some(dir) => dir,
            None => default_cache_dir(&display).ok_or_else(|| {
                refuse("no cache directory is known here: add `&cache=DIR`".into())
            })?,
        };
        let identity = format!(
            "postgres://{}@{host}:{port}/{database}?objects=s3://{bucket}/{prefix}",
            url.username()
        );
        Ok(Self {
            identity,
            postgres,
            postgres_at: format!("{host}:{port}"),
            bucket,
            prefix,
            cache_dir,
            display,
        })
    }
}

/// Splits `s3://BUCKET/PREFIX` into its bucket and prefix.
fn parse_objects(objects: &str) -> std::result::Result<(String, String), String> {
    let rest = objects
        .strip_prefix("s3://")
        .ok_or_else(|| format!("objects={objects} is not an s3://BUCKET/PREFIX address"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!("objects={objects} names no bucket"));
    }
    Ok((bucket.to_owned(), prefix.trim_matches('/').to_owned()))
}

/// `~/.cache/theater-store/<hash of the root string>`: one cache per root.
fn default_cache_dir(display: &str) -> Option<PathBuf> {
    let hash = blake3::hash(display.as_bytes()).to_hex();
    dirs::cache_dir().map(|dir| dir.join("theater-store").join(&hash[..16]))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = std::str::from_utf8(bytes.get(index + 1..index + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn invalid(root: &str, reason: String) -> StoreError {
    StoreError::InvalidRoot {
        root: root.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_root_string_parses_and_hides_its_password() {
        let mut options = Options::default();
        let location = SharedLocation::parse(
            "postgres://theater:s%40cret@127.0.0.1:5433/store?objects=s3://bucket/a/b/&cache=/tmp/c&cache_bytes=1000",
            &mut options,
        )
        .unwrap();
        assert_eq!(location.postgres_at, "127.0.0.1:5433");
        assert_eq!(location.bucket, "bucket");
        assert_eq!(location.prefix, "a/b");
        assert_eq!(location.cache_dir, PathBuf::from("/tmp/c"));
        assert_eq!(options.shared_cache_bytes, 1000);
        assert_eq!(location.postgres.get_password(), Some(&b"s@cret"[..]));
        assert!(!location.display.contains("cret"), "{}", location.display);
        assert!(!format!("{location:?}").contains("cret"));
    }

    #[test]
    fn missing_parts_are_named_without_the_password() {
        let cases = [
            ("postgres://u:pw@h:1/db", "objects=s3"),
            ("postgres://u:pw@h:1/db?objects=gs://b", "s3://BUCKET"),
            ("postgres://u:pw@h:1/db?objects=s3://", "no bucket"),
            ("postgres://u:pw@h:1/?objects=s3://b", "no database"),
            ("postgres://h:1/db?objects=s3://b", "no PostgreSQL user"),
            (
                "postgres://u:pw@h:1/db?objects=s3://b&colour=red",
                "unknown setting `colour`",
            ),
            (
                "postgres://u:pw@h:1/db?objects=s3://b&cache_bytes=lots",
                "cache_bytes=lots",
            ),
        ];
        for (root, expected) in cases {
            let error = SharedLocation::parse(root, &mut Options::default())
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{root}: {error}");
            assert!(!error.contains("pw"), "{root}: {error}");
        }
    }
}
