//! The browser UI in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which `scripts/services install` installs), driven
//! over WebDriver: stores, labels, live changes, previews with their
//! verification, a chain.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use theater_store::StoreRoot;
use theater_store_gateway::{Access, Limits, Tokens, router};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const TOKEN: &str = "browser-token-0123456789";

/// One WebDriver call: `method` on `path` with a JSON body; its `value`.
fn webdriver(driver: SocketAddr, method: &str, path: &str, body: &Value) -> Value {
    let body = body.to_string();
    let mut stream = TcpStream::connect(driver).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {driver}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    // chromedriver keeps the connection open: read the head, then as many
    // bytes as it says.
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        answer.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map(|n| n.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    let mut json = vec![0u8; length];
    stream.read_exact(&mut json).unwrap();
    let value: Value = serde_json::from_slice(&json)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&json)));
    value["value"].clone()
}

/// A chromedriver of its own, on a free port; killed when dropped.
struct Driver {
    child: Child,
    address: SocketAddr,
    session: String,
}

impl Driver {
    fn start() -> Self {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
            "the browser test needs Debian's chromium and chromium-driver: run scripts/services install"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let started = Instant::now();
        while TcpStream::connect(address).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
            }
        }}});
        let session = webdriver(address, "POST", "/session", &capabilities);
        let session = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_owned();
        Self {
            child,
            address,
            session,
        }
    }

    fn open(&self, url: &str) {
        let path = format!("/session/{}/url", self.session);
        webdriver(self.address, "POST", &path, &json!({ "url": url }));
    }

    fn script(&self, script: &str) -> Value {
        let path = format!("/session/{}/execute/sync", self.session);
        webdriver(
            self.address,
            "POST",
            &path,
            &json!({ "script": script, "args": [] }),
        )
    }

    /// The text of the elements `selector` picks, once `ready` holds for
    /// it (the page fetches as it goes).
    fn text_when(&self, selector: &str, ready: impl Fn(&str) -> bool) -> String {
        let script = format!(
            "return Array.from(document.querySelectorAll({selector:?})).map(e => e.textContent).join('\\n');"
        );
        let started = Instant::now();
        loop {
            let text = self.script(&script).as_str().unwrap_or_default().to_owned();
            if ready(&text) {
                return text;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{selector} never became ready; it reads {text:?}; the page: {}",
                self.script("return document.body.innerText;")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = std::panic::catch_unwind(|| webdriver(self.address, "DELETE", &path, &json!({})));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_ui_browses_previews_verifies_and_follows_changes_in_a_real_browser() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = StoreRoot::new(dir.path().join("root"));
    let docs = root.store("docs").unwrap();
    let chain = root.event_chain("ui-actor").unwrap();
    let address = runtime.block_on(async {
        docs.store_at_label("notes/readme", b"hello browser".to_vec())
            .await
            .unwrap();
        docs.store_at_label("blob", vec![0u8, 1, 2, 255, 254])
            .await
            .unwrap();
        for label in ["one", "two"] {
            let event = theater_store::Event {
                store: Some("docs".into()),
                label: Some(label.into()),
                ..theater_store::Event::new("store-at-label")
            };
            chain.append(event).await.unwrap();
        }
        let tokens = Tokens::parse(&format!("{TOKEN} *\n")).unwrap();
        let limits = Limits::default();
        let app = router(root.clone(), Access::Tokens(tokens), limits.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            theater_store_gateway::serve(listener, app, &limits, std::future::pending()).await
        });
        address
    });
    let base = format!("http://{address}/");
    let browser = Driver::start();

    // Without the token the gateway refuses, and the page says so.
    browser.open(&base);
    browser.text_when("#error", |text| text.contains("bearer token"));
    browser.script(&format!(
        "const t = document.getElementById('token'); t.value = {TOKEN:?}; \
         t.dispatchEvent(new Event('change'));"
    ));
    browser.text_when("tr.store", |text| text.contains("docs"));

    // A store's labels, then a change made elsewhere appears live.
    browser.open(&format!("{base}#/stores/docs"));
    browser.text_when("tr.label", |text| {
        text.contains("notes/readme") && text.contains("blob")
    });
    std::thread::sleep(Duration::from_millis(300));
    runtime
        .block_on(docs.store_at_label("arrived", b"while watching".to_vec()))
        .unwrap();
    browser.text_when("li.change", |text| text.contains("arrived"));

    // Previews: text, and bytes as hex, each with its verification.
    browser.open(&format!("{base}#/stores/docs/labels/notes/readme"));
    browser.text_when("#preview", |text| text == "hello browser");
    browser.text_when("#verification", |text| text.starts_with("verified"));
    browser.open(&format!("{base}#/stores/docs/labels/blob"));
    browser.text_when("#preview", |text| text.contains("00000000  00 01 02 ff fe"));

    // An actor's chain, checked link by link.
    browser.open(&format!("{base}#/chains/ui-actor"));
    browser.text_when("#chain-verdict", |text| text.starts_with("verified"));
    browser.text_when("tr.event", |text| {
        text.contains("one") && text.contains("two")
    });
}
