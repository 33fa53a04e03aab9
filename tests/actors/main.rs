//! Real wasm32-wasip2 actors run through `ActorHost`; what they did is
//! checked by reading the store back through the core API.

mod cache;
mod chain;
mod compat;
mod embedding;
mod hardening;
mod hostile;
mod keyvalue;
mod layers;
mod metering;
mod observe;
mod patterns;
mod streams;
mod watcher;

use std::sync::{LazyLock, Mutex};

use serde_json::Value;
use tempfile::TempDir;
use theater_store::StoreRoot;
use theater_store_host::{ActorComponent, ActorHost, ActorRun, RunOptions};

/// A host over a fresh root inside a temporary directory.
pub struct Harness {
    /// The directory holding the root (and nothing else), for escape checks.
    pub dir: TempDir,
    pub host: ActorHost,
}

/// One engine for the whole test binary, so each example is compiled once.
static SHARED_HOST: LazyLock<ActorHost> =
    LazyLock::new(|| ActorHost::new(StoreRoot::new("/nonexistent/unused-root")).unwrap());

impl Harness {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let host = SHARED_HOST.with_root(StoreRoot::new(dir.path().join("root")));
        Self { dir, host }
    }

    /// A host over a fresh shared root (a new database and bucket prefix
    /// on this process's private PostgreSQL and SeaweedFS).
    pub fn start_shared() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let services = theater_store_testing::Services::shared();
        services.configure_environment();
        let root = services.new_root(&dir.path().join("cache"));
        let root = StoreRoot::at(&root, theater_store::Options::default()).unwrap();
        let host = SHARED_HOST.with_root(root);
        Self { dir, host }
    }

    pub fn root(&self) -> &StoreRoot {
        self.host.root()
    }

    /// The compiled component for one of the embedded examples.
    pub fn load(&self, wasm: &'static [u8]) -> ActorComponent {
        static COMPILED: Mutex<Vec<(usize, ActorComponent)>> = Mutex::new(Vec::new());
        let key = wasm.as_ptr() as usize;
        let mut compiled = COMPILED.lock().unwrap();
        if let Some((_, component)) = compiled.iter().find(|(k, _)| *k == key) {
            return component.clone();
        }
        let component = SHARED_HOST.load(wasm).unwrap();
        compiled.push((key, component.clone()));
        component
    }

    /// Runs `init` and returns the whole run, whatever its outcome.
    pub async fn run_raw(
        &self,
        actor: &ActorComponent,
        options: RunOptions,
        param: &Value,
    ) -> ActorRun {
        self.host
            .run_init(actor, options, None, &param.to_string())
            .await
    }

    /// Runs `init`, which must succeed, and parses the new state as JSON.
    pub async fn run(
        &self,
        actor: &ActorComponent,
        options: RunOptions,
        state: Option<&Value>,
        param: &Value,
    ) -> Value {
        let state = state.map(|s| s.to_string().into_bytes());
        let run = self
            .host
            .run_init(actor, options, state, &param.to_string())
            .await;
        let new_state = run
            .outcome
            .unwrap_or_else(|failure| panic!("{param}: {failure}\nstderr: {}", run.stderr))
            .expect("the actor returns a state");
        serde_json::from_slice(&new_state).unwrap()
    }
}

/// The store id in `value[key]`, opened through the core API.
pub fn store_at(harness: &Harness, value: &Value, key: &str) -> theater_store::ContentStore {
    let id = value[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {value}"));
    harness.root().store(id).unwrap()
}

/// An actor's or command's output of `key=value` lines, as a map.
pub fn fields(output: Vec<u8>) -> std::collections::HashMap<String, String> {
    String::from_utf8(output)
        .unwrap()
        .lines()
        .map(|line| {
            let (key, value) = line.split_once('=').unwrap();
            (key.to_owned(), value.to_owned())
        })
        .collect()
}
