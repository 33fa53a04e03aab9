//! Streaming writes, verified streaming reads and verified range reads.

mod common;

use std::path::PathBuf;

use common::{object_path, temp_root, unrepeated as content};
use theater_store::{ContentRef, ContentStore, StoreError, StoreRoot};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

const MIB: usize = 1 << 20;

/// A reader that yields `bytes` in uneven pieces, as a socket would.
struct Uneven {
    bytes: Vec<u8>,
    at: usize,
    step: usize,
}

impl tokio::io::AsyncRead for Uneven {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.step = self.step * 7 % 65_521 + 1;
        let take = self
            .step
            .min(out.remaining())
            .min(self.bytes.len() - self.at);
        let at = self.at;
        out.put_slice(&self.bytes[at..at + take]);
        self.at += take;
        std::task::Poll::Ready(Ok(()))
    }
}

fn uneven(bytes: &[u8]) -> Uneven {
    Uneven {
        bytes: bytes.to_vec(),
        at: 0,
        step: 1,
    }
}

fn outboard_path(root: &StoreRoot, store: &ContentStore, content_ref: &ContentRef) -> PathBuf {
    let object = object_path(root, store, content_ref);
    let shard = object.parent().unwrap();
    let objects = shard.parent().unwrap();
    objects
        .parent()
        .unwrap()
        .join("outboards")
        .join(shard.file_name().unwrap())
        .join(object.file_name().unwrap())
}

fn tmp_files(root: &StoreRoot, store: &ContentStore) -> Vec<PathBuf> {
    let object = object_path(root, store, &ContentRef::for_content(b""));
    let tmp = object
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("tmp");
    match std::fs::read_dir(tmp) {
        Ok(entries) => entries.map(|entry| entry.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

async fn read_all(
    store: &ContentStore,
    content_ref: &ContentRef,
) -> Result<Vec<u8>, std::io::Error> {
    let mut reader = store.reader(content_ref).await.unwrap();
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn streamed_content_is_the_same_content_as_stored_whole() {
    let (_dir, root) = temp_root();
    let store = root.store("streams").unwrap();
    for size in [0, 1, 16 << 10, (16 << 10) + 1, 5 * MIB + 3] {
        let bytes = content(size, size as u64);
        let streamed = store.store_reader(uneven(&bytes)).await.unwrap();
        assert_eq!(streamed, ContentRef::for_content(&bytes), "size {size}");
        assert_eq!(store.get(&streamed).await.unwrap(), bytes, "size {size}");
        assert_eq!(
            read_all(&store, &streamed).await.unwrap(),
            bytes,
            "size {size}"
        );
        assert_eq!(store.content_size(&streamed).await.unwrap(), size as u64);
        // Stored again, whole: deduplicated.
        assert_eq!(store.store(bytes.clone()).await.unwrap(), streamed);
    }
    assert_eq!(store.stats().await.unwrap().objects, 5);
    assert!(
        tmp_files(&root, &store).is_empty(),
        "staging leaves nothing behind"
    );
}

#[tokio::test]
async fn a_streamed_write_can_set_a_label_and_dedups() {
    let (_dir, root) = temp_root();
    let store = root.store("labelled").unwrap();
    let bytes = content(3 * MIB, 7);
    let first = store
        .store_reader_at_label("big", uneven(&bytes))
        .await
        .unwrap();
    assert_eq!(
        store.get_by_label("big").await.unwrap(),
        Some(first.clone())
    );
    let mut writer = store.writer().await.unwrap();
    for piece in bytes.chunks(64 << 10) {
        writer.write(piece).await.unwrap();
    }
    assert_eq!(writer.bytes_written(), bytes.len() as u64);
    let again = writer.finish_at_label("copy").await.unwrap();
    assert_eq!(again.content_ref, first);
    assert!(!again.new, "the second copy is deduplicated");
    assert_eq!(store.stats().await.unwrap().bytes, bytes.len() as u64);
    let error = store
        .store_reader_at_label("", uneven(b"x"))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::InvalidLabel { .. }));
}

#[tokio::test]
async fn a_file_streams_in() {
    let (dir, root) = temp_root();
    let store = root.store("files").unwrap();
    let bytes = content(2 * MIB + 5, 3);
    let path = dir.path().join("input.bin");
    std::fs::write(&path, &bytes).unwrap();
    let stored = store.store_file(&path).await.unwrap();
    assert_eq!(store.get(&stored).await.unwrap(), bytes);
    let error = store
        .store_file(dir.path().join("missing"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("missing"), "{error}");
}

#[tokio::test]
async fn a_dropped_writer_stores_nothing_and_leaves_no_file() {
    let (_dir, root) = temp_root();
    let store = root.store("dropped").unwrap();
    store.store(b"anchor".to_vec()).await.unwrap();
    let mut writer = store.writer().await.unwrap();
    writer.write(&content(3 * MIB, 1)).await.unwrap();
    drop(writer);
    // The staging worker notices the drop and removes its files.
    for _ in 0..200 {
        if tmp_files(&root, &store).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(tmp_files(&root, &store).is_empty());
    assert_eq!(store.stats().await.unwrap().objects, 1);
}

#[tokio::test]
async fn ranges_read_back_exactly_and_out_of_bounds_is_an_error() {
    let (_dir, root) = temp_root();
    let store = root.store("ranges").unwrap();
    for size in [100usize, 4 * MIB + 321] {
        let bytes = content(size, 9);
        let stored = store.store(bytes.clone()).await.unwrap();
        let size = size as u64;
        for (offset, len) in [
            (0, 0),
            (0, 1),
            (size / 2, 4096.min(size / 2)),
            (size - 1, 1),
            (0, size),
        ] {
            let got = store.read_range(&stored, offset, len).await.unwrap();
            assert_eq!(got, bytes[offset as usize..(offset + len) as usize]);
        }
        // The same ranges streamed, and ranges across the reader's 256 KiB
        // windows and to the end (open-ended).
        let window = 256u64 << 10;
        for (offset, len) in [
            (0, Some(0)),
            (size / 2, Some(4096.min(size / 2))),
            (
                size.saturating_sub(window + 3),
                Some(window.min(size) / 2 + 5),
            ),
            (size / 3, None),
            (0, None),
        ] {
            let end = len.map_or(size, |len| offset + len);
            let mut reader = store.range_reader(&stored, offset, len).await.unwrap();
            let mut got = Vec::new();
            reader.read_to_end(&mut got).await.unwrap();
            assert_eq!(
                got,
                bytes[offset as usize..end as usize],
                "{offset} {len:?}"
            );
        }
        let error = store.read_range(&stored, size - 1, 2).await.unwrap_err();
        assert!(matches!(error, StoreError::InvalidRange { .. }), "{error}");
        assert!(
            error.to_string().contains(&format!("of {size} bytes")),
            "{error}"
        );
        let error = store.read_range(&stored, u64::MAX, 2).await.unwrap_err();
        assert!(matches!(error, StoreError::InvalidRange { .. }), "{error}");
    }
    let missing = ContentRef::for_content(b"never stored");
    let error = store.read_range(&missing, 0, 1).await.unwrap_err();
    assert!(matches!(error, StoreError::NotFound { .. }));
}

#[tokio::test]
async fn pieces_hand_over_the_verified_windows_after_whatever_was_read() {
    let (_dir, root) = temp_root();
    let store = root.store("pieces").unwrap();
    let bytes = content(MIB + 12_345, 5);
    let stored = store.store(bytes.clone()).await.unwrap();
    // A range, partly read through `AsyncRead` first: the pieces carry on
    // from there, to the range's end and no further.
    let (offset, len) = (1000u64, 700_000u64);
    let mut reader = store
        .range_reader(&stored, offset, Some(len))
        .await
        .unwrap()
        .into_inner();
    let mut start = vec![0u8; 10];
    reader.read_exact(&mut start).await.unwrap();
    let mut got = start;
    let mut count = 0;
    while let Some(piece) = reader.next_piece().await.unwrap() {
        assert!(!piece.is_empty() && piece.len() <= 256 << 10);
        got.extend_from_slice(&piece);
        count += 1;
    }
    assert!(count >= 3, "{count} pieces");
    assert_eq!(got, bytes[offset as usize..(offset + len) as usize]);
    // The whole content as a stream of pieces.
    let pieces: Vec<theater_store::VerifiedPiece> =
        futures_util::TryStreamExt::try_collect(store.reader(&stored).await.unwrap().into_pieces())
            .await
            .unwrap();
    assert_eq!(
        pieces
            .iter()
            .map(|piece| &piece[..])
            .collect::<Vec<_>>()
            .concat(),
        bytes
    );
    // Pieces dropped give their buffers back to later windows, which must
    // overwrite them whole: content of many windows (more than are read
    // ahead), read piece by piece, each dropped before the next.
    let many = content(6 * MIB + 4321, 9);
    let stored = store.store(many.clone()).await.unwrap();
    let mut reader = store.reader(&stored).await.unwrap();
    let mut again = Vec::new();
    while let Some(piece) = reader.next_piece().await.unwrap() {
        again.extend_from_slice(&piece);
        drop(piece);
    }
    assert!(again == many, "content read through reused buffers differs");
}

#[tokio::test]
async fn a_reader_reads_on_when_its_read_ahead_changes_midway() {
    let (_dir, root) = temp_root();
    let store = root.store("ahead").unwrap();
    let bytes = content(6 * MIB, 9);
    let stored = store.store(bytes.clone()).await.unwrap();
    let mut reader = store.reader(&stored).await.unwrap();
    let mut out = vec![0u8; MIB / 2];
    reader.read_exact(&mut out).await.unwrap();
    // Eight windows are ahead by now; keep one from here on, then more.
    let mut reader = reader.with_read_ahead(1);
    let mut middle = vec![0u8; 2 * MIB];
    reader.read_exact(&mut middle).await.unwrap();
    out.extend_from_slice(&middle);
    let mut reader = reader.with_read_ahead(16);
    reader.read_to_end(&mut out).await.unwrap();
    assert!(
        out == bytes,
        "content read across read-ahead changes differs"
    );
}

#[tokio::test]
async fn a_reader_seeks() {
    let (_dir, root) = temp_root();
    let store = root.store("seeks").unwrap();
    let bytes = content(3 * MIB, 4);
    let stored = store.store(bytes.clone()).await.unwrap();
    let mut reader = store.reader(&stored).await.unwrap();
    assert_eq!(reader.size(), bytes.len() as u64);
    let mut piece = vec![0u8; 1000];
    for at in [2 * MIB + 17, 5, MIB, 3 * MIB - 1000] {
        reader
            .seek(std::io::SeekFrom::Start(at as u64))
            .await
            .unwrap();
        reader.read_exact(&mut piece).await.unwrap();
        assert_eq!(piece, bytes[at..at + 1000]);
    }
    let end = reader.seek(std::io::SeekFrom::End(0)).await.unwrap();
    assert_eq!(end, bytes.len() as u64);
    assert_eq!(reader.read(&mut piece).await.unwrap(), 0);
}

#[tokio::test]
async fn a_flipped_byte_fails_only_what_touches_it() {
    let (_dir, root) = temp_root();
    let store = root.store("flipped").unwrap();
    let bytes = content(8 * MIB, 5);
    let stored = store.store_at_label("model", bytes.clone()).await.unwrap();
    let bad = 4 * MIB + 100;
    let path = object_path(&root, &store, &stored);
    let mut damaged = std::fs::read(&path).unwrap();
    damaged[bad] ^= 0x20;
    std::fs::write(&path, &damaged).unwrap();

    let error = store
        .read_range(&stored, bad as u64 - 10, 4096)
        .await
        .unwrap_err();
    match &error {
        StoreError::Corrupted {
            store: id,
            reference,
            ..
        } => {
            assert_eq!(id, "flipped");
            assert_eq!(reference, stored.hash());
        }
        other => panic!("expected Corrupted, got {other}"),
    }
    let before = store.read_range(&stored, 0, 4 * MIB as u64).await.unwrap();
    assert_eq!(before, bytes[..4 * MIB]);
    let after = store
        .read_range(&stored, 5 * MIB as u64, 4096)
        .await
        .unwrap();
    assert_eq!(after, bytes[5 * MIB..5 * MIB + 4096]);

    // A whole read stops before the damaged 16 KiB group.
    let mut reader = store.reader(&stored).await.unwrap();
    let mut out = Vec::new();
    let mut piece = vec![0u8; 64 << 10];
    let failure = loop {
        match reader.read(&mut piece).await {
            Ok(0) => panic!("a damaged object read to the end"),
            Ok(read) => out.extend_from_slice(&piece[..read]),
            Err(error) => break error,
        }
    };
    assert_eq!(failure.kind(), std::io::ErrorKind::InvalidData);
    assert!(failure.to_string().contains("corrupted"), "{failure}");
    assert!(
        out.len() <= bad / (16 << 10) * (16 << 10),
        "handed out {} bytes",
        out.len()
    );
    assert_eq!(out, bytes[..out.len()]);

    let report = store.verify(std::sync::Arc::new(())).await.unwrap();
    assert_eq!(report.quarantined, vec![stored.clone()]);
}

#[tokio::test]
async fn outboards_are_rebuilt_when_missing_or_wrong() {
    let (_dir, root) = temp_root();
    let store = root.store("outboards").unwrap();
    let bytes = content(2 * MIB, 6);
    let stored = store.store(bytes.clone()).await.unwrap();
    let outboard = outboard_path(&root, &store, &stored);
    assert_eq!(
        std::fs::metadata(&outboard).unwrap().len(),
        (2 * MIB as u64 / (16 << 10) - 1) * 64
    );

    // As for content stored before outboards existed.
    std::fs::remove_file(&outboard).unwrap();
    let got = store.read_range(&stored, MIB as u64, 10).await.unwrap();
    assert_eq!(got, bytes[MIB..MIB + 10]);
    assert!(outboard.is_file(), "built on first need");

    // A damaged outboard does not make intact content look corrupt.
    let mut kept = std::fs::read(&outboard).unwrap();
    kept[100] ^= 1;
    std::fs::write(&outboard, &kept).unwrap();
    assert_eq!(read_all(&store, &stored).await.unwrap(), bytes);

    kept = std::fs::read(&outboard).unwrap();
    kept[70] ^= 1;
    std::fs::write(&outboard, &kept).unwrap();
    let report = store.verify(std::sync::Arc::new(())).await.unwrap();
    assert_eq!(report.damaged_outboards, vec![stored.clone()]);
    assert!(report.is_clean());
    assert_eq!(store.read_range(&stored, 0, 5).await.unwrap(), bytes[..5]);
}

#[tokio::test]
async fn collected_content_takes_its_outboard_with_it() {
    let (_dir, root) = temp_root();
    let store = root.store("collected").unwrap();
    store.store(b"anchor".to_vec()).await.unwrap();
    let stored = store.store(content(2 * MIB, 8)).await.unwrap();
    let outboard = outboard_path(&root, &store, &stored);
    assert!(outboard.is_file());
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let options = theater_store::GcOptions {
        grace: std::time::Duration::ZERO,
        ..Default::default()
    };
    store
        .collect_garbage(options, std::sync::Arc::new(()))
        .await
        .unwrap();
    assert!(!store.exists(&stored).await.unwrap());
    assert!(!outboard.exists(), "the outboard went with its object");
}

#[tokio::test]
async fn streamed_content_exports_and_imports_with_its_outboard() {
    let (_dir, root) = temp_root();
    let store = root.store("source").unwrap();
    let bytes = content(3 * MIB + 7, 11);
    let stored = store
        .store_reader_at_label("data", uneven(&bytes))
        .await
        .unwrap();
    let (_, package) = store
        .export_package(None, Vec::new(), std::sync::Arc::new(()))
        .await
        .unwrap();

    let (_other_dir, other_root) = temp_root();
    let copy = other_root.store("copy").unwrap();
    copy.import_package(std::io::Cursor::new(package), std::sync::Arc::new(()))
        .await
        .unwrap();
    assert_eq!(
        copy.get_by_label("data").await.unwrap(),
        Some(stored.clone())
    );
    // The import computed the outboard as it staged the content.
    assert!(outboard_path(&other_root, &copy, &stored).is_file());
    let middle = 3 * MIB as u64 / 2;
    let got = copy.read_range(&stored, middle, 4096).await.unwrap();
    assert_eq!(got, bytes[middle as usize..middle as usize + 4096]);
    assert!(
        copy.verify(std::sync::Arc::new(()))
            .await
            .unwrap()
            .is_clean()
    );
}
