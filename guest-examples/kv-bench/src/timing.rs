// Shared by both binaries: the timed loops, over whichever bindings the
// binary generated (they differ only in the WIT draft).

/// `OPERATION ITERATIONS SIZE BUCKET` from the arguments.
pub fn arguments() -> (String, u64, usize, String) {
    let args: Vec<String> = std::env::args().collect();
    let [_, operation, iterations, size, bucket] = &args[..] else {
        eprintln!("usage: OPERATION(get|set) ITERATIONS SIZE BUCKET");
        std::process::exit(2);
    };
    let iterations = iterations.parse().expect("a count");
    let size = size.parse().expect("a size");
    (operation.clone(), iterations, size, bucket.clone())
}

/// Runs `operation` `iterations` times through `get` and `set`, and
/// prints the loop's duration in nanoseconds.
pub fn time(
    operation: &str,
    iterations: u64,
    size: usize,
    get: impl Fn(&str) -> Option<Vec<u8>>,
    set: impl Fn(&str, &[u8]),
) {
    let mut value = vec![0x5a_u8; size.max(8)];
    set("fixed", &value);
    let started = std::time::Instant::now();
    for i in 0..iterations {
        match operation {
            "get" => {
                assert_eq!(get("fixed").map(|v| v.len()), Some(value.len()));
            }
            "set" => {
                value[..8].copy_from_slice(&i.to_le_bytes());
                set("latest", &value);
            }
            other => {
                eprintln!("unknown operation {other:?}");
                std::process::exit(2);
            }
        }
    }
    println!("{}", started.elapsed().as_nanos());
}

/// The `main` of either binary, over the bindings it generated.
macro_rules! bench_main {
    () => {
        fn main() {
            let (operation, iterations, size, bucket) = timing::arguments();
            let bucket = wasi::keyvalue::store::open(&bucket).expect("opening the bucket");
            timing::time(
                &operation,
                iterations,
                size,
                |key| bucket.get(key).expect("get"),
                |key, value| bucket.set(key, value).expect("set"),
            );
        }
    };
}
