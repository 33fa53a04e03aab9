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
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::chain::{CHAIN_STORE, CHECKPOINT_PREFIX, HEAD_PREFIX, validate_actor_id};
use crate::engine::{ChainHead, Change, Engine, Expect, LabelRow, ObjectRow, Staged};
use crate::error::{Result, StoreError, io_error};
use crate::links::Links;
use crate::names::{ContentRef, Digest, MAX_LABEL_BYTES, StoreId, validate_label};
use crate::reach::LinkGraph;
use crate::root::StoreRoot;
use crate::store::ContentStore;
use crate::stream::StagingWriter;
use crate::task::Progress;
use crate::task::blocking;

/// The first bytes of every package.
pub const PACKAGE_MAGIC: &[u8; 16] = b"THEATER-STORE-PK";

/// The newest format version this build writes and reads. Version 2 adds
/// store sections (a whole root in one package) and chain heads; a
/// package that needs neither is written as version 1, which older
/// builds read.
pub const PACKAGE_VERSION: u32 = 2;

/// The version of a package with no store section and no chain head.
const PLAIN_VERSION: u32 = 1;

/// Labels applied per index transaction on import.
const LABELS_PER_TRANSACTION: usize = 1000;

/// The most bytes a chain head's open segment may take in a package (the
/// store keeps under a kilobyte there).
const MAX_OPEN_SEGMENT_BYTES: usize = 64 << 10;

/// An export asks the engine for the bytes of this many small objects
/// at once: a round trip per object made a shared root's export cost
/// about 110 µs an object.
const EXPORT_READ_TOGETHER: usize = 256;
/// The largest object an export asks for with others (engines keep
/// inline only objects under their inline threshold, 16 KiB by
/// default), so that a batch holds at most 16 MiB.
const EXPORT_READ_TOGETHER_MAX: u64 = 64 << 10;

const OBJECT: u8 = b'O';
const LABEL: u8 = b'L';
const CHAIN: u8 = b'C';
const STORE: u8 = b'S';
const END: u8 = b'E';

/// What an export wrote or an import applied, for one store.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PackageSummary {
    /// The store.
    pub store: String,
    /// Objects in the package.
    pub objects: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Labels in the package (chain heads included).
    pub labels: u64,
    /// Of those, event chain heads (in the chain store `_chains`).
    pub chains: u64,
    /// On import: objects the store did not hold before.
    pub new_objects: u64,
    /// On import: their total size.
    pub new_bytes: u64,
    /// On export: objects that a concurrent collection removed before they
    /// could be copied, left out of the package with any labels that
    /// pointed at them (labels moved away from them after the snapshot).
    pub vanished: Vec<ContentRef>,
    /// On import: whether this was a dry run (nothing written).
    pub dry_run: bool,
    /// On import: labels (and chain heads) the store already had, pointing
    /// where the package says.
    pub labels_unchanged: u64,
    /// On import: labels (and chain heads) the store has pointing
    /// elsewhere, kept as they are (unless [`ImportOptions::overwrite`]).
    pub conflicts: Vec<ImportConflict>,
}

/// A label an import found pointing elsewhere than the package says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ImportConflict {
    /// The label (for a chain, `head/` and the actor id).
    pub label: String,
    /// What the store has.
    pub current: ContentRef,
    /// What the package has.
    pub package: ContentRef,
}

/// How an import treats the store.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImportOptions {
    /// Check the package and report what it would change, changing nothing.
    pub dry_run: bool,
    /// Point labels the store has elsewhere at the package's content
    /// anyway. Without it they are kept and reported as conflicts, so that
    /// an older backup never silently replaces newer labels. (A chain
    /// whose head in the store is an older event of the package's chain
    /// moves forward either way.)
    pub overwrite: bool,
}

impl ContentStore {
    /// Writes a package of the labels starting with `prefix` (all labels
    /// for `None`) and the content they reach, each object once: what they
    /// point at, and every object whose ref is written inside that content,
    /// however deep (see [`ContentStore::collect_garbage`]). Without a
    /// prefix, content no label reaches is included too. For the chain
    /// store ([`StoreRoot::chain_store`]), the package holds chain heads
    /// (`--prefix head/ACTOR` for one actor's) and their segments. Progress
    /// is reported in bytes of content. Returns the writer when done.
    #[tracing::instrument(level = "info", skip_all, fields(store = %self.id(), prefix = prefix))]
    pub async fn export_package<W: Write + Send + 'static>(
        &self,
        prefix: Option<&str>,
        out: W,
        progress: impl Progress + 'static,
    ) -> Result<(PackageSummary, W)> {
        self.export_labels(prefix, None, out, Arc::new(progress))
            .await
    }

    /// [`ContentStore::export_package`] of the store as it was right after
    /// change `seq` ([`ContentStore::labels_at`]): the labels starting with
    /// `prefix` then, and the content they reach. Fails with
    /// [`StoreError::ChangesTrimmed`] for a point the log no longer keeps.
    /// Not for the chain store, which keeps no change log.
    #[tracing::instrument(level = "info", skip_all, fields(store = %self.id(), seq = seq, prefix = prefix))]
    pub async fn export_package_at<W: Write + Send + 'static>(
        &self,
        seq: u64,
        prefix: Option<&str>,
        out: W,
        progress: impl Progress + 'static,
    ) -> Result<(PackageSummary, W)> {
        let then: Vec<(String, Digest)> = self
            .labels_at(prefix.unwrap_or(""), seq)
            .await?
            .into_iter()
            .map(|entry| Ok((entry.label, entry.content_ref.digest()?)))
            .collect::<Result<_>>()?;
        self.export_labels(prefix, Some(then), out, Arc::new(progress))
            .await
    }

    /// Writes a package of one store: its labels under `prefix` now, or
    /// the ones given (`then`, read at a past point), and what they reach.
    async fn export_labels<W: Write + Send + 'static>(
        &self,
        prefix: Option<&str>,
        then: Option<Vec<LabelRow>>,
        out: W,
        progress: Arc<dyn Progress>,
    ) -> Result<(PackageSummary, W)> {
        let store = self.clone();
        let prefix = prefix.map(str::to_owned);
        let engine = self.root().engine().await?;
        blocking(move || {
            let version = if store.id() == CHAIN_STORE {
                PACKAGE_VERSION
            } else {
                PLAIN_VERSION
            };
            let id = store.store_id().clone();
            let mut writer = PackageWriter::new(out, version).map_err(write_failed(&id))?;
            let summary = export_section(
                &*engine,
                &store,
                (prefix.as_deref(), then),
                &mut writer,
                &*progress,
            )?;
            let out = writer.finish().map_err(write_failed(&id))?;
            Ok((summary, out))
        })
        .await
    }

    /// [`ContentStore::import_package_with`] with the default options: a
    /// label the store has pointing elsewhere is kept and reported.
    pub async fn import_package<R: Read + Send + 'static>(
        &self,
        input: R,
        progress: impl Progress + 'static,
    ) -> Result<PackageSummary> {
        let progress: Arc<dyn Progress> = Arc::new(progress);
        self.import_package_with(input, ImportOptions::default(), progress)
            .await
    }

    /// Reads a package, checks every object's hash and the package's
    /// checksum, then adds the objects and points the labels at them:
    /// labels the store lacks are created; labels it has pointing
    /// elsewhere are conflicts, kept unless `options.overwrite`. Chain
    /// heads (into the chain store) are verified event by event before
    /// any label moves. Nothing is published unless the whole package is
    /// sound, and nothing at all in a dry run. Progress is reported in
    /// bytes of the package.
    #[tracing::instrument(level = "info", skip_all, fields(store = %self.id(), dry_run = options.dry_run))]
    pub async fn import_package_with<R: Read + Send + 'static>(
        &self,
        input: R,
        options: ImportOptions,
        progress: impl Progress + 'static,
    ) -> Result<PackageSummary> {
        let progress: Arc<dyn Progress> = Arc::new(progress);
        let into = self.store_id().clone();
        let mut summaries = import(self.root(), Some(into), input, options, progress).await?;
        Ok(summaries.pop().unwrap_or_else(|| PackageSummary {
            store: self.id().to_owned(),
            dry_run: options.dry_run,
            ..PackageSummary::default()
        }))
    }
}

impl StoreRoot {
    /// Writes a package of the whole root: every store with all its labels
    /// and objects, and every event chain, one section per store. Sync
    /// records (`_sync`) and the compiled-component cache are left out: a
    /// root restored from the package is a new peer, and compiles again.
    #[tracing::instrument(level = "info", skip_all)]
    pub async fn export_root<W: Write + Send + 'static>(
        &self,
        out: W,
        progress: impl Progress + 'static,
    ) -> Result<(Vec<PackageSummary>, W)> {
        let progress: Arc<dyn Progress> = Arc::new(progress);
        let mut stores: Vec<ContentStore> = Vec::new();
        for summary in self.stores().await? {
            stores.push(self.store(&summary.id)?);
        }
        if self
            .reserved_stores()
            .await?
            .iter()
            .any(|store| store.id() == CHAIN_STORE)
        {
            stores.push(self.chain_store());
        }
        let engine = self.engine().await?;
        blocking(move || {
            let whole = StoreId::reserved("_root");
            let mut writer =
                PackageWriter::new(out, PACKAGE_VERSION).map_err(write_failed(&whole))?;
            let mut summaries = Vec::with_capacity(stores.len());
            for store in &stores {
                writer
                    .store(store.id())
                    .map_err(write_failed(store.store_id()))?;
                summaries.push(export_section(
                    &*engine,
                    store,
                    (None, None),
                    &mut writer,
                    &*progress,
                )?);
            }
            let out = writer.finish().map_err(write_failed(&whole))?;
            Ok((summaries, out))
        })
        .await
    }

    /// Imports a package of a whole root ([`StoreRoot::export_root`]) into
    /// this one, store by store, as [`ContentStore::import_package_with`]
    /// imports one. Returns a summary per store.
    #[tracing::instrument(level = "info", skip_all, fields(dry_run = options.dry_run))]
    pub async fn import_root<R: Read + Send + 'static>(
        &self,
        input: R,
        options: ImportOptions,
        progress: impl Progress + 'static,
    ) -> Result<Vec<PackageSummary>> {
        let progress: Arc<dyn Progress> = Arc::new(progress);
        import(self, None, input, options, progress).await
    }
}

/// Writes one store's records: its objects, then its labels (chain heads
/// for the chain store). Blocking.
/// Writes one store's section: the labels starting with the prefix (as
/// they are now, or the ones given, read at a past point) and the content
/// they reach; without a prefix or past labels, every object.
fn export_section<W: Write>(
    engine: &dyn Engine,
    store: &ContentStore,
    (prefix, then): (Option<&str>, Option<Vec<LabelRow>>),
    writer: &mut PackageWriter<W>,
    progress: &dyn Progress,
) -> Result<PackageSummary> {
    let id = store.store_id();
    // Labels and objects as of one moment; content a collection removes
    // after it is left out below, with the labels that pointed at it.
    let snapshot = engine.snapshot(id, prefix.unwrap_or(""))?;
    let past = then.is_some();
    let (mut labels, mut objects) = (then.unwrap_or(snapshot.labels), snapshot.objects);
    // Sorted by digest (as the local engine lists them already), so that
    // a size is a binary search away and the package's objects come in
    // digest order whichever engine wrote it.
    objects.sort_unstable_by_key(|row| row.digest);
    let size_of = |objects: &[ObjectRow], digest: Digest| {
        objects
            .binary_search_by_key(&digest, |row| row.digest)
            .ok()
            .map(|at| objects[at].size)
    };
    let chains = id.as_str() == CHAIN_STORE;
    let handle = tokio::runtime::Handle::current();
    // A chain head's row, with its open segment, read as it is now, and
    // the chain's checkpoint if it was trimmed (which goes with its head
    // whatever the prefix).
    let mut heads = Vec::new();
    if chains {
        for (label, _) in labels.iter().filter(|(l, _)| l.starts_with(HEAD_PREFIX)) {
            let chain = store.root().event_chain(&label[HEAD_PREFIX.len()..])?;
            let checkpoint = handle.block_on(chain.checkpoint_row())?;
            if let Some(row) = handle.block_on(engine.chain_tip(id, label))? {
                heads.push((label.clone(), row, checkpoint));
            }
        }
        for (label, _, checkpoint) in &heads {
            let actor = &label[HEAD_PREFIX.len()..];
            let checkpoint_label = format!("{CHECKPOINT_PREFIX}{actor}");
            if let Some((digest, _)) = checkpoint
                && !labels.iter().any(|(label, _)| *label == checkpoint_label)
            {
                labels.push((checkpoint_label, *digest));
            }
        }
    }
    // The objects to write, in digest order, with their sizes (`None`:
    // not held, reported as vanished). A whole store's are its object
    // rows, turned into these in place.
    let selected: Vec<(Digest, Option<u64>)> = match prefix {
        None if !past => objects
            .into_iter()
            .map(|row| (row.digest, Some(row.size)))
            .collect(),
        // A chain's segments, from its head.
        Some(_) if chains => {
            let mut reached = BTreeSet::new();
            for (label, row, checkpoint) in &heads {
                let actor = &label[HEAD_PREFIX.len()..];
                let chain = store.root().event_chain(actor)?;
                let walk = chain.reachable_from(row.clone(), checkpoint.clone());
                reached.extend(handle.block_on(walk)?);
            }
            reached
                .into_iter()
                .map(|digest| (digest, size_of(&objects, digest)))
                .collect()
        }
        // What the chosen labels reach, through refs written inside
        // content too, so that the package holds every object the source
        // could resolve from them.
        _ => {
            let held = objects.iter().map(|row| row.digest).collect();
            let graph = LinkGraph::load(engine, id, &held, false)?;
            let reached: BTreeSet<Digest> = graph
                .reachable(labels.iter().map(|(_, target)| *target))
                .into_iter()
                .collect();
            reached
                .into_iter()
                .filter_map(|digest| Some((digest, Some(size_of(&objects, digest)?))))
                .collect()
        }
    };
    progress.start(selected.iter().filter_map(|(_, size)| *size).sum());
    let mut summary = PackageSummary {
        store: id.to_string(),
        ..PackageSummary::default()
    };
    let mut vanished = BTreeSet::new();
    let small = |size: Option<u64>| size.is_some_and(|size| size <= EXPORT_READ_TOGETHER_MAX);
    for batch in selected.chunks(EXPORT_READ_TOGETHER) {
        // The batch's small objects that the index holds inline, read
        // together (one round trip on a shared root, one read
        // transaction on a local one); the rest one at a time. Either way
        // the writer hashes what it writes against the digest.
        let together: Vec<Digest> = batch
            .iter()
            .filter(|(_, size)| small(*size))
            .map(|(digest, _)| *digest)
            .collect();
        let mut inline = match together.is_empty() {
            true => Vec::new(),
            // Bounded already: at most a batch of small objects.
            false => handle.block_on(engine.read_inline_many(id, &together, u64::MAX))?,
        }
        .into_iter();
        for &(digest, size) in batch {
            let held_inline = if small(size) {
                inline.next().flatten()
            } else {
                None
            };
            let object = match held_inline {
                Some(bytes) => Some(Box::new(io::Cursor::new(bytes)) as Box<dyn Read + Send>),
                None => engine.open_object(id, digest)?,
            };
            let (Some(object), Some(size)) = (object, size) else {
                vanished.insert(digest);
                continue;
            };
            writer.object(id, digest, size, object, progress)?;
            summary.objects += 1;
            summary.bytes += size;
        }
    }
    summary.vanished = vanished.iter().map(|&digest| digest.into()).collect();
    let write_error = write_failed(id);
    for (label, target) in labels.iter().filter(|(_, t)| !vanished.contains(t)) {
        if chains && label.starts_with(HEAD_PREFIX) {
            continue;
        }
        writer.label(label, *target).map_err(&write_error)?;
        summary.labels += 1;
    }
    for (label, row, _) in &heads {
        writer.chain(label, row).map_err(&write_error)?;
        summary.labels += 1;
        summary.chains += 1;
    }
    Ok(summary)
}

/// Streams a package out, hashing every byte for the closing checksum.
struct PackageWriter<W: Write> {
    out: HashingWriter<BufWriter<W>>,
    objects: u64,
    labels: u64,
    buffer: Vec<u8>,
}

impl<W: Write> PackageWriter<W> {
    fn new(out: W, version: u32) -> io::Result<Self> {
        let mut out = HashingWriter {
            inner: BufWriter::with_capacity(1 << 16, out),
            hasher: blake3::Hasher::new(),
        };
        out.write_all(PACKAGE_MAGIC)?;
        out.write_all(&version.to_le_bytes())?;
        Ok(Self {
            out,
            objects: 0,
            labels: 0,
            buffer: vec![0u8; 1 << 16],
        })
    }

    /// Starts the section of store `id` (whole-root packages).
    fn store(&mut self, id: &str) -> io::Result<()> {
        self.out.write_all(&[STORE])?;
        self.bytes(id.as_bytes())
    }

    /// A length-prefixed byte string.
    fn bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        let length = u32::try_from(bytes.len()).map_err(io::Error::other)?;
        self.out.write_all(&length.to_le_bytes())?;
        self.out.write_all(bytes)
    }

    /// Copies an object, checking that its bytes still hash to `digest`.
    fn object(
        &mut self,
        store: &StoreId,
        digest: Digest,
        size: u64,
        object: Box<dyn Read + Send>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let write_error = write_failed(store);
        let path = PathBuf::from(format!("<object {}>", digest.to_hex()));
        let read_error = |source| io_error(store, "reading object for export", &path, source);
        self.out.write_all(&[OBJECT]).map_err(&write_error)?;
        self.out
            .write_all(&size.to_le_bytes())
            .map_err(&write_error)?;
        self.out.write_all(&digest.0).map_err(&write_error)?;
        let mut object_hasher = blake3::Hasher::new();
        let mut reader = object.take(size);
        let mut copied = 0u64;
        loop {
            let read = reader.read(&mut self.buffer).map_err(read_error)?;
            if read == 0 {
                break;
            }
            object_hasher.update(&self.buffer[..read]);
            self.out
                .write_all(&self.buffer[..read])
                .map_err(&write_error)?;
            copied += read as u64;
            progress.advance(read as u64);
        }
        let actual = Digest(*object_hasher.finalize().as_bytes());
        if copied != size || actual != digest {
            return Err(StoreError::Corrupted {
                store: store.to_string(),
                reference: digest.to_hex(),
                actual: actual.to_hex(),
            });
        }
        self.objects += 1;
        Ok(())
    }

    fn label(&mut self, label: &str, target: Digest) -> io::Result<()> {
        self.out.write_all(&[LABEL])?;
        self.bytes(label.as_bytes())?;
        self.out.write_all(&target.0)?;
        self.labels += 1;
        Ok(())
    }

    /// A chain's head row: label, newest event, length, open segment and
    /// newest sealed segment.
    fn chain(&mut self, label: &str, head: &ChainHead) -> io::Result<()> {
        self.out.write_all(&[CHAIN])?;
        self.bytes(label.as_bytes())?;
        self.out.write_all(&head.head.0)?;
        self.out
            .write_all(&head.length.unwrap_or(0).to_le_bytes())?;
        match &head.open {
            Some(open) => {
                self.out.write_all(&[1])?;
                self.bytes(open)?;
            }
            None => self.out.write_all(&[0])?,
        }
        match &head.sealed {
            Some(sealed) => {
                self.out.write_all(&[1])?;
                self.out.write_all(&sealed.0)?;
            }
            None => self.out.write_all(&[0])?,
        }
        self.labels += 1;
        Ok(())
    }

    /// The end record and the checksum; hands back the output.
    fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[END])?;
        self.out.write_all(&self.objects.to_le_bytes())?;
        self.out.write_all(&self.labels.to_le_bytes())?;
        let checksum = *self.out.hasher.finalize().as_bytes();
        let mut inner = self.out.inner;
        inner.write_all(&checksum)?;
        inner.into_inner().map_err(|e| e.into_error())
    }
}

fn write_failed(store: &StoreId) -> impl Fn(io::Error) -> StoreError + '_ {
    move |source| io_error(store, "writing package", &PathBuf::from("<output>"), source)
}

/// Objects published together (one `apply_all`), so that spilled content
/// comes back into memory a batch at a time.
const OBJECTS_PER_BATCH: usize = 1024;

/// Where a staged package keeps an object until it is published.
enum Held {
    /// Staged by the engine (small content in memory, large in a file).
    Staged(Staged),
    /// Small content written to the package's [`Spill`] file.
    Spilled { offset: u64, len: usize },
}

/// Small content past the first `Options::import_memory_bytes` of a package,
/// kept in one temporary file (in a local root's directory, else the
/// system's), so that importing a package takes memory for its records,
/// not its content: nothing is published before the whole package is
/// checked, so everything waits somewhere.
struct Spill {
    dir: Option<PathBuf>,
    file: Option<BufWriter<std::fs::File>>,
    len: u64,
    in_memory: u64,
    memory_budget: u64,
}

impl Spill {
    fn new(dir: Option<PathBuf>, memory_budget: u64) -> Self {
        Self {
            dir,
            file: None,
            len: 0,
            in_memory: 0,
            memory_budget,
        }
    }

    /// Keeps `staged` in memory while the budget lasts, else in the file.
    fn keep(&mut self, staged: Staged) -> io::Result<Held> {
        let Staged::Inline(bytes) = &staged else {
            return Ok(Held::Staged(staged));
        };
        let len = bytes.len();
        if self.in_memory + len as u64 <= self.memory_budget {
            self.in_memory += len as u64;
            return Ok(Held::Staged(staged));
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let file = match &self.dir {
                    Some(dir) => tempfile::tempfile_in(dir)?,
                    None => tempfile::tempfile()?,
                };
                self.file.insert(BufWriter::with_capacity(1 << 20, file))
            }
        };
        file.write_all(bytes)?;
        let held = Held::Spilled {
            offset: self.len,
            len,
        };
        self.len += len as u64;
        Ok(held)
    }

    /// `source`, from the spill file, as the store's error.
    fn error(&self, store: &StoreId, source: io::Error) -> StoreError {
        let dir = self.dir.clone().unwrap_or_else(std::env::temp_dir);
        io_error(
            store,
            "keeping package content in a temporary file",
            &dir,
            source,
        )
    }

    /// Makes everything kept readable by [`Spill::take`].
    fn finish(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), Write::flush)
    }

    /// The staged object `held` stands for, read back if it was spilled.
    /// Only after [`Spill::finish`].
    fn take(&mut self, held: Held) -> io::Result<Staged> {
        let (offset, len) = match held {
            Held::Staged(staged) => return Ok(staged),
            Held::Spilled { offset, len } => (offset, len),
        };
        let file = self
            .file
            .as_mut()
            .expect("spilled content has a file")
            .get_mut();
        file.seek(io::SeekFrom::Start(offset))?;
        let mut bytes = vec![0; len];
        file.read_exact(&mut bytes)?;
        Ok(Staged::Inline(Arc::new(bytes)))
    }
}

/// A package read and checked, its objects staged. Records name their
/// store by its section's index (a [`Section`]), so that a package of a
/// million objects keeps no store id per object.
struct StagedPackage {
    /// The store of each section, in the package's order.
    sections: Vec<StoreId>,
    /// One per section, in the same order.
    summaries: Vec<PackageSummary>,
    /// Objects the package holds that their store lacks, staged.
    objects: BTreeMap<(Section, Digest), StagedObject>,
    /// Objects the package holds that their store already has.
    present: BTreeSet<(Section, Digest)>,
    /// Labels, in the package's order (so each section's together).
    labels: Vec<(Section, Box<str>, Digest)>,
    chains: Vec<(String, ChainHead)>,
    spill: Spill,
}

/// The index of a package's store section in [`StagedPackage::sections`].
type Section = u32;

/// A staged object's size, where its bytes wait, and the refs written
/// inside it (boxed, and only when there are some: most content names
/// none, and an empty list would take 32 bytes in each of a million
/// records).
type StagedObject = (u64, Held, Option<Box<Links>>);

impl StagedPackage {
    /// Starts a section for `store`, whose records follow.
    fn open_section(&mut self, store: StoreId) {
        self.summaries.push(PackageSummary {
            store: store.to_string(),
            ..PackageSummary::default()
        });
        self.sections.push(store);
    }

    /// Whether the package holds `digest` in `section`'s store.
    fn holds(&self, section: Section, digest: Digest) -> bool {
        self.objects.contains_key(&(section, digest)) || self.present.contains(&(section, digest))
    }
}

/// Reads, checks and stages a package (into store `into`, or a whole
/// root's for `None`), then publishes it as `options` say.
async fn import<R: Read + Send + 'static>(
    root: &StoreRoot,
    into: Option<StoreId>,
    input: R,
    options: ImportOptions,
    progress: Arc<dyn Progress>,
) -> Result<Vec<PackageSummary>> {
    let engine = root.engine().await?;
    let spill = Spill::new(
        root.path().map(Path::to_path_buf),
        root.options().import_memory_bytes,
    );
    let staged = blocking({
        let engine = Arc::clone(&engine);
        move || stage(&*engine, into.as_ref(), input, spill, &*progress)
    })
    .await?;
    publish(root, &*engine, staged, options).await
}

/// Publishes a staged package: objects first, then (after every chain in
/// it verified) labels and chain heads, each only where the store lacks
/// it, agrees, or `options.overwrite`.
async fn publish(
    root: &StoreRoot,
    engine: &dyn Engine,
    staged: StagedPackage,
    options: ImportOptions,
) -> Result<Vec<PackageSummary>> {
    let StagedPackage {
        sections,
        mut summaries,
        objects,
        present: _,
        mut labels,
        chains,
        mut spill,
    } = staged;
    let chain_store = StoreId::reserved(CHAIN_STORE);
    // Where the chain store's records are counted (a package with chains
    // has its section).
    let chain_section = || {
        sections
            .iter()
            .position(|store| *store == chain_store)
            .expect("a chain record belongs to the chain store's section")
    };
    for summary in &mut summaries {
        summary.dry_run = options.dry_run;
    }
    if options.dry_run {
        for ((section, _), (size, held, _)) in objects {
            let at = section as usize;
            summaries[at].new_objects += 1;
            summaries[at].new_bytes += size;
            if let Held::Staged(staged) = held {
                engine.discard(staged);
            }
        }
    } else {
        let whole = StoreId::reserved("_root");
        spill
            .finish()
            .map_err(|source| spill.error(&whole, source))?;
        let mut objects = objects.into_iter().peekable();
        let mut failure = None;
        while objects.peek().is_some() {
            // A batch at a time, so that spilled content is read back a
            // batch at a time.
            let batch: Vec<_> = objects
                .by_ref()
                .take(OBJECTS_PER_BATCH)
                .map(|((section, digest), object)| {
                    (section, sections[section as usize].clone(), digest, object)
                })
                .collect();
            let read = blocking(move || {
                let mut owners = Vec::with_capacity(batch.len());
                let mut changes = Vec::with_capacity(batch.len());
                for (section, store, digest, (size, held, links)) in batch {
                    let staged = spill
                        .take(held)
                        .map_err(|source| spill.error(&store, source))?;
                    owners.push((section, size));
                    changes.push(Change::AddObject {
                        store,
                        digest,
                        size,
                        staged,
                        label: None,
                        links: links.map(|links| *links).unwrap_or_default(),
                    });
                }
                Ok((spill, owners, changes))
            })
            .await;
            let (back, owners, changes) = match read {
                Ok(read) => read,
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            };
            spill = back;
            for ((section, size), added) in owners.iter().zip(engine.apply_all(changes).await) {
                match added {
                    Ok(true) => {
                        let at = *section as usize;
                        summaries[at].new_objects += 1;
                        summaries[at].new_bytes += size;
                    }
                    Ok(false) => {}
                    Err(error) => {
                        failure.get_or_insert(error);
                    }
                }
            }
            if failure.is_some() {
                break;
            }
        }
        if let Some(error) = failure {
            // What was not published leaves no staged file behind.
            for (_, (_, held, _)) in objects {
                if let Held::Staged(staged) = held {
                    engine.discard(staged);
                }
            }
            return Err(error);
        }
    }
    // Chains are verified, their segments now in place, before any label
    // or head moves: a chain that does not check out refuses the package.
    // A trimmed chain's checkpoint goes with its head (see below).
    let mut checkpoints: BTreeMap<String, Digest> = labels
        .extract_if(.., |(section, label, _)| {
            sections[*section as usize] == chain_store && label.starts_with(CHECKPOINT_PREFIX)
        })
        .map(|(_, label, digest)| (label[CHECKPOINT_PREFIX.len()..].to_owned(), digest))
        .collect();
    let mut checkpoint_moves = Vec::new();
    let mut chain_plans = Vec::with_capacity(chains.len());
    for (label, head) in chains {
        let chain = root.event_chain(&label[HEAD_PREFIX.len()..])?;
        let current = engine.label_target(&chain_store, &label).await?;
        let at = chain_section();
        let checkpoint = match checkpoints.remove(chain.actor()) {
            Some(digest) if !options.dry_run => {
                let read = chain.read_checkpoint(digest).await;
                let checkpoint = read.map_err(|error| StoreError::InvalidPackage {
                    store: CHAIN_STORE.into(),
                    reason: format!("{error}; no label was moved"),
                })?;
                Some((digest, checkpoint))
            }
            Some(digest) => {
                // A dry run stages nothing it could read: it only says
                // whether the checkpoint differs.
                if engine
                    .label_target(&chain_store, &chain.checkpoint_label())
                    .await?
                    == Some(digest)
                {
                    summaries[at].labels_unchanged += 1;
                }
                None
            }
            None => None,
        };
        let plan = if current == Some(head.head) {
            summaries[at].labels_unchanged += 1;
            checkpoint_moves.extend(checkpoint.map(|checkpoint| (chain, checkpoint)));
            continue;
        } else if options.dry_run {
            None
        } else {
            let trimmed_at = checkpoint
                .as_ref()
                .map(|(_, checkpoint)| checkpoint.clone());
            let (report, events) = chain.verify_row(head.clone(), trimmed_at).await?;
            if let Some(broken) = &report.broken {
                return Err(StoreError::InvalidPackage {
                    store: CHAIN_STORE.into(),
                    reason: format!(
                        "the chain of actor {} does not verify: {broken}; no label was moved",
                        chain.actor()
                    ),
                });
            }
            Some(events)
        };
        // A head that is an older event of the package's chain moves on.
        let older = |events: &Vec<ContentRef>| {
            current.is_some_and(|current| events.contains(&ContentRef::from(current)))
        };
        match current {
            Some(current) if !options.overwrite && !plan.as_ref().is_some_and(older) => {
                summaries[at].conflicts.push(ImportConflict {
                    label: label.clone(),
                    current: current.into(),
                    package: head.head.into(),
                });
                // Another chain's checkpoint is not this one's to move.
                if checkpoint.is_some() {
                    summaries[at].labels_unchanged += 1;
                }
            }
            _ => {
                checkpoint_moves.extend(checkpoint.map(|checkpoint| (chain, checkpoint)));
                chain_plans.push((label, head, current));
            }
        }
    }
    // A checkpoint with no head in the package trims nothing here.
    if !checkpoints.is_empty() {
        let at = chain_section();
        summaries[at].labels_unchanged += checkpoints.len() as u64;
    }
    // Labels go in chunks, so that a package with many labels never
    // holds the root's write lock for long; a failure part way leaves
    // some labels applied, and importing again finishes the job. Each
    // chunk applies only if its labels still hold what was read;
    // otherwise it is read and decided again.
    for section_labels in labels.chunk_by(|a, b| a.0 == b.0) {
        let at = section_labels[0].0 as usize;
        let store = &sections[at];
        for chunk in section_labels.chunks(LABELS_PER_TRANSACTION) {
            loop {
                let mut decided = PackageSummary::default();
                let (writes, expected) =
                    plan_labels(engine, store, chunk, options, &mut decided).await?;
                let applied = options.dry_run || {
                    let change = Change::SetLabels {
                        store: store.clone(),
                        labels: writes,
                        expected: Some(expected),
                    };
                    engine.apply(change).await?
                };
                if applied {
                    summaries[at].labels_unchanged += decided.labels_unchanged;
                    summaries[at].conflicts.extend(decided.conflicts);
                    break;
                }
            }
        }
    }
    // A checkpoint only moves forward, and before its head: until the
    // head reaches it, a chain walk never meets its boundary and checks
    // the chain whole.
    for (chain, (digest, checkpoint)) in checkpoint_moves {
        let at = chain_section();
        let current = chain.checkpoint_row().await?;
        let newer = current
            .as_ref()
            .is_none_or(|(_, current)| current.before < checkpoint.before);
        if !newer {
            summaries[at].labels_unchanged += 1;
            continue;
        }
        let change = Change::SetLabel {
            store: chain_store.clone(),
            label: chain.checkpoint_label(),
            target: Some(digest),
            expect: Expect::Exactly(current.map(|(digest, _)| digest)),
        };
        if !engine.apply(change).await? {
            return Err(StoreError::InvalidPackage {
                store: CHAIN_STORE.into(),
                reason: format!(
                    "the checkpoint of actor {} moved while it was imported; import again",
                    chain.actor()
                ),
            });
        }
    }
    if !options.dry_run {
        // Each head moves only from what it was decided against: a chain
        // that grew meanwhile is never overwritten.
        for (label, head, expected) in chain_plans {
            let change = Change::SetChainHead {
                store: chain_store.clone(),
                label: label.clone(),
                head,
                expected,
            };
            if !engine.apply(change).await? {
                return Err(StoreError::InvalidPackage {
                    store: CHAIN_STORE.into(),
                    reason: format!("{label} moved while it was imported; import again"),
                });
            }
        }
    }
    Ok(summaries)
}

/// Decides what importing `labels` into `store` does: which to write (with
/// what they hold now, for a compare-and-swap), which already agree, and
/// which conflict.
async fn plan_labels(
    engine: &dyn Engine,
    store: &StoreId,
    labels: &[(Section, Box<str>, Digest)],
    options: ImportOptions,
    summary: &mut PackageSummary,
) -> Result<LabelWrites> {
    let mut writes = Vec::new();
    let mut expected = Vec::new();
    for (_, label, target) in labels {
        let current = engine.label_target(store, label).await?;
        match current {
            Some(current) if current == *target => summary.labels_unchanged += 1,
            Some(current) if !options.overwrite => summary.conflicts.push(ImportConflict {
                label: label.to_string(),
                current: current.into(),
                package: (*target).into(),
            }),
            _ => {
                writes.push((label.to_string(), Some(*target)));
                expected.push(current);
            }
        }
    }
    Ok((writes, expected))
}

/// Label writes and, one per label, what it must hold for them to apply.
type LabelWrites = (Vec<(String, Option<Digest>)>, Vec<Option<Digest>>);

/// Reads and checks the whole package, staging objects the stores lack.
/// On any failure the staged objects are discarded.
fn stage<R: Read>(
    engine: &dyn Engine,
    into: Option<&StoreId>,
    input: R,
    spill: Spill,
    progress: &dyn Progress,
) -> Result<StagedPackage> {
    let mut staged = StagedPackage {
        sections: Vec::new(),
        summaries: Vec::new(),
        objects: BTreeMap::new(),
        present: BTreeSet::new(),
        labels: Vec::new(),
        chains: Vec::new(),
        spill,
    };
    let result = read_package(engine, into, input, progress, &mut staged);
    if result.is_err() {
        for (_, (_, object, _)) in std::mem::take(&mut staged.objects) {
            if let Held::Staged(object) = object {
                engine.discard(object);
            }
        }
    }
    result.map(|()| staged)
}

/// The store a store section names: an ordinary store, or the chain store.
fn section_store(id: &str) -> std::result::Result<StoreId, String> {
    if id == CHAIN_STORE {
        return Ok(StoreId::reserved(CHAIN_STORE));
    }
    StoreId::parse(id).map_err(|error| format!("a store section names {id:?}: {error}"))
}

fn read_package<R: Read>(
    engine: &dyn Engine,
    into: Option<&StoreId>,
    input: R,
    progress: &dyn Progress,
    staged: &mut StagedPackage,
) -> Result<()> {
    // Errors name the store being read into, or the section being read.
    let mut current: Option<StoreId> = into.cloned();
    let whole = StoreId::reserved("_root");
    let naming = |current: &Option<StoreId>| current.clone().unwrap_or_else(|| whole.clone());
    let refuse = |current: &Option<StoreId>, reason: String| StoreError::InvalidPackage {
        store: naming(current).to_string(),
        reason,
    };
    if let Some(store) = into {
        staged.open_section(store.clone());
    }
    let mut input = HashingReader {
        inner: BufReader::with_capacity(1 << 16, input),
        hasher: blake3::Hasher::new(),
        progress,
    };
    let mut magic = [0u8; 16];
    input.exact(&mut magic, "its header", &naming(&current))?;
    if &magic != PACKAGE_MAGIC {
        return Err(refuse(
            &current,
            "this is not a theater-store package (wrong magic bytes)".into(),
        ));
    }
    let version = u32::from_le_bytes(input.array("its version", &naming(&current))?);
    if !(PLAIN_VERSION..=PACKAGE_VERSION).contains(&version) {
        return Err(refuse(
            &current,
            format!(
                "package format version {version} is not supported (this build reads versions \
                 {PLAIN_VERSION} to {PACKAGE_VERSION})"
            ),
        ));
    }
    let (mut objects, mut labels) = (0u64, 0u64);
    loop {
        let at = naming(&current);
        let [tag] = input.array("its end record", &at)?;
        // Every record but a section start and the end belongs to a store.
        let store = match (tag, &current) {
            (STORE | END, _) => None,
            (_, Some(store)) => Some(store.clone()),
            (OBJECT | LABEL | CHAIN, None) => {
                return Err(refuse(
                    &current,
                    "a record comes before any store section".into(),
                ));
            }
            _ => None,
        };
        // The section the record belongs to (the last one opened).
        let section = staged.sections.len().saturating_sub(1);
        let key = section as Section;
        match tag {
            STORE if version >= 2 => {
                if into.is_some() {
                    return Err(refuse(
                        &current,
                        "this package holds a whole root (store sections): import it with \
                         `import --all` (StoreRoot::import_root)"
                            .into(),
                    ));
                }
                let id = input.string("a store section", &at)?;
                let store = section_store(&id).map_err(|reason| refuse(&current, reason))?;
                if staged.sections.contains(&store) {
                    return Err(refuse(&current, format!("store {id} has two sections")));
                }
                staged.open_section(store.clone());
                current = Some(store);
            }
            OBJECT => {
                let store = store.expect("checked above");
                let size = u64::from_le_bytes(input.array("an object header", &store)?);
                let digest = Digest(input.array("an object header", &store)?);
                if staged.holds(key, digest) {
                    return Err(refuse(
                        &current,
                        format!("object {} appears twice", digest.to_hex()),
                    ));
                }
                let actual = if engine.is_present(&store, digest)? {
                    staged.present.insert((key, digest));
                    input.discard(size, digest, &store)?
                } else {
                    let mut writer = StagingWriter::new(store.clone(), engine.staging_sink(&store));
                    match input.copy_to(&mut |bytes| writer.write(bytes), size, digest, &store) {
                        Ok(()) => {
                            let (actual, _, object, links) = writer.finish()?;
                            let held = staged
                                .spill
                                .keep(object)
                                .map_err(|source| staged.spill.error(&store, source))?;
                            let links = (links != Links::default()).then(|| Box::new(links));
                            staged.objects.insert((key, digest), (size, held, links));
                            actual
                        }
                        Err(error) => {
                            writer.abandon();
                            return Err(error);
                        }
                    }
                };
                if actual != digest {
                    return Err(refuse(
                        &current,
                        format!(
                            "object {} is damaged: its bytes hash to {} (the package was altered)",
                            digest.to_hex(),
                            actual.to_hex()
                        ),
                    ));
                }
                staged.summaries[section].objects += 1;
                staged.summaries[section].bytes += size;
                objects += 1;
            }
            LABEL => {
                let store = store.expect("checked above");
                let label = input.label(&store)?;
                validate_label(&label)?;
                let target = Digest(input.array("a label", &store)?);
                let available = staged.holds(key, target) || engine.is_present(&store, target)?;
                if !available {
                    return Err(refuse(
                        &current,
                        format!(
                            "label {label:?} points at {} which is neither in the package nor in \
                             the store",
                            target.to_hex()
                        ),
                    ));
                }
                staged.labels.push((key, label.into_boxed_str(), target));
                staged.summaries[section].labels += 1;
                labels += 1;
            }
            CHAIN if version >= 2 => {
                let store = store.expect("checked above");
                if store.as_str() != CHAIN_STORE {
                    return Err(refuse(
                        &current,
                        format!("a chain head belongs in the chain store {CHAIN_STORE}"),
                    ));
                }
                let label = input.label(&store)?;
                let actor = label.strip_prefix(HEAD_PREFIX).ok_or_else(|| {
                    refuse(
                        &current,
                        format!("chain head {label:?} does not start with {HEAD_PREFIX}"),
                    )
                })?;
                validate_actor_id(actor)?;
                let head = Digest(input.array("a chain head", &store)?);
                let length = u64::from_le_bytes(input.array("a chain head", &store)?);
                let [has_open] = input.array("a chain head", &store)?;
                let open = match has_open {
                    0 => None,
                    _ => {
                        let length =
                            u32::from_le_bytes(input.array("a chain head", &store)?) as usize;
                        if length > MAX_OPEN_SEGMENT_BYTES {
                            return Err(refuse(
                                &current,
                                format!(
                                    "chain head {label:?} has an open segment of {length} bytes"
                                ),
                            ));
                        }
                        let mut open = vec![0u8; length];
                        input.exact(&mut open, "a chain head", &store)?;
                        Some(open)
                    }
                };
                let [has_sealed] = input.array("a chain head", &store)?;
                let sealed = match has_sealed {
                    0 => None,
                    _ => Some(Digest(input.array("a chain head", &store)?)),
                };
                if let Some(sealed) = sealed
                    && !staged.holds(key, sealed)
                    && !engine.is_present(&store, sealed)?
                {
                    return Err(refuse(
                        &current,
                        format!(
                            "chain head {label:?} names segment {} which is neither in the \
                             package nor in the store",
                            sealed.to_hex()
                        ),
                    ));
                }
                staged.chains.push((
                    label,
                    ChainHead {
                        head,
                        length: Some(length),
                        open,
                        sealed,
                    },
                ));
                staged.summaries[section].labels += 1;
                staged.summaries[section].chains += 1;
                labels += 1;
            }
            END => {
                let counted_objects = u64::from_le_bytes(input.array("its end record", &at)?);
                let counted_labels = u64::from_le_bytes(input.array("its end record", &at)?);
                let expected = *input.hasher.finalize().as_bytes();
                let mut checksum = [0u8; 32];
                input.exact(&mut checksum, "its checksum", &at)?;
                if checksum != expected {
                    return Err(refuse(
                        &current,
                        "the package checksum does not match its contents (the package was altered)"
                            .into(),
                    ));
                }
                if (counted_objects, counted_labels) != (objects, labels) {
                    return Err(refuse(
                        &current,
                        format!(
                            "the end record counts {counted_objects} objects and \
                             {counted_labels} labels, the package holds {objects} and {labels}"
                        ),
                    ));
                }
                let mut extra = [0u8; 1];
                if input
                    .inner
                    .read(&mut extra)
                    .map_err(|e| read_failed(&at, e))?
                    != 0
                {
                    return Err(refuse(
                        &current,
                        "there are bytes after the end record".into(),
                    ));
                }
                return Ok(());
            }
            other => {
                return Err(refuse(
                    &current,
                    format!("unknown record type {other:#04x} (the package is damaged)"),
                ));
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

    /// A length-prefixed UTF-8 string of at most [`MAX_LABEL_BYTES`].
    fn string(&mut self, what: &str, store: &StoreId) -> Result<String> {
        let length = u32::from_le_bytes(self.array(what, store)?) as usize;
        let refuse = |reason: String| StoreError::InvalidPackage {
            store: store.to_string(),
            reason,
        };
        if length > MAX_LABEL_BYTES {
            return Err(refuse(format!(
                "{what} of {length} bytes is over the {MAX_LABEL_BYTES} byte limit"
            )));
        }
        let mut bytes = vec![0u8; length];
        self.exact(&mut bytes, what, store)?;
        String::from_utf8(bytes).map_err(|_| refuse(format!("{what} is not UTF-8")))
    }

    /// A label's name.
    fn label(&mut self, store: &StoreId) -> Result<String> {
        self.string("a label", store)
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
