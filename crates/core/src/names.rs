//! Validated names: store ids, labels and content refs.
//!
//! Everything a caller hands us is checked here, before it can reach a path
//! or a query. Store ids are the only caller text that becomes a path
//! component, and only after passing [`StoreId::parse`]; labels live in the
//! index, never on the filesystem; refs become paths only as parsed digests.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError, shorten};

/// Longest accepted label, in bytes of UTF-8.
pub const MAX_LABEL_BYTES: usize = 1024;

/// Longest accepted store id, in bytes.
pub const MAX_STORE_ID_BYTES: usize = 128;

/// A validated store id: 1 to [`MAX_STORE_ID_BYTES`] characters from
/// `[A-Za-z0-9._-]`, starting with a letter or digit. UUIDs and names such as
/// `my-store-id` qualify; `..`, `/etc` and empty strings do not.
///
/// Shared, not copied: every change and every step of a write names its
/// store, and a clone is a count raised rather than an allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreId(Arc<str>);

impl StoreId {
    /// Checks `id` and wraps it.
    pub fn parse(id: &str) -> Result<Self> {
        let refuse = |reason| {
            Err(StoreError::InvalidStoreId {
                id: shorten(id),
                reason,
            })
        };
        if id.is_empty() {
            return refuse("it is empty");
        }
        if id.len() > MAX_STORE_ID_BYTES {
            return refuse("it is longer than 128 bytes");
        }
        if !id.as_bytes()[0].is_ascii_alphanumeric() {
            return refuse("it must start with a letter or digit");
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return refuse("only letters, digits, '.', '_' and '-' are allowed");
        }
        Ok(Self(id.into()))
    }

    /// One of the store's own stores (the event chains), named outside
    /// what [`StoreId::parse`] accepts, so that no caller can reach it by
    /// id: its name starts with `_`.
    pub(crate) fn reserved(name: impl Into<String>) -> Self {
        let name = name.into();
        debug_assert!(name.starts_with('_'));
        Self(name.into())
    }

    /// A fresh random id (UUID v4).
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string().into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a label: non-empty UTF-8, at most [`MAX_LABEL_BYTES`], no NUL.
/// Any other character, `/`, `:` and `..` included, is allowed, because
/// labels are keys in the index and never touch the filesystem.
pub fn validate_label(label: &str) -> Result<()> {
    let reason = if label.is_empty() {
        "it is empty"
    } else if label.len() > MAX_LABEL_BYTES {
        "it is longer than 1024 bytes"
    } else if label.contains('\0') {
        "it contains a NUL character"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidLabel {
        label: shorten(label),
        reason,
    })
}

/// A parsed BLAKE3 digest: the internal form of a content ref.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Digest(pub(crate) [u8; 32]);

/// Byte order, as SQLite and PostgreSQL sort digests, decided by the
/// first eight bytes in one comparison (they differ for all but equal
/// digests): sorted listings and searches of a million digests spent a
/// sixth of `verify`'s time in a `memcmp` call per comparison.
impl Ord for Digest {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let first =
            |digest: &Self| u64::from_be_bytes(digest.0[..8].try_into().expect("eight bytes"));
        first(self)
            .cmp(&first(other))
            .then_with(|| self.0[8..].cmp(&other.0[8..]))
    }
}

impl PartialOrd for Digest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Digest {
    pub(crate) fn of(content: &[u8]) -> Self {
        Self(*blake3::hash(content).as_bytes())
    }

    pub(crate) fn parse(text: &str) -> Result<Self> {
        let refuse = |reason| {
            Err(StoreError::InvalidRef {
                reference: shorten(text),
                reason,
            })
        };
        let Ok(digits) = <&[u8; 64]>::try_from(text.as_bytes()) else {
            return refuse("a ref is 64 lowercase hex digits (a BLAKE3 digest)");
        };
        // Every read parses a ref, so this is a table lookup per digit and
        // one check at the end rather than a branch per digit.
        let mut bytes = [0u8; 32];
        let mut invalid = 0;
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            let (high, low) = (HEX_VALUES[pair[0] as usize], HEX_VALUES[pair[1] as usize]);
            invalid |= (high | low) & NOT_HEX;
            *byte = high << 4 | low;
        }
        if invalid != 0 {
            return refuse("a ref is 64 lowercase hex digits (a BLAKE3 digest)");
        }
        Ok(Self(bytes))
    }

    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub(crate) fn to_hex(self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

/// The same JSON as a [`ContentRef`]'s (hex), for records that hold many
/// refs: 33 bytes each in memory as `Option<Digest>` rather than a
/// string of 64.
impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(blake3::Hash::from_bytes(self.0).to_hex().as_str())
    }
}

/// Read from either JSON form of a [`ContentRef`], and checked.
impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        ContentRef::deserialize(deserializer)?
            .digest()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Marks a byte that is not a lowercase hex digit in [`HEX_VALUES`].
const NOT_HEX: u8 = 0x80;

/// Each byte's value as a lowercase hex digit, or [`NOT_HEX`].
const HEX_VALUES: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut digit = 0;
    while digit < 16 {
        table[b"0123456789abcdef"[digit] as usize] = digit as u8;
        digit += 1;
    }
    table
};

/// A reference to stored content: the lowercase hex BLAKE3 digest of its bytes.
///
/// [`ContentRef::new`] accepts any string, as Theater's API does, so that a
/// ref read back from JSON or received from another actor can be passed
/// around freely; every store operation validates it before use and answers
/// [`StoreError::InvalidRef`] for a malformed one. Use [`ContentRef::parse`]
/// to validate up front.
///
/// In JSON it is the hex string itself (`"ab12…"`), as every `--json`
/// output of the CLI shows it; reading also accepts the record form
/// `{"hash":"ab12…"}` that Theater's WIT and the guest crate use.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentRef {
    hash: String,
}

impl Serialize for ContentRef {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.hash)
    }
}

impl<'de> Deserialize<'de> for ContentRef {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        /// The two JSON forms a ref is read from.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Hex(String),
            Record { hash: String },
        }
        let (Form::Hex(hash) | Form::Record { hash }) = Form::deserialize(deserializer)?;
        Ok(Self { hash })
    }
}

impl ContentRef {
    /// Wraps a hash string without checking it.
    pub fn new(hash: impl Into<String>) -> Self {
        Self { hash: hash.into() }
    }

    /// Wraps a hash string after checking that it is a well-formed digest.
    pub fn parse(hash: impl Into<String>) -> Result<Self> {
        let hash = hash.into();
        Digest::parse(&hash)?;
        Ok(Self { hash })
    }

    /// The ref that `content` would be stored under.
    pub fn for_content(content: &[u8]) -> Self {
        Digest::of(content).into()
    }

    /// The hex digest.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub(crate) fn digest(&self) -> Result<Digest> {
        Digest::parse(&self.hash)
    }
}

impl From<Digest> for ContentRef {
    fn from(digest: Digest) -> Self {
        Self {
            hash: digest.to_hex(),
        }
    }
}

impl fmt::Display for ContentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_reads_and_writes_the_json_of_its_ref() {
        let digest = Digest::of(b"some content");
        let as_ref = ContentRef::from(digest);
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, serde_json::to_string(&as_ref).unwrap());
        let values = vec![Some(digest), None];
        let written = serde_json::to_string(&values).unwrap();
        assert_eq!(written, format!("[\"{}\",null]", as_ref.hash()));
        let read: Vec<Option<Digest>> = serde_json::from_str(&written).unwrap();
        assert_eq!(read, values);
        let record = format!("{{\"hash\":\"{}\"}}", as_ref.hash());
        assert_eq!(serde_json::from_str::<Digest>(&record).unwrap(), digest);
        for bad in ["\"abc\"", "\"ZZ\"", "17"] {
            assert!(serde_json::from_str::<Digest>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn store_ids_accept_uuids_and_simple_names() {
        for id in [
            "my-store-id",
            "7e3f4a21-9c8b-4e5d-a6f7-1b2c3d4e5f6a",
            "a",
            "v1.2_x",
        ] {
            assert_eq!(StoreId::parse(id).unwrap().as_str(), id);
        }
        let generated = StoreId::generate();
        assert!(uuid::Uuid::parse_str(generated.as_str()).is_ok());
    }

    #[test]
    fn store_ids_refuse_path_tricks() {
        let long = "a".repeat(129);
        for id in [
            "",
            "..",
            "../x",
            "/etc/passwd",
            "a/b",
            "a\0b",
            ".hidden",
            "-x",
            "a b",
            &long,
        ] {
            assert!(
                matches!(StoreId::parse(id), Err(StoreError::InvalidStoreId { .. })),
                "{id:?} was accepted"
            );
        }
    }

    #[test]
    fn labels_allow_free_form_text_but_not_nul_or_oversize() {
        for label in [
            "actor:1:state",
            "a/b/../c",
            "../../etc/passwd",
            "/abs",
            "ünïcødé",
            "x",
        ] {
            validate_label(label).unwrap();
        }
        validate_label(&"l".repeat(MAX_LABEL_BYTES)).unwrap();
        for label in [
            "",
            "a\0b",
            &"l".repeat(MAX_LABEL_BYTES + 1),
            &"x".repeat(4096),
        ] {
            assert!(matches!(
                validate_label(label),
                Err(StoreError::InvalidLabel { .. })
            ));
        }
    }

    #[test]
    fn digests_sort_in_byte_order_as_the_index_does() {
        let mut digests: Vec<Digest> = (0..200u32).map(|i| Digest::of(&i.to_le_bytes())).collect();
        // Two that agree on their first eight bytes and differ after.
        let (mut low, mut high) = ([7u8; 32], [7u8; 32]);
        (low[20], high[20]) = (1, 2);
        digests.extend([Digest(high), Digest(low)]);
        let mut by_bytes = digests.clone();
        by_bytes.sort_by_key(|digest| digest.0);
        digests.sort();
        assert!(digests == by_bytes);
    }

    #[test]
    fn refs_round_trip_and_refuse_anything_but_lowercase_hex() {
        let content_ref = ContentRef::for_content(b"hello");
        assert_eq!(content_ref.hash(), blake3::hash(b"hello").to_hex().as_str());
        let digest = content_ref.digest().unwrap();
        assert_eq!(ContentRef::from(digest), content_ref);
        assert_eq!(ContentRef::parse(content_ref.hash()).unwrap(), content_ref);

        let upper = content_ref.hash().to_uppercase();
        let short = &content_ref.hash()[..63];
        let traversal = format!("../{}", &content_ref.hash()[3..]);
        for bad in ["", "xyz", "../../etc/passwd", short, &upper, &traversal] {
            assert!(matches!(
                ContentRef::parse(bad),
                Err(StoreError::InvalidRef { .. })
            ));
        }
        // Every byte that is not a lowercase hex digit, in every position.
        let hex = content_ref.hash().as_bytes();
        for byte in (0..=255u8).filter(|b| !b"0123456789abcdef".contains(b)) {
            for position in [0, 31, 63] {
                let mut bad = hex.to_vec();
                bad[position] = byte;
                let bad = String::from_utf8_lossy(&bad).into_owned();
                assert!(ContentRef::parse(bad).is_err(), "byte {byte} at {position}");
            }
        }
    }

    #[test]
    fn error_messages_shorten_huge_input() {
        let err = validate_label(&"x".repeat(5000)).unwrap_err();
        let message = err.to_string();
        assert!(message.len() < 200, "{message}");
        assert!(message.contains("5000 bytes"));
        // Control characters are escaped, and escaping does not defeat the cap
        // (found by the `refs` fuzz target).
        let controls = format!("8{}", "\u{17}".repeat(46));
        let message = ContentRef::parse(controls).unwrap_err().to_string();
        assert!(
            message.len() < 250 && !message.contains('\u{17}'),
            "{message}"
        );
        let message = validate_label("a\0b").unwrap_err().to_string();
        assert!(message.contains(r"a\0b"), "{message}");
    }
}
