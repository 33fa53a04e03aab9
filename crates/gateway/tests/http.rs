//! The gateway's HTTP API, driven in process through its router.

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, Response, StatusCode, header};
use serde_json::Value;
use theater_store::{ContentRef, StoreRoot};
use theater_store_gateway::{Access, Limits, Tokens, router};
use tower::ServiceExt;

const WRITER: &str = "writer-token-0123456789";
const READER: &str = "reader-token-0123456789";
const AUDITOR: &str = "auditor-token-0123456789";

fn tokens() -> Access {
    let file =
        format!("# who may do what\n{WRITER} docs other:ro\n\n{READER} docs:ro\n{AUDITOR} *:ro\n");
    Access::Tokens(Tokens::parse(&file).unwrap())
}

async fn send(app: &Router, request: Request<Body>) -> Response<Body> {
    app.clone().oneshot(request).await.unwrap()
}

fn get(path: &str, token: Option<&str>) -> axum::http::request::Builder {
    let builder = Request::get(path);
    match token {
        Some(token) => builder.header(header::AUTHORIZATION, format!("Bearer {token}")),
        None => builder,
    }
}

async fn body(response: Response<Body>) -> Vec<u8> {
    to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec()
}

async fn json(response: Response<Body>) -> Value {
    serde_json::from_slice(&body(response).await).unwrap()
}

fn root() -> (tempfile::TempDir, StoreRoot) {
    let dir = tempfile::tempdir().unwrap();
    let root = StoreRoot::new(dir.path().join("root"));
    (dir, root)
}

#[tokio::test]
async fn reads_carry_etags_ranges_and_cache_rules_and_anonymous_gateways_refuse_writes() {
    let (_dir, root) = root();
    let docs = root.store("docs").unwrap();
    let text: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let stored = docs.store_at_label("big/file", text.clone()).await.unwrap();
    let app = router(root, Access::ReadOnlyToAll, Limits::default());
    let etag = format!("\"{}\"", stored.hash());

    let whole = send(
        &app,
        get("/v1/stores/docs/labels/big/file", None)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.headers()[header::ETAG], etag.as_str());
    assert!(
        whole.headers().get(header::CACHE_CONTROL).is_none(),
        "a label moves"
    );
    assert_eq!(body(whole).await, text);

    let by_ref = format!("/v1/stores/docs/content/{}", stored.hash());
    let cached = send(&app, get(&by_ref, None).body(Body::empty()).unwrap()).await;
    assert!(
        cached.headers()[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    let unchanged = send(
        &app,
        get(&by_ref, None)
            .header(header::IF_NONE_MATCH, &etag)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    assert!(body(unchanged).await.is_empty());
    // Weakly compared, as a cache may send it back.
    let weak = send(
        &app,
        get(&by_ref, None)
            .header(header::IF_NONE_MATCH, format!("\"other\", W/{etag}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(weak.status(), StatusCode::NOT_MODIFIED);

    let ranged = |range: &str| {
        let request = get(&by_ref, None)
            .header(header::RANGE, range)
            .body(Body::empty())
            .unwrap();
        send(&app, request)
    };
    for (range, start, end) in [
        ("bytes=1000-1099", 1000, 1100),
        ("bytes=-10", 399_990, 400_000),
        ("bytes=399999-", 399_999, 400_000),
    ] {
        let part = ranged(range).await;
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            part.headers()[header::CONTENT_RANGE],
            format!("bytes {start}-{}/400000", end - 1).as_str()
        );
        assert_eq!(body(part).await, text[start..end], "{range}");
    }
    let outside = ranged("bytes=400000-").await;
    assert_eq!(outside.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(outside.headers()[header::CONTENT_RANGE], "bytes */400000");
    // Several ranges: the whole content, bounded work. So too a header
    // that does not parse, or whose last byte comes before its first.
    for range in [
        "bytes=0-1,5-9",
        "bytes=5-2",
        "bytes=abc-",
        "bytes=-",
        "pages=1-2",
    ] {
        let whole = ranged(range).await;
        assert_eq!(whole.status(), StatusCode::OK, "{range}");
        assert_eq!(body(whole).await.len(), text.len(), "{range}");
    }

    let missing = send(
        &app,
        get("/v1/stores/docs/labels/nothing", None)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(json(missing).await["kind"], "not-found");
    let bad_ref = send(
        &app,
        get("/v1/stores/docs/content/xyz", None)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(bad_ref.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json(bad_ref).await["kind"], "invalid-ref");
    let reserved = send(
        &app,
        get("/v1/stores/_chains/labels", None)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reserved.status(), StatusCode::BAD_REQUEST);

    let write = Request::put("/v1/stores/docs/labels/new")
        .body(Body::from("x"))
        .unwrap();
    let refused = send(&app, write).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(
        json(refused).await["error"]
            .as_str()
            .unwrap()
            .contains("--tokens")
    );
}

#[tokio::test]
async fn tokens_grant_stores_read_write_or_read_only_and_nothing_else() {
    let (_dir, root) = root();
    root.store("docs")
        .unwrap()
        .store_at_label("a", b"one".to_vec())
        .await
        .unwrap();
    root.store("other")
        .unwrap()
        .store_at_label("b", b"two".to_vec())
        .await
        .unwrap();
    root.store("secret")
        .unwrap()
        .store_at_label("c", b"three".to_vec())
        .await
        .unwrap();
    let app = router(root.clone(), tokens(), Limits::default());

    let anonymous = send(
        &app,
        get("/v1/stores/docs/labels/a", None)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers()[header::WWW_AUTHENTICATE], "Bearer");
    let wrong = send(
        &app,
        get("/v1/stores/docs/labels/a", Some("not-a-token-at-all"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let read = send(
        &app,
        get("/v1/stores/docs/labels/a", Some(READER))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(body(read).await, b"one");
    let elsewhere = send(
        &app,
        get("/v1/stores/secret/labels/c", Some(WRITER))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(elsewhere.status(), StatusCode::FORBIDDEN);

    // The listing shows only what the token reaches.
    let listed = json(
        send(
            &app,
            get("/v1/stores", Some(WRITER)).body(Body::empty()).unwrap(),
        )
        .await,
    )
    .await;
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["store"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["docs", "other"]);

    let put = |path: &str, token: &str, body: &'static str| {
        Request::put(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::from(body))
            .unwrap()
    };
    let read_only = send(&app, put("/v1/stores/docs/labels/a", READER, "no")).await;
    assert_eq!(read_only.status(), StatusCode::FORBIDDEN);
    let read_only = send(&app, put("/v1/stores/other/labels/b", WRITER, "no")).await;
    assert_eq!(read_only.status(), StatusCode::FORBIDDEN);
    let created = send(&app, put("/v1/stores/docs/labels/x/y", WRITER, "hello")).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created = json(created).await;
    assert_eq!(created["ref"], ContentRef::for_content(b"hello").hash());
    assert_eq!(created["label"], "x/y");
    // The change log names the token that wrote, by its hash, never itself.
    let log = root
        .store("docs")
        .unwrap()
        .changes(0, 10)
        .await
        .unwrap()
        .changes;
    let writer = format!(
        "http:token-{}",
        &blake3::hash(WRITER.as_bytes()).to_hex()[..8]
    );
    assert_eq!(log.last().unwrap().actor.as_deref(), Some(writer.as_str()));
}

#[tokio::test]
async fn writes_compare_and_swap_with_if_match_and_if_none_match() {
    let (_dir, root) = root();
    let app = router(root.clone(), tokens(), Limits::default());
    let request = |method: &str,
                   path: &str,
                   condition: Option<(header::HeaderName, String)>,
                   body: &'static str| {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {WRITER}"));
        if let Some((name, value)) = condition {
            builder = builder.header(name, value);
        }
        builder.body(Body::from(body)).unwrap()
    };
    let create_only = || Some((header::IF_NONE_MATCH, "*".to_owned()));
    let first = send(
        &app,
        request("PUT", "/v1/stores/docs/labels/cfg", create_only(), "v1"),
    )
    .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let v1 = first.headers()[header::ETAG].to_str().unwrap().to_owned();
    let again = send(
        &app,
        request("PUT", "/v1/stores/docs/labels/cfg", create_only(), "v1b"),
    )
    .await;
    assert_eq!(again.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(again.headers()[header::ETAG], v1.as_str());

    let moved = send(
        &app,
        request(
            "PUT",
            "/v1/stores/docs/labels/cfg",
            Some((header::IF_MATCH, v1.clone())),
            "v2",
        ),
    )
    .await;
    assert_eq!(moved.status(), StatusCode::CREATED);
    let v2 = moved.headers()[header::ETAG].to_str().unwrap().to_owned();
    // A writer holding the old ref loses, and is told the new one.
    let stale = send(
        &app,
        request(
            "PUT",
            "/v1/stores/docs/labels/cfg",
            Some((header::IF_MATCH, v1.clone())),
            "v3",
        ),
    )
    .await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.headers()[header::ETAG], v2.as_str());
    let docs = root.store("docs").unwrap();
    assert_eq!(
        docs.get_content_by_label("cfg").await.unwrap().unwrap(),
        b"v2"
    );

    let stale_delete = send(
        &app,
        request(
            "DELETE",
            "/v1/stores/docs/labels/cfg",
            Some((header::IF_MATCH, v1)),
            "",
        ),
    )
    .await;
    assert_eq!(stale_delete.status(), StatusCode::PRECONDITION_FAILED);
    let deleted = send(
        &app,
        request(
            "DELETE",
            "/v1/stores/docs/labels/cfg",
            Some((header::IF_MATCH, v2)),
            "",
        ),
    )
    .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(docs.get_by_label("cfg").await.unwrap(), None);
    let gone = send(
        &app,
        request("DELETE", "/v1/stores/docs/labels/cfg", None, ""),
    )
    .await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);

    let posted = send(
        &app,
        request("POST", "/v1/stores/docs/content", None, "loose"),
    )
    .await;
    assert_eq!(posted.status(), StatusCode::CREATED);
    assert!(
        docs.exists(&ContentRef::for_content(b"loose"))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn labels_come_a_page_at_a_time_and_bodies_over_the_limit_are_refused() {
    let (_dir, root) = root();
    let docs = root.store("docs").unwrap();
    for i in 0..5 {
        docs.store_at_label(&format!("p/{i}"), vec![i; 4])
            .await
            .unwrap();
    }
    let limits = Limits {
        max_body_bytes: 1024,
        ..Limits::default()
    };
    let app = router(root, tokens(), limits);
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = "/v1/stores/docs/labels?prefix=p/&limit=2".to_owned();
        if let Some(after) = &after {
            path.push_str(&format!("&after={after}"));
        }
        let page =
            json(send(&app, get(&path, Some(READER)).body(Body::empty()).unwrap()).await).await;
        for entry in page["labels"].as_array().unwrap() {
            seen.push(entry["label"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["p/0", "p/1", "p/2", "p/3", "p/4"]);

    let too_big = Request::put("/v1/stores/docs/labels/huge")
        .header(header::AUTHORIZATION, format!("Bearer {WRITER}"))
        .body(Body::from(vec![0u8; 4096]))
        .unwrap();
    assert_eq!(
        send(&app, too_big).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
}

#[tokio::test]
async fn requests_the_routes_cannot_take_get_json_errors_too() {
    let (_dir, root) = root();
    let limits = Limits {
        max_body_bytes: 1024,
        ..Limits::default()
    };
    let app = router(root, tokens(), limits);
    let answer = |request: Request<Body>| {
        let app = app.clone();
        async move {
            let response = send(&app, request).await;
            let status = response.status();
            let allow = response.headers().get(header::ALLOW).cloned();
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "application/json",
                "{status}"
            );
            (status, allow, json(response).await)
        }
    };

    let (status, _, error) = answer(get("/v2/stores", None).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["kind"], "not-found");
    assert!(
        error["error"].as_str().unwrap().contains("/v2/stores"),
        "{error}"
    );

    let patch = Request::patch("/v1/stores").body(Body::empty()).unwrap();
    let (status, allow, error) = answer(patch).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error["kind"], "method-not-allowed");
    assert_eq!(allow.unwrap(), "GET,HEAD", "the Allow header stays");

    for path in [
        "/v1/stores/docs/labels?limit=many",
        "/v1/stores/docs/changes?since=-1",
        "/v1/stores/docs/labels/%FF",
    ] {
        let (status, _, error) = answer(get(path, Some(READER)).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(error["kind"], "bad-request", "{path}");
        assert!(!error["error"].as_str().unwrap().is_empty(), "{path}");
    }

    let too_big = Request::put("/v1/stores/docs/labels/huge")
        .header(header::AUTHORIZATION, format!("Bearer {WRITER}"))
        .header(header::CONTENT_LENGTH, "4096")
        .body(Body::from(vec![0u8; 4096]))
        .unwrap();
    let (status, _, error) = answer(too_big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error["kind"], "too-large");
}

#[tokio::test]
async fn changes_stream_as_server_sent_events_and_resume_after_the_last_id() {
    let (_dir, root) = root();
    let docs = root.store("docs").unwrap();
    docs.store_at_label("a", b"1".to_vec()).await.unwrap();
    docs.store_at_label("b", b"2".to_vec()).await.unwrap();
    let app = router(root, tokens(), Limits::default());

    let events = |request: Request<Body>| {
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "text/event-stream"
            );
            response.into_body().into_data_stream()
        }
    };
    use futures_util::StreamExt;
    let mut stream = events(
        get("/v1/stores/docs/changes?since=0", Some(READER))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let mut text = String::new();
    while text.matches("event: change").count() < 2 {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(
        text.contains("id: 1\n") && text.contains("id: 2\n"),
        "{text}"
    );
    assert!(text.contains("\"label\":\"b\""), "{text}");

    // Reconnecting after id 1 gives 2 first, then what comes next.
    let mut resumed = events(
        get("/v1/stores/docs/changes", Some(READER))
            .header("last-event-id", "1")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let first = resumed.next().await.unwrap().unwrap();
    assert!(std::str::from_utf8(&first).unwrap().contains("id: 2\n"));
    docs.store_at_label("c", b"3".to_vec()).await.unwrap();
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), resumed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(std::str::from_utf8(&next).unwrap().contains("id: 3\n"));

    let refused = send(
        &app,
        get("/v1/stores/other/changes", Some(READER))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}

#[test]
fn a_tokens_file_is_checked_line_by_line_without_echoing_tokens() {
    let short = Tokens::parse("short docs").unwrap_err();
    assert!(
        short.contains("line 1") && !short.contains("short docs"),
        "{short}"
    );
    let bare = Tokens::parse("# comment\nlong-enough-token-123\n").unwrap_err();
    assert!(bare.contains("line 2") && bare.contains("grant"), "{bare}");
    let bad_store = Tokens::parse("long-enough-token-123 no/slashes").unwrap_err();
    assert!(
        bad_store.contains("line 1") && !bad_store.contains("long-enough"),
        "{bad_store}"
    );
    assert_eq!(
        Tokens::parse("long-enough-token-123 * docs:ro\n")
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn damaged_content_is_never_served_past_the_damage() {
    let (dir, root) = root();
    let docs = root.store("docs").unwrap();
    let text = vec![7u8; 256 << 10];
    let stored = docs.store_at_label("big", text.clone()).await.unwrap();
    // Flip bytes in the middle of the object's file (over the inline
    // threshold, so it is a file).
    let hash = stored.hash();
    let path = dir
        .path()
        .join("root/stores/docs/objects")
        .join(&hash[..2])
        .join(&hash[2..]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[200_000] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let app = router(root, Access::ReadOnlyToAll, Limits::default());
    let response = send(
        &app,
        get("/v1/stores/docs/labels/big", None)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    // Either the body ends with the verification error, or it stops
    // short: never a damaged byte, never the whole object.
    if let Ok(served) = to_bytes(response.into_body(), usize::MAX).await {
        assert!(
            served.len() < text.len(),
            "the whole damaged object was served"
        );
        assert_eq!(served[..], text[..served.len()]);
    }
}

#[tokio::test]
async fn an_actors_chain_is_listed_newest_first_and_verified_for_tokens_reaching_every_store() {
    let (_dir, root) = root();
    let chain = root.event_chain("actor-1").unwrap();
    for label in ["a", "b", "c"] {
        let event = theater_store::Event {
            store: Some("docs".into()),
            label: Some(label.into()),
            ..theater_store::Event::new("store-at-label")
        };
        chain.append(event).await.unwrap();
    }
    let app = router(root, tokens(), Limits::default());
    let listed = send(
        &app,
        get("/v1/chains/actor-1?limit=2", Some(AUDITOR))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(listed.status(), StatusCode::OK);
    let listed = json(listed).await;
    assert_eq!(listed["verified"], true);
    let labels: Vec<&str> = listed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["c", "b"]);
    let one_store = send(
        &app,
        get("/v1/chains/actor-1", Some(WRITER))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(one_store.status(), StatusCode::FORBIDDEN);
    let nobody = send(
        &app,
        get("/v1/chains/nobody", Some(AUDITOR))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(nobody.status(), StatusCode::NOT_FOUND);
    let bad = send(
        &app,
        get("/v1/chains/bad%20id", Some(AUDITOR))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

/// Reads what the server sends until it closes the connection, giving up
/// after `within`.
async fn until_closed(stream: &mut tokio::net::TcpStream, within: std::time::Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn slow_headers_huge_headers_and_too_many_connections_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let (_dir, root) = root();
    root.store("docs")
        .unwrap()
        .store_at_label("a", b"fine".to_vec())
        .await
        .unwrap();
    let limits = Limits {
        header_timeout: std::time::Duration::from_millis(300),
        max_header_bytes: 8192,
        max_connections: 3,
        ..Limits::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = router(root, Access::ReadOnlyToAll, limits.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        theater_store_gateway::serve(listener, app, &limits, async move {
            let _ = stopped.await;
        })
        .await
    });
    let second = std::time::Duration::from_secs(5);

    // Headers trickling in too slowly: the connection is closed.
    let mut slow = tokio::net::TcpStream::connect(address).await.unwrap();
    slow.write_all(b"GET /v1/stores HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    until_closed(&mut slow, second).await;
    assert!(started.elapsed() < second);

    // Headers over the limit: refused, closed.
    let mut huge = tokio::net::TcpStream::connect(address).await.unwrap();
    let padding = "x".repeat(20_000);
    let request = format!("GET /v1/stores HTTP/1.1\r\nHost: x\r\nX-Pad: {padding}\r\n\r\n");
    let _ = huge.write_all(request.as_bytes()).await;
    let answer = until_closed(&mut huge, second).await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Three idle connections take every slot: a fourth is closed at once.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(address).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let mut extra = tokio::net::TcpStream::connect(address).await.unwrap();
    let _ = extra
        .write_all(b"GET /v1/stores HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let answer = until_closed(&mut extra, std::time::Duration::from_millis(250)).await;
    assert!(answer.is_empty(), "{answer}");
    // Once they are cut off (they send nothing), service carries on.
    drop(idle);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut fine = tokio::net::TcpStream::connect(address).await.unwrap();
    fine.write_all(
        b"GET /v1/stores/docs/labels/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = until_closed(&mut fine, second).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("fine"),
        "{answer}"
    );

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_in_prometheus_format() {
    let (_dir, root) = root();
    root.store("docs")
        .unwrap()
        .store_at_label("m", b"metric".to_vec())
        .await
        .unwrap();
    let app = router(root, Access::ReadOnlyToAll, Limits::default());
    for _ in 0..3 {
        send(
            &app,
            get("/v1/stores/docs/labels/m", None)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    }
    send(
        &app,
        get("/v1/stores/docs/labels/nothing-here", None)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let page = send(&app, get("/metrics", None).body(Body::empty()).unwrap()).await;
    assert_eq!(page.status(), StatusCode::OK);
    let text = String::from_utf8(body(page).await).unwrap();
    let count = |status: &str| -> u64 {
        text.lines()
            .find(|line| {
                line.starts_with("theater_gateway_requests_total")
                    && line.contains("route=\"/v1/stores/{store}/labels/{label}\"")
                    && line.contains(&format!("status=\"{status}\""))
            })
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no count for {status} in {text}"))
    };
    // Other tests in this binary share the process's recorder: at least.
    assert!(count("200") >= 3 && count("404") >= 1, "{text}");
    assert!(
        text.contains("theater_gateway_request_seconds_bucket"),
        "{text}"
    );
    assert!(
        !text.contains("nothing-here") && !text.contains("docs"),
        "labels stay out: {text}"
    );
    // Reads after the first are answered from the read cache, and the
    // core's figures are on the same page.
    assert!(
        metric(&text, "theater_store_read_cache_total{result=\"hit\"}") >= 2,
        "{text}"
    );
}

#[tokio::test]
async fn maintenance_run_in_the_serving_process_shows_in_its_metrics() {
    let (_dir, root) = root();
    let store = root.store("docs").unwrap();
    let kept = store
        .store_at_label("kept", b"kept".to_vec())
        .await
        .unwrap();
    store.store(b"unlabelled".to_vec()).await.unwrap();
    let app = router(root.clone(), Access::ReadOnlyToAll, Limits::default());
    // Past the zero grace period, at the index's millisecond resolution.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let report = store
        .collect_garbage(
            theater_store::GcOptions {
                grace: std::time::Duration::ZERO,
                ..Default::default()
            },
            (),
        )
        .await
        .unwrap();
    assert_eq!(report.objects_removed, 1);
    assert!(store.verify(()).await.unwrap().is_clean());
    assert!(store.exists(&kept).await.unwrap());
    let page = send(&app, get("/metrics", None).body(Body::empty()).unwrap()).await;
    let text = String::from_utf8(body(page).await).unwrap();
    assert!(
        metric(&text, "theater_store_gc_runs_total{dry_run=\"false\"}") >= 1,
        "{text}"
    );
    assert!(
        metric(&text, "theater_store_gc_removed_objects_total") >= 1,
        "{text}"
    );
    assert!(
        metric(&text, "theater_store_verify_runs_total{result=\"clean\"}") >= 1,
        "{text}"
    );
}

#[tokio::test]
async fn writes_past_the_store_quota_are_refused_even_when_sent_together() {
    let (_dir, root) = root();
    let limits = Limits {
        max_store_bytes: 64 << 10,
        ..Limits::default()
    };
    let app = router(root.clone(), tokens(), limits);
    let put = |label: String, size: usize| {
        Request::put(format!("/v1/stores/docs/labels/{label}"))
            .header(header::AUTHORIZATION, format!("Bearer {WRITER}"))
            .body(Body::from(vec![label.len() as u8; size]))
            .unwrap()
    };
    // Eight writes of 12 KiB at once under a 64 KiB quota: only those
    // that fit are taken (each also costs its object and label overhead).
    let writes: Vec<_> = (0..8)
        .map(|i| {
            let app = app.clone();
            let request = put(format!("w{i:0width$}", width = i + 1), 12 << 10);
            tokio::spawn(async move { app.oneshot(request).await.unwrap().status() })
        })
        .collect();
    let mut taken = 0;
    for write in writes {
        match write.await.unwrap() {
            StatusCode::CREATED => taken += 1,
            StatusCode::PAYLOAD_TOO_LARGE => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!((1..8).contains(&taken), "{taken} taken");
    let footprint = root
        .store("docs")
        .unwrap()
        .stats()
        .await
        .unwrap()
        .footprint();
    assert!(footprint <= 64 << 10, "{footprint}");
    let refused = send(&app, put("late".into(), 60 << 10)).await;
    assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json(refused).await["kind"], "quota-exceeded");
    let page = send(&app, get("/metrics", None).body(Body::empty()).unwrap()).await;
    let text = String::from_utf8(body(page).await).unwrap();
    let refusals: u64 = metric(&text, "theater_quota_refusals_total{by=\"gateway\"}");
    // Other tests share the process's recorder: at least these.
    assert!(refusals >= 9 - taken, "{refusals} refusals counted: {text}");
}

/// The value of the metric line starting with `name` (name and labels).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}
