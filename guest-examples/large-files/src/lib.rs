//! Large content in chunks, and a log many actors append to at once.
//!
//! The parameter is JSON with an `op`:
//! - `write`: streams `size` bytes of a pattern (`seed`) in `chunk`-byte
//!   pieces into `store`, under `label`; returns `{"ref", "bytes"}`.
//! - `read`: streams the content under `label` back, `chunk` bytes at a
//!   time, checking it against the pattern; returns `{"bytes"}`.
//! - `range`: reads `len` bytes from `offset` under `label`; returns
//!   `{"bytes": [...]}`.
//! - `append`: appends `count` entries to the log at `prefix`, each in the
//!   first free slot `prefix` + 8-digit number, claimed with
//!   compare-and-swap; returns `{"appended"}`.
//! - `count`: pages through the log at `prefix`; returns `{"entries"}`.
//!
//! `write` and `read` take `"check": false` to do no work per byte (for
//! timing the interface): then only each chunk's first 8 bytes follow the
//! pattern, the rest is zero, and `read` only counts.
//! - `abandon`: writes `size` bytes, then drops the writer unfinished;
//!   returns `{"written"}`. Nothing may be stored.

use std::io::{Read, Write};

use serde_json::{Value, json};
use theater_store_guest::{Actor, ContentRef, ContentStore};

struct LargeFiles;

/// The 8 bytes at `offset` (a multiple of 8) of the pattern named `seed`:
/// cheap to make and to check, and never repeating.
fn pattern_word(seed: u64, offset: u64) -> [u8; 8] {
    let mixed = (offset ^ seed.wrapping_mul(0x9E37_79B9)).wrapping_mul(0x2545_F491_4F6C_DD1D);
    mixed.to_le_bytes()
}

/// Fills `piece` with the pattern from `offset` on: word by word where
/// the offset is aligned (the common case), byte by byte otherwise.
fn fill(seed: u64, offset: u64, piece: &mut [u8]) {
    if offset.is_multiple_of(8) {
        let mut words = piece.chunks_exact_mut(8);
        let mut at = offset;
        for word in &mut words {
            word.copy_from_slice(&pattern_word(seed, at));
            at += 8;
        }
        let rest = words.into_remainder();
        let last = pattern_word(seed, at);
        rest.copy_from_slice(&last[..rest.len()]);
        return;
    }
    for (i, byte) in piece.iter_mut().enumerate() {
        let at = offset + i as u64;
        *byte = pattern_word(seed, at - at % 8)[(at % 8) as usize];
    }
}

fn number(param: &Value, key: &str) -> Result<u64, String> {
    param[key]
        .as_u64()
        .ok_or_else(|| format!("missing number {key}"))
}

/// An error for `init` to return, its kind first (`NotFound: …`).
fn describe(error: theater_store_guest::Error) -> String {
    format!("{:?}: {error}", error.kind())
}

fn text<'a>(param: &'a Value, key: &str) -> Result<&'a str, String> {
    param[key]
        .as_str()
        .ok_or_else(|| format!("missing string {key}"))
}

fn write(store: &ContentStore, param: &Value) -> Result<Value, String> {
    let (size, chunk, seed) = (
        number(param, "size")?,
        number(param, "chunk")?,
        number(param, "seed")?,
    );
    let check = param["check"].as_bool().unwrap_or(true);
    let mut writer = store.writer().map_err(describe)?;
    let mut piece = vec![0u8; chunk as usize];
    let mut offset = 0;
    while offset < size {
        let len = chunk.min(size - offset) as usize;
        if check {
            fill(seed, offset, &mut piece[..len]);
        } else {
            let head = len.min(8);
            piece[..head].copy_from_slice(&pattern_word(seed, offset)[..head]);
        }
        writer.write_all(&piece[..len]).map_err(|e| e.to_string())?;
        offset += len as u64;
    }
    let stored = writer
        .finish_at_label(text(param, "label")?)
        .map_err(describe)?;
    Ok(json!({"ref": stored.hash(), "bytes": size}))
}

fn read(store: &ContentStore, param: &Value) -> Result<Value, String> {
    let (chunk, seed) = (number(param, "chunk")?, number(param, "seed")?);
    let check = param["check"].as_bool().unwrap_or(true);
    let content_ref = labelled(store, text(param, "label")?)?;
    let mut reader = store.reader(&content_ref).map_err(describe)?;
    let mut piece = vec![0u8; chunk as usize];
    let mut expected = vec![0u8; chunk as usize];
    let mut offset = 0u64;
    loop {
        let read = reader.read(&mut piece).map_err(|e| e.to_string())?;
        if read == 0 {
            return Ok(json!({"bytes": offset}));
        }
        if !check {
            offset += read as u64;
            continue;
        }
        fill(seed, offset, &mut expected[..read]);
        if piece[..read] != expected[..read] {
            return Err(format!("bytes from {offset} differ from what was written"));
        }
        offset += read as u64;
    }
}

fn labelled(store: &ContentStore, label: &str) -> Result<ContentRef, String> {
    store
        .get_by_label(label)?
        .ok_or_else(|| format!("no label {label}"))
}

fn append(store: &ContentStore, param: &Value) -> Result<Value, String> {
    let (prefix, count, actor) = (
        text(param, "prefix")?,
        number(param, "count")?,
        number(param, "actor")?,
    );
    let mut slot = 0u64;
    for entry in 0..count {
        let content = store.store(format!("actor {actor} entry {entry}"))?;
        // Claim the first free slot: a slot is taken by whoever swaps it
        // from absent first; everyone else moves on to the next.
        while !store
            .compare_and_swap(&format!("{prefix}{slot:08}"), None, Some(&content))
            .map_err(describe)?
        {
            slot += 1;
        }
        slot += 1;
    }
    Ok(json!({"appended": count}))
}

fn count(store: &ContentStore, param: &Value) -> Result<Value, String> {
    let prefix = text(param, "prefix")?;
    let mut after: Option<String> = None;
    let mut entries = 0u64;
    loop {
        let page = store
            .list_labels_page(prefix, after.as_deref(), 1000)
            .map_err(describe)?;
        let Some((last, _)) = page.last() else {
            return Ok(json!({"entries": entries}));
        };
        entries += page.len() as u64;
        after = Some(last.clone());
    }
}

impl Actor for LargeFiles {
    fn init(_state: Option<Vec<u8>>, (param,): (String,)) -> Result<(Option<Vec<u8>>,), String> {
        let param: Value = serde_json::from_str(&param).map_err(|e| e.to_string())?;
        let store = ContentStore::from_id(text(&param, "store")?);
        let result = match text(&param, "op")? {
            "write" => write(&store, &param)?,
            "read" => read(&store, &param)?,
            "range" => {
                let content_ref = labelled(&store, text(&param, "label")?)?;
                let (offset, len) = (number(&param, "offset")?, number(&param, "len")?);
                let bytes = store
                    .read_range(&content_ref, offset, len)
                    .map_err(describe)?;
                json!({"bytes": bytes})
            }
            "append" => append(&store, &param)?,
            "abandon" => {
                let mut writer = store.writer().map_err(describe)?;
                let piece = vec![7u8; 65536];
                for _ in 0..number(&param, "size")?.div_ceil(65536) {
                    writer.write_all(&piece).map_err(|e| e.to_string())?;
                }
                json!({"written": writer.bytes_written()})
            }
            "count" => count(&store, &param)?,
            other => return Err(format!("unknown op {other}")),
        };
        Ok((Some(result.to_string().into_bytes()),))
    }
}

theater_store_guest::export_actor!(LargeFiles);
