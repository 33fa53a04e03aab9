//! A plain `fn main()` program that keeps its state in `wasi:keyvalue`,
//! built from the keyvalue WIT alone (no theater-store crate): any host
//! serving `wasi:keyvalue@0.2.0-draft2` can run it.
//!
//! Usage: `kv_counter BUCKET COMMAND ...`
//! - `increment KEY N`: adds 1 to KEY N times with `atomics.increment`;
//!   prints `value=<last sum>`.
//! - `append KEY TEXT N`: N read-modify-writes of KEY with `cas`/`swap`,
//!   each appending TEXT and retrying when another writer got there first;
//!   prints `retries=<count>`.
//! - `batch PREFIX N`: sets N keys with `set-many`, reads them back with
//!   `get-many`, deletes half with `delete-many`, lists what is left with
//!   `list-keys`; prints what it saw.
//! - `get KEY`, `set KEY VALUE`: one key.
//!
//! Exits with failure, the error on stderr, when a call fails or the usage
//! is wrong.

wit_bindgen::generate!({
    path: "../../wit/deps/keyvalue",
    world: "wasi:keyvalue/imports",
});

use wasi::keyvalue::{atomics, batch, store};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: kv_counter BUCKET|- COMMAND ... (`-`: the bucket named by $IDENTIFIER)");
        std::process::exit(2);
    }
    // As wasmtime's own keyvalue test program does, the bucket can come
    // from the environment.
    let bucket = match args[1].as_str() {
        "-" => match std::env::var("IDENTIFIER") {
            Ok(bucket) => bucket,
            Err(_) => {
                eprintln!("kv_counter: IDENTIFIER is not set");
                std::process::exit(2);
            }
        },
        name => name.to_owned(),
    };
    if let Err(message) = run(&bucket, &args[2], &args[3..]) {
        eprintln!("kv_counter: {message}");
        std::process::exit(1);
    }
}

fn describe(error: store::Error) -> String {
    match error {
        store::Error::NoSuchStore => "no such store".to_owned(),
        store::Error::AccessDenied => "access denied".to_owned(),
        store::Error::Other(message) => message,
    }
}

fn number(text: &str) -> Result<u64, String> {
    text.parse().map_err(|_| format!("not a count: {text:?}"))
}

fn run(bucket_name: &str, command: &str, rest: &[String]) -> Result<(), String> {
    let bucket = store::open(bucket_name).map_err(describe)?;
    match (command, rest) {
        ("increment", [key, times]) => {
            let mut value = 0;
            for _ in 0..number(times)? {
                value = atomics::increment(&bucket, key, 1).map_err(describe)?;
            }
            println!("value={value}");
        }
        ("append", [key, text, times]) => {
            let mut retries = 0;
            for _ in 0..number(times)? {
                let mut cas = atomics::Cas::new(&bucket, key).map_err(describe)?;
                loop {
                    let mut value = cas.current().map_err(describe)?.unwrap_or_default();
                    value.extend_from_slice(text.as_bytes());
                    match atomics::swap(cas, &value) {
                        Ok(()) => break,
                        Err(atomics::CasError::CasFailed(again)) => {
                            retries += 1;
                            cas = again;
                        }
                        Err(atomics::CasError::StoreError(error)) => return Err(describe(error)),
                    }
                }
            }
            println!("retries={retries}");
        }
        ("batch", [prefix, count]) => {
            let count = number(count)?;
            let pairs: Vec<(String, Vec<u8>)> = (0..count)
                .map(|i| (format!("{prefix}{i:04}"), format!("value {i}").into_bytes()))
                .collect();
            batch::set_many(&bucket, &pairs).map_err(describe)?;
            let keys: Vec<String> = pairs.iter().map(|(key, _)| key.clone()).collect();
            let read = batch::get_many(&bucket, &keys).map_err(describe)?;
            let found = read.iter().filter(|entry| entry.is_some()).count();
            let intact = read
                .iter()
                .zip(&pairs)
                .all(|(entry, pair)| entry.as_ref() == Some(pair));
            println!("found={found}");
            println!("intact={intact}");
            let doomed: Vec<String> = keys.iter().step_by(2).cloned().collect();
            batch::delete_many(&bucket, &doomed).map_err(describe)?;
            let mut listed = Vec::new();
            let mut cursor = None;
            loop {
                let page = bucket.list_keys(cursor.as_deref()).map_err(describe)?;
                listed.extend(page.keys);
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            let left: Vec<&String> = listed
                .iter()
                .filter(|key| key.starts_with(prefix))
                .collect();
            println!("left={}", left.len());
            println!("first_left={}", left.first().map_or("", |key| key.as_str()));
        }
        ("stale-swaps", [key, size, times]) => {
            // Swaps that are already lost when they start: another write
            // moved the key after the handle was made.
            let value = vec![b'v'; number(size)? as usize];
            let mut lost = 0;
            for round in 0..number(times)? {
                let cas = atomics::Cas::new(&bucket, key).map_err(describe)?;
                bucket
                    .set(key, format!("moved {round}").as_bytes())
                    .map_err(describe)?;
                match atomics::swap(cas, &value) {
                    Ok(()) => {}
                    Err(atomics::CasError::CasFailed(_)) => lost += 1,
                    Err(atomics::CasError::StoreError(error)) => return Err(describe(error)),
                }
            }
            println!("lost={lost}");
        }
        ("get", [key]) => match bucket.get(key).map_err(describe)? {
            Some(value) => println!("value={}", String::from_utf8_lossy(&value)),
            None => println!("missing"),
        },
        ("set", [key, value]) => {
            bucket.set(key, value.as_bytes()).map_err(describe)?;
            println!("ok");
        }
        _ => {
            eprintln!("unknown command or arguments: {command} {rest:?}");
            std::process::exit(2);
        }
    }
    Ok(())
}
