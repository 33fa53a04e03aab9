//! Export and import packages: a store's labels and content in one
//! streamed file. The format is documented in docs/PACKAGE-FORMAT.md.
//!
//! Export never holds more than one 64 KiB buffer of content in memory
//! (beyond one inline object). Import stages each object (in memory when
//! it is small enough to be stored inline, else in a temporary file) while
//! checking its hash,
//! checks the whole package's checksum, and only then publishes the objects
//! and, after them, the labels, all together. A truncated or tampered
//! package is refused with the store unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use crate::engine::{Change, Engine, Staged};
use crate::error::{Result, StoreError, io_error};
use crate::links::{LinkGraph, Links};
use crate::maintenance::Progress;
use crate::names::{Digest, MAX_LABEL_BYTES, StoreId, validate_label};
use crate::root::blocking;
use crate::store::ContentStore;
use crate::stream::StagingWriter;

/// The first bytes of every package.
pub const PACKAGE_MAGIC: &[u8; 16] = b"THEATER-STORE-PK";

/// The format version this build writes and reads.
pub const PACKAGE_VERSION: u32 = 1;

/// Labels applied per index transaction on import.
const LABELS_PER_TRANSACTION: usize = 1000;

const OBJECT: u8 = b'O';
const LABEL: u8 = b'L';
const END: u8 = b'E';

/// What an export wrote or an import applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PackageSummary {
    /// Objects in the package.
    pub objects: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Labels in the package.
    pub labels: u64,
    /// On import: objects the store did not hold before.
    pub new_objects: u64,
    /// On export: objects that a concurrent collection removed before they
    /// could be copied, left out of the package with any labels that
    /// pointed at them (labels moved away from them after the snapshot).
    pub vanished: Vec<crate::ContentRef>,
    /// On import: whether this was a dry run (nothing written).
    pub dry_run: bool,
    /// On import: labels the store already had, pointing where the
    /// package says.
    pub labels_unchanged: u64,
    /// On import: labels the store has pointing elsewhere, kept as they
    /// are (unless [`ImportOptions::overwrite`]).
    pub conflicts: Vec<ImportConflict>,
}

/// A label an import found pointing elsewhere than the package says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ImportConflict {
    /// The label.
    pub label: String,
    /// What the store has.
    pub current: crate::ContentRef,
    /// What the package has.
    pub package: crate::ContentRef,
}

/// How [`ContentStore::import_package_with`] treats the store.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImportOptions {
    /// Check the package and report what it would change, changing nothing.
    pub dry_run: bool,
    /// Point labels the store has elsewhere at the package's content
    /// anyway. Without it they are kept and reported as conflicts, so that
    /// an older backup never silently replaces newer labels.
    pub overwrite: bool,
}

impl ContentStore {
    /// Writes a package of the labels starting with `prefix` (all labels
    /// for `None`) and the content they reach, each object once: what they
    /// point at, and every object whose ref is written inside that content,
    /// however deep (see [`ContentStore::collect_garbage`]). Without a
    /// prefix, content no label reaches is included too. Progress is
    /// reported in bytes of content. Returns the writer when done.
    pub async fn export_package<W: Write + Send + 'static>(
        &self,
        prefix: Option<&str>,
        out: W,
        progress: Arc<dyn Progress>,
    ) -> Result<(PackageSummary, W)> {
        let engine = self.root().engine().await?;
        let store = self.store_id().clone();
        let prefix = prefix.map(str::to_owned);
        blocking(move || export(&engine, &store, prefix.as_deref(), out, &*progress)).await
    }

    /// [`ContentStore::import_package_with`] with the default options: a
    /// label the store has pointing elsewhere is kept and reported.
    pub async fn import_package<R: Read + Send + 'static>(
        &self,
        input: R,
        progress: Arc<dyn Progress>,
    ) -> Result<PackageSummary> {
        self.import_package_with(input, ImportOptions::default(), progress)
            .await
    }

    /// Reads a package, checks every object's hash and the package's
    /// checksum, then adds the objects and points the labels at them:
    /// labels the store lacks are created; labels it has pointing
    /// elsewhere are conflicts, kept unless `options.overwrite`. Nothing
    /// is published unless the whole package is sound, and nothing at all
    /// in a dry run. Progress is reported in bytes of the package.
    pub async fn import_package_with<R: Read + Send + 'static>(
        &self,
        input: R,
        options: ImportOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<PackageSummary> {
        let engine = self.root().engine().await?;
        let store = self.store_id().clone();
        let staged = blocking({
            let engine = Arc::clone(&engine);
            move || stage(&engine, &store, input, &*progress)
        })
        .await?;
        let StagedPackage {
            objects,
            labels,
            mut summary,
        } = staged;
        summary.dry_run = options.dry_run;
        if options.dry_run {
            summary.new_objects = objects.len() as u64;
            for (_, (_, staged, _)) in objects {
                engine.discard(staged);
            }
            for chunk in labels.chunks(LABELS_PER_TRANSACTION) {
                self.plan_labels(&engine, chunk, options, &mut summary)
                    .await?;
            }
            return Ok(summary);
        }
        let changes = objects
            .into_iter()
            .map(|(digest, (size, staged, links))| Change::AddObject {
                store: self.store_id().clone(),
                digest,
                size,
                staged,
                label: None,
                links,
            })
            .collect();
        for added in engine.apply_all(changes).await {
            summary.new_objects += u64::from(added?);
        }
        // Labels go in chunks, so that a package with many labels never
        // holds the root's write lock for long; a failure part way leaves
        // some labels applied, and importing again finishes the job. Each
        // chunk applies only if its labels still hold what was read;
        // otherwise it is read and decided again.
        for chunk in labels.chunks(LABELS_PER_TRANSACTION) {
            loop {
                let mut decided = PackageSummary::default();
                let (writes, expected) = self
                    .plan_labels(&engine, chunk, options, &mut decided)
                    .await?;
                let change = Change::SetLabels {
                    store: self.store_id().clone(),
                    labels: writes,
                    expected: Some(expected),
                };
                if engine.apply(change).await? {
                    summary.labels_unchanged += decided.labels_unchanged;
                    summary.conflicts.extend(decided.conflicts);
                    break;
                }
            }
        }
        Ok(summary)
    }

    /// Decides what importing `labels` does: which to write (with what
    /// they hold now, for a compare-and-swap), which already agree, and
    /// which conflict.
    async fn plan_labels(
        &self,
        engine: &Engine,
        labels: &[(String, Digest)],
        options: ImportOptions,
        summary: &mut PackageSummary,
    ) -> Result<LabelWrites> {
        let mut writes = Vec::new();
        let mut expected = Vec::new();
        for (label, target) in labels {
            let current = engine.label_target(self.store_id(), label).await?;
            match current {
                Some(current) if current == *target => summary.labels_unchanged += 1,
                Some(current) if !options.overwrite => summary.conflicts.push(ImportConflict {
                    label: label.clone(),
                    current: current.into(),
                    package: (*target).into(),
                }),
                _ => {
                    writes.push((label.clone(), Some(*target)));
                    expected.push(current);
                }
            }
        }
        Ok((writes, expected))
    }
}

/// Label writes and, one per label, what it must hold for them to apply.
type LabelWrites = (Vec<(String, Option<Digest>)>, Vec<Option<Digest>>);

fn export<W: Write>(
    engine: &Engine,
    store: &StoreId,
    prefix: Option<&str>,
    out: W,
    progress: &dyn Progress,
) -> Result<(PackageSummary, W)> {
    // Labels and objects as of one moment; content a collection removes
    // after it is left out below, with the labels that pointed at it.
    let snapshot = engine.snapshot(store, prefix.unwrap_or(""))?;
    let (labels, rows) = (snapshot.labels, snapshot.objects);
    let sizes: BTreeMap<Digest, u64> = rows.iter().map(|row| (row.digest, row.size)).collect();
    // With a prefix: what the chosen labels reach, through refs written
    // inside content too, so that the package holds every object the
    // source could resolve from them.
    let digests: BTreeSet<Digest> = match prefix {
        None => sizes.keys().copied().collect(),
        Some(_) => {
            let held = sizes.keys().copied().collect();
            let graph = LinkGraph::load(engine, store, &held, false)?;
            graph
                .reachable(labels.iter().map(|(_, target)| *target))
                .into_iter()
                .filter(|digest| sizes.contains_key(digest))
                .collect()
        }
    };
    progress.start(digests.iter().filter_map(|d| sizes.get(d)).sum());

    let write_error =
        |source: io::Error| io_error(store, "writing package", &PathBuf::from("<output>"), source);
    let mut out = HashingWriter {
        inner: BufWriter::with_capacity(1 << 16, out),
        hasher: blake3::Hasher::new(),
    };
    out.write_all(PACKAGE_MAGIC).map_err(write_error)?;
    out.write_all(&PACKAGE_VERSION.to_le_bytes())
        .map_err(write_error)?;
    let mut summary = PackageSummary::default();
    let mut buffer = vec![0u8; 1 << 16];
    let mut vanished = BTreeSet::new();
    for digest in &digests {
        let path = PathBuf::from(format!("<object {}>", digest.to_hex()));
        let read_error = |source| io_error(store, "reading object for export", &path, source);
        let (Some(object), Some(&size)) = (engine.open_object(store, *digest)?, sizes.get(digest))
        else {
            vanished.insert(*digest);
            continue;
        };
        out.write_all(&[OBJECT]).map_err(write_error)?;
        out.write_all(&size.to_le_bytes()).map_err(write_error)?;
        out.write_all(&digest.0).map_err(write_error)?;
        let mut object_hasher = blake3::Hasher::new();
        let mut reader = object.take(size);
        let mut copied = 0u64;
        loop {
            let read = reader.read(&mut buffer).map_err(read_error)?;
            if read == 0 {
                break;
            }
            object_hasher.update(&buffer[..read]);
            out.write_all(&buffer[..read]).map_err(write_error)?;
            copied += read as u64;
            progress.advance(read as u64);
        }
        let actual = Digest(*object_hasher.finalize().as_bytes());
        if copied != size || actual != *digest {
            return Err(StoreError::Corrupted {
                store: store.to_string(),
                reference: digest.to_hex(),
                actual: actual.to_hex(),
            });
        }
        summary.objects += 1;
        summary.bytes += size;
    }
    summary.vanished = vanished.iter().map(|&digest| digest.into()).collect();
    for (label, target) in labels.iter().filter(|(_, t)| !vanished.contains(t)) {
        out.write_all(&[LABEL]).map_err(write_error)?;
        out.write_all(&(label.len() as u32).to_le_bytes())
            .map_err(write_error)?;
        out.write_all(label.as_bytes()).map_err(write_error)?;
        out.write_all(&target.0).map_err(write_error)?;
        summary.labels += 1;
    }
    out.write_all(&[END]).map_err(write_error)?;
    out.write_all(&summary.objects.to_le_bytes())
        .map_err(write_error)?;
    out.write_all(&summary.labels.to_le_bytes())
        .map_err(write_error)?;
    let checksum = *out.hasher.finalize().as_bytes();
    let mut inner = out.inner;
    inner.write_all(&checksum).map_err(write_error)?;
    let inner = inner
        .into_inner()
        .map_err(|e| write_error(e.into_error()))?;
    Ok((summary, inner))
}

/// A package read and checked, its objects staged.
struct StagedPackage {
    objects: BTreeMap<Digest, (u64, Staged, Links)>,
    labels: Vec<(String, Digest)>,
    summary: PackageSummary,
}

/// Reads and checks the whole package, staging objects the store lacks.
/// On any failure the staged objects are discarded.
fn stage<R: Read>(
    engine: &Engine,
    store: &StoreId,
    input: R,
    progress: &dyn Progress,
) -> Result<StagedPackage> {
    let mut staged = StagedPackage {
        objects: BTreeMap::new(),
        labels: Vec::new(),
        summary: PackageSummary::default(),
    };
    let result = read_package(engine, store, input, progress, &mut staged);
    if result.is_err() {
        for (_, (_, object, _)) in std::mem::take(&mut staged.objects) {
            engine.discard(object);
        }
    }
    result.map(|()| staged)
}

fn read_package<R: Read>(
    engine: &Engine,
    store: &StoreId,
    input: R,
    progress: &dyn Progress,
    staged: &mut StagedPackage,
) -> Result<()> {
    let refuse = |reason: String| StoreError::InvalidPackage {
        store: store.to_string(),
        reason,
    };
    let mut input = HashingReader {
        inner: BufReader::with_capacity(1 << 16, input),
        hasher: blake3::Hasher::new(),
        progress,
    };
    let mut magic = [0u8; 16];
    input.exact(&mut magic, "its header", store)?;
    if &magic != PACKAGE_MAGIC {
        return Err(refuse(
            "this is not a theater-store package (wrong magic bytes)".into(),
        ));
    }
    let version = u32::from_le_bytes(input.array("its version", store)?);
    if version != PACKAGE_VERSION {
        return Err(refuse(format!(
            "package format version {version} is not supported (this build reads version {PACKAGE_VERSION})"
        )));
    }
    let mut seen = BTreeSet::new();
    loop {
        let [tag] = input.array("its end record", store)?;
        match tag {
            OBJECT => {
                let size = u64::from_le_bytes(input.array("an object header", store)?);
                let digest = Digest(input.array("an object header", store)?);
                if !seen.insert(digest) {
                    return Err(refuse(format!("object {} appears twice", digest.to_hex())));
                }
                let actual = if engine.is_present(store, digest)? {
                    input.discard(size, digest, store)?
                } else {
                    let mut writer = StagingWriter::new(store.clone(), engine.staging_sink(store));
                    match input.copy_to(&mut |bytes| writer.write(bytes), size, digest, store) {
                        Ok(()) => {
                            let (actual, _, object, links) = writer.finish()?;
                            staged.objects.insert(digest, (size, object, links));
                            actual
                        }
                        Err(error) => {
                            writer.abandon();
                            return Err(error);
                        }
                    }
                };
                if actual != digest {
                    return Err(refuse(format!(
                        "object {} is damaged: its bytes hash to {} (the package was altered)",
                        digest.to_hex(),
                        actual.to_hex()
                    )));
                }
                staged.summary.objects += 1;
                staged.summary.bytes += size;
            }
            LABEL => {
                let length = u32::from_le_bytes(input.array("a label", store)?) as usize;
                if length > MAX_LABEL_BYTES {
                    return Err(refuse(format!(
                        "a label of {length} bytes is over the {MAX_LABEL_BYTES} byte limit"
                    )));
                }
                let mut name = vec![0u8; length];
                input.exact(&mut name, "a label", store)?;
                let label =
                    String::from_utf8(name).map_err(|_| refuse("a label is not UTF-8".into()))?;
                validate_label(&label)?;
                let target = Digest(input.array("a label", store)?);
                let available = seen.contains(&target) || engine.is_present(store, target)?;
                if !available {
                    return Err(refuse(format!(
                        "label {label:?} points at {} which is neither in the package nor in the store",
                        target.to_hex()
                    )));
                }
                staged.labels.push((label, target));
                staged.summary.labels += 1;
            }
            END => {
                let objects = u64::from_le_bytes(input.array("its end record", store)?);
                let labels = u64::from_le_bytes(input.array("its end record", store)?);
                let expected = *input.hasher.finalize().as_bytes();
                let mut checksum = [0u8; 32];
                input.exact(&mut checksum, "its checksum", store)?;
                if checksum != expected {
                    return Err(refuse("the package checksum does not match its contents (the package was altered)".into()));
                }
                if (objects, labels) != (staged.summary.objects, staged.summary.labels) {
                    return Err(refuse(format!(
                        "the end record counts {objects} objects and {labels} labels, the package holds {} and {}",
                        staged.summary.objects, staged.summary.labels
                    )));
                }
                let mut extra = [0u8; 1];
                if input
                    .inner
                    .read(&mut extra)
                    .map_err(|e| read_failed(store, e))?
                    != 0
                {
                    return Err(refuse("there are bytes after the end record".into()));
                }
                return Ok(());
            }
            other => {
                return Err(refuse(format!(
                    "unknown record type {other:#04x} (the package is damaged)"
                )));
            }
        }
    }
}

fn read_failed(store: &StoreId, source: io::Error) -> StoreError {
    io_error(store, "reading package", &PathBuf::from("<input>"), source)
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads the package while hashing everything read and reporting progress.
struct HashingReader<'p, R: Read> {
    inner: BufReader<R>,
    hasher: blake3::Hasher,
    progress: &'p dyn Progress,
}

impl<R: Read> HashingReader<'_, R> {
    /// Fills `buffer`, or fails saying the package ended inside `what`.
    fn exact(&mut self, buffer: &mut [u8], what: &str, store: &StoreId) -> Result<()> {
        match self.inner.read_exact(buffer) {
            Ok(()) => {
                self.hasher.update(buffer);
                self.progress.advance(buffer.len() as u64);
                Ok(())
            }
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                Err(truncated(store, what))
            }
            Err(error) => Err(read_failed(store, error)),
        }
    }

    fn array<const N: usize>(&mut self, what: &str, store: &StoreId) -> Result<[u8; N]> {
        let mut bytes = [0u8; N];
        self.exact(&mut bytes, what, store)?;
        Ok(bytes)
    }

    /// Copies `size` bytes of object content to `out`, returning their hash.
    fn copy_to(
        &mut self,
        out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
        size: u64,
        digest: Digest,
        store: &StoreId,
    ) -> Result<()> {
        let mut left = size;
        let mut buffer = vec![0u8; 1 << 16];
        while left > 0 {
            let want = buffer
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let chunk = &mut buffer[..want];
            self.exact(chunk, &format!("object {}", digest.to_hex()), store)?;
            out(chunk).map_err(|source| {
                io_error(
                    store,
                    "writing staged object",
                    &PathBuf::from("<staging>"),
                    source,
                )
            })?;
            left -= want as u64;
        }
        Ok(())
    }

    /// Reads and hashes `size` bytes of content the store already holds.
    fn discard(&mut self, size: u64, digest: Digest, store: &StoreId) -> Result<Digest> {
        let mut hasher = blake3::Hasher::new();
        let mut hash = |bytes: &[u8]| {
            hasher.update(bytes);
            Ok(())
        };
        self.copy_to(&mut hash, size, digest, store)?;
        Ok(Digest(*hasher.finalize().as_bytes()))
    }
}

fn truncated(store: &StoreId, what: &str) -> StoreError {
    StoreError::InvalidPackage {
        store: store.to_string(),
        reason: format!("the package ends in the middle of {what} (it is truncated)"),
    }
}
