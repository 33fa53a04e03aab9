//! The HTTP gateway beside SeaweedFS's S3 gateway, in one run, in
//! interleaved rounds (issue 31's figures): a 1 KiB GET by ref with
//! keep-alive (requests per second and p99), a 1 KiB PUT, a 4 KiB range of
//! a 1 GiB object, and the whole 1 GiB GET, which is also set against the
//! verified read `theater-store cat` makes (the core's range reader,
//! in-process, into a sink).
//!
//! Both servers share this machine's two cores with the client, which is
//! the same for both: one hyper HTTP/1.1 connection per client task, each
//! sending its requests one after another. SeaweedFS runs as `weed mini`
//! (started by `theater-store-testing`, anonymous S3); ours is the
//! gateway's router and accept loop in this process over a local root on
//! the same disk.
//!
//! Run: `cargo bench -p theater-store-bench --bench gateway`
//! (`THEATER_STORE_BENCH_ROUNDS`, default 3; `THEATER_STORE_BENCH_BIG_MIB`,
//! default 1024).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use theater_store::{ContentRef, StoreRoot};
use theater_store_bench::env_number;
use theater_store_gateway::{Access, Limits, Tokens};
use tokio::io::AsyncReadExt;

/// Granted every store by the bench's tokens file.
const TOKEN: &str = "bench-token-0123456789abcdef";
/// How long each side's small-GET load runs per round.
const LOAD: Duration = Duration::from_secs(3);
/// Client connections for the small-GET load.
const CONNECTIONS: usize = 4;
/// 1 KiB PUTs and 4 KiB ranges per side per round.
const SEQUENTIAL: usize = 1000;

/// One server under test: where it is and how its paths look.
struct Side {
    name: &'static str,
    address: String,
    /// Path of the 1 KiB object (by ref, for ours).
    small: String,
    /// Path of the 1 GiB object.
    big: String,
    /// Path of the `i`-th PUT.
    put: fn(usize) -> String,
    /// Headers every request carries (ours: the bearer token).
    auth: Option<String>,
}

impl Side {
    async fn connect(&self) -> SendRequest<Full<Bytes>> {
        let stream = tokio::net::TcpStream::connect(&self.address).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender
    }

    fn request(&self, method: Method, path: &str, body: Bytes) -> Request<Full<Bytes>> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.address);
        if let Some(auth) = &self.auth {
            request = request.header(hyper::header::AUTHORIZATION, auth);
        }
        request.body(Full::new(body)).unwrap()
    }
}

/// Sends `request` and reads the whole answer, which must have `status`;
/// returns the body's length.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
    status: StatusCode,
) -> u64 {
    sender.ready().await.unwrap();
    let response: Response<Incoming> = sender.send_request(request).await.unwrap();
    let got = response.status();
    let mut body = response.into_body();
    let mut length = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            length += data.len() as u64;
        }
    }
    assert_eq!(got, status);
    length
}

/// Latencies in microseconds, summarised.
struct Latencies(Vec<f64>);

impl Latencies {
    fn percentile(&mut self, p: f64) -> f64 {
        self.0.sort_by(f64::total_cmp);
        let index = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[index]
    }
}

/// `CONNECTIONS` clients GET the 1 KiB object for `LOAD`: requests per
/// second and p99 in µs.
async fn small_gets(side: &Side) -> (f64, f64) {
    let started = Instant::now();
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| async {
            let mut sender = side.connect().await;
            let mut latencies = Vec::new();
            while started.elapsed() < LOAD {
                let request = side.request(Method::GET, &side.small, Bytes::new());
                let sent = Instant::now();
                let length = exchange(&mut sender, request, StatusCode::OK).await;
                latencies.push(sent.elapsed().as_secs_f64() * 1e6);
                assert_eq!(length, 1024);
            }
            latencies
        })
        .collect();
    let all: Vec<f64> = futures_util::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
        .collect();
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    (rate, Latencies(all).percentile(0.99))
}

/// `SEQUENTIAL` PUTs of distinct 1 KiB bodies: p50 and p99 in µs.
async fn small_puts(side: &Side, round: usize) -> (f64, f64) {
    let mut sender = side.connect().await;
    let mut latencies = Vec::with_capacity(SEQUENTIAL);
    for i in 0..SEQUENTIAL {
        let mut body = vec![0u8; 1024];
        body[..16].copy_from_slice(&((round * SEQUENTIAL + i) as u128).to_le_bytes());
        let path = (side.put)(round * SEQUENTIAL + i);
        let request = side.request(Method::PUT, &path, Bytes::from(body));
        let sent = Instant::now();
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        response.into_body().collect().await.unwrap();
        latencies.push(sent.elapsed().as_secs_f64() * 1e6);
    }
    let mut latencies = Latencies(latencies);
    (latencies.percentile(0.5), latencies.percentile(0.99))
}

/// `SEQUENTIAL` 4 KiB ranges at scattered offsets of the big object: p50
/// and p99 in µs.
async fn ranges(side: &Side, big: u64) -> (f64, f64) {
    let mut sender = side.connect().await;
    let mut latencies = Vec::with_capacity(SEQUENTIAL);
    let mut offset = 7u64;
    for _ in 0..SEQUENTIAL {
        offset = (offset
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1))
            % (big - 4096);
        let mut request = side.request(Method::GET, &side.big, Bytes::new());
        request.headers_mut().insert(
            hyper::header::RANGE,
            format!("bytes={offset}-{}", offset + 4095).parse().unwrap(),
        );
        let sent = Instant::now();
        let length = exchange(&mut sender, request, StatusCode::PARTIAL_CONTENT).await;
        latencies.push(sent.elapsed().as_secs_f64() * 1e6);
        assert_eq!(length, 4096);
    }
    let mut latencies = Latencies(latencies);
    (latencies.percentile(0.5), latencies.percentile(0.99))
}

/// The whole big object in one GET: GiB/s.
async fn big_get(side: &Side, big: u64) -> f64 {
    let mut sender = side.connect().await;
    let started = Instant::now();
    let request = side.request(Method::GET, &side.big, Bytes::new());
    let length = exchange(&mut sender, request, StatusCode::OK).await;
    assert_eq!(length, big);
    gib_per_second(big, started.elapsed())
}

fn gib_per_second(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / (1u64 << 30) as f64 / took.as_secs_f64()
}

/// What `theater-store cat` does with the big object, into a sink: GiB/s.
async fn cat(root: &StoreRoot, big: &ContentRef, size: u64) -> f64 {
    let store = root.store("bench").unwrap();
    let started = Instant::now();
    let mut reader = store.range_reader(big, 0, None).await.unwrap();
    let mut buffer = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let read = reader.read(&mut buffer).await.unwrap();
        if read == 0 {
            break;
        }
        total += read as u64;
    }
    assert_eq!(total, size);
    gib_per_second(size, started.elapsed())
}

/// Deterministic bytes that do not compress.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = vec![0u8; len];
    for chunk in bytes.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    bytes
}

fn main() {
    let rounds: usize = env_number("THEATER_STORE_BENCH_ROUNDS", 3);
    let big_mib: u64 = env_number("THEATER_STORE_BENCH_BIG_MIB", 1024);
    let big_size = big_mib << 20;
    // `cargo bench` passes `--bench`; this harness takes no arguments.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let services = theater_store_testing::Services::shared();
    let dir = tempfile::tempdir().unwrap();
    let root = StoreRoot::new(dir.path().join("root"));
    runtime.block_on(async {
        // Ours, on an ephemeral loopback port.
        let tokens = Tokens::parse(&format!("{TOKEN} *")).unwrap();
        let limits = Limits {
            max_body_bytes: 2 << 30,
            max_store_bytes: u64::MAX,
            max_concurrent_requests: 64,
            ..Limits::default()
        };
        let app = theater_store_gateway::router(root.clone(), Access::Tokens(tokens), limits.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours_address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            theater_store_gateway::serve(listener, app, &limits, std::future::pending()).await
        });
        let store = root.store("bench").unwrap();
        let small = noise(1024, 1);
        let small_ref = store.store(small.clone()).await.unwrap();
        let big = Bytes::from(noise(big_size as usize, 2));
        let big_ref = store.store(big.to_vec()).await.unwrap();
        let ours = Side {
            name: "ours",
            address: ours_address,
            small: format!("/v1/stores/bench/content/{small_ref}"),
            big: format!("/v1/stores/bench/content/{big_ref}"),
            put: |i| format!("/v1/stores/bench/labels/put-{i}"),
            auth: Some(format!("Bearer {TOKEN}")),
        };
        let endpoint = services.s3_endpoint();
        let seaweed = Side {
            name: "SeaweedFS S3",
            address: endpoint.trim_start_matches("http://").to_owned(),
            small: format!("/{}/bench/small", theater_store_testing::BUCKET),
            big: format!("/{}/bench/big", theater_store_testing::BUCKET),
            put: |i| format!("/{}/bench/put-{i}", theater_store_testing::BUCKET),
            auth: None,
        };
        let mut sender = seaweed.connect().await;
        for (path, body) in [(&seaweed.small, Bytes::from(small)), (&seaweed.big, big)] {
            let request = seaweed.request(Method::PUT, path, body);
            exchange(&mut sender, request, StatusCode::OK).await;
        }
        drop(sender);

        eprintln!(
            "{:<14} {:>5} | {:>10} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>8} | {:>8}",
            "side", "round", "GET 1K/s", "p99 µs", "PUT p50", "p99 µs", "range p50", "p99 µs", "GET GiB/s", "cat GiB/s"
        );
        for round in 0..rounds {
            // Alternate which side goes first, so neither always meets a
            // warmer (or busier) disk.
            let order = if round % 2 == 0 { [&ours, &seaweed] } else { [&seaweed, &ours] };
            for side in order {
                let (rate, get_p99) = small_gets(side).await;
                let (put_p50, put_p99) = small_puts(side, round).await;
                let (range_p50, range_p99) = ranges(side, big_size).await;
                let whole = big_get(side, big_size).await;
                let cat = if side.name == "ours" {
                    format!("{:>8.2}", cat(&root, &big_ref, big_size).await)
                } else {
                    format!("{:>8}", "-")
                };
                eprintln!(
                    "{:<14} {:>5} | {:>10.0} {:>9.0} | {:>9.0} {:>9.0} | {:>9.0} {:>9.0} | {:>9.2} | {cat}",
                    side.name, round + 1, rate, get_p99, put_p50, put_p99, range_p50, range_p99, whole
                );
            }
        }
    });
}
