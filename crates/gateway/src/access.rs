//! Who may do what: bearer tokens from a file, each granting stores
//! read-write or read-only; or, with no tokens, reads by anyone.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;

use crate::error::ApiError;

/// The shortest token a tokens file may hold: shorter ones are guessable.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Who the gateway serves.
#[derive(Clone, Debug)]
pub enum Access {
    /// Anyone, reads only (for serving on loopback without a tokens file).
    ReadOnlyToAll,
    /// Holders of these tokens, to the stores each grants; nobody else.
    Tokens(Tokens),
}

/// The tokens of a tokens file: each line `TOKEN GRANT...`, where a grant
/// is `STORE` (read-write), `STORE:ro` (read-only), `*` or `*:ro` (every
/// store). Blank lines and lines starting with `#` are skipped.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    /// Each token's BLAKE3 hash (compared in constant time, and never the
    /// token itself kept) and its grants.
    entries: Vec<(blake3::Hash, Vec<Grant>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Grant {
    /// `None`: every store.
    store: Option<String>,
    read_only: bool,
}

/// What a request wants of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Reading.
    Read,
    /// Changing labels or adding content.
    Write,
}

impl Tokens {
    /// Parses a tokens file's text. Errors name the line, never the token.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let number = index + 1;
            let mut words = line.split_whitespace();
            let token = words.next().unwrap_or_default();
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(format!(
                    "line {number}: a token must be at least {MIN_TOKEN_CHARS} characters"
                ));
            }
            let grants = words
                .map(|word| parse_grant(word).map_err(|why| format!("line {number}: {why}")))
                .collect::<Result<Vec<_>, _>>()?;
            if grants.is_empty() {
                return Err(format!(
                    "line {number}: a token needs at least one grant (STORE, STORE:ro or *)"
                ));
            }
            entries.push((blake3::hash(token.as_bytes()), grants));
        }
        Ok(Self { entries })
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The grants of the request's bearer token, or 401.
    fn grants_of(&self, headers: &HeaderMap) -> Result<&[Grant], ApiError> {
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthenticated)?;
        // Hashes compare in constant time (blake3::Hash's `==`), and
        // every entry is compared, so timing says nothing of which matched.
        let presented = blake3::hash(presented.trim().as_bytes());
        let mut found = None;
        for (digest, grants) in &self.entries {
            if *digest == presented {
                found = Some(grants.as_slice());
            }
        }
        found.ok_or(ApiError::Unauthenticated)
    }
}

fn parse_grant(word: &str) -> Result<Grant, String> {
    let (store, read_only) = match word.strip_suffix(":ro") {
        Some(store) => (store, true),
        None => (word, false),
    };
    let store = match store {
        "*" => None,
        id => {
            theater_store::StoreId::parse(id).map_err(|error| error.to_string())?;
            Some(id.to_owned())
        }
    };
    Ok(Grant { store, read_only })
}

impl Access {
    /// Whether the request may do `need` to `store`: 401 without a valid
    /// token (when tokens are in use), 403 when what it holds does not
    /// reach that far.
    pub fn check(&self, headers: &HeaderMap, store: &str, need: Need) -> Result<(), ApiError> {
        match self {
            Self::ReadOnlyToAll if need == Need::Read => Ok(()),
            Self::ReadOnlyToAll => Err(ApiError::Forbidden(
                "this gateway serves reads only (it was started without --tokens)".into(),
            )),
            Self::Tokens(tokens) => {
                let grants = tokens.grants_of(headers)?;
                let reaches = |grant: &&Grant| grant.store.as_deref().is_none_or(|s| s == store);
                let allowed = grants
                    .iter()
                    .filter(reaches)
                    .any(|grant| need == Need::Read || !grant.read_only);
                if allowed {
                    return Ok(());
                }
                let what = match need {
                    Need::Read => "read",
                    Need::Write => "write to",
                };
                Err(ApiError::Forbidden(format!(
                    "this token may not {what} store {store}"
                )))
            }
        }
    }

    /// Whether the request may read actors' event chains: chains cross
    /// stores, so a token needs a grant of every store (`*` or `*:ro`).
    pub fn check_chains(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match self {
            Self::ReadOnlyToAll => Ok(()),
            Self::Tokens(tokens) => {
                let grants = tokens.grants_of(headers)?;
                if grants.iter().any(|grant| grant.store.is_none()) {
                    return Ok(());
                }
                Err(ApiError::Forbidden(
                    "event chains need a token granting every store (*:ro)".into(),
                ))
            }
        }
    }

    /// Who the change log says made the request's writes: `http:token-`
    /// and the first 8 hex digits of its token's BLAKE3 hash (which tells
    /// nothing of the token; `printf %s TOKEN | b3sum` finds it), or
    /// `http` without tokens.
    pub fn writer(&self, headers: &HeaderMap) -> String {
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        match (self, presented) {
            (Self::Tokens(_), Some(token)) => {
                let hash = blake3::hash(token.trim().as_bytes()).to_hex();
                format!("http:token-{}", &hash[..8])
            }
            _ => "http".to_owned(),
        }
    }

    /// Whether the request holds a valid token at all (or needs none):
    /// for listings, which show only what it may read.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match self {
            Self::ReadOnlyToAll => Ok(()),
            Self::Tokens(tokens) => tokens.grants_of(headers).map(drop),
        }
    }
}
