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

use std::sync::{Condvar, LazyLock, Mutex};

use serde_json::Value;
use tempfile::TempDir;
use theater_store::StoreRoot;
use theater_store_host::{ActorComponent, ActorHost, ActorRun, RunOptions};

/// A host over a fresh root inside a temporary directory.
pub struct Harness {
    /// The directory holding the root (and nothing else), for escape checks.
    pub dir: TempDir,
    pub host: ActorHost,
    /// Held by tests on the shared servers, so that a test stopping one
    /// ([`servers_to_myself`]) runs alone.
    _servers: Option<ServersInUse>,
}

/// Who uses the shared servers: tests count themselves in; a test that
/// stops one waits until none does and keeps new ones out meanwhile.
#[derive(Default)]
struct Servers {
    users: usize,
    stopping: bool,
}

static SERVERS: Mutex<Servers> = Mutex::new(Servers {
    users: 0,
    stopping: false,
});
static SERVERS_CHANGED: Condvar = Condvar::new();

fn servers() -> std::sync::MutexGuard<'static, Servers> {
    SERVERS.lock().unwrap_or_else(|e| e.into_inner())
}

fn wait_for_servers(
    servers: std::sync::MutexGuard<'static, Servers>,
    until: impl Fn(&Servers) -> bool,
) -> std::sync::MutexGuard<'static, Servers> {
    SERVERS_CHANGED
        .wait_while(servers, |state| !until(state))
        .unwrap_or_else(|e| e.into_inner())
}

/// A test's use of the shared servers, ended when dropped.
pub struct ServersInUse(());

impl ServersInUse {
    fn start() -> Self {
        wait_for_servers(servers(), |state| !state.stopping).users += 1;
        Self(())
    }
}

impl Drop for ServersInUse {
    fn drop(&mut self) {
        servers().users -= 1;
        SERVERS_CHANGED.notify_all();
    }
}

/// The shared servers, for one test alone, until dropped.
pub struct ServersAlone(());

impl Drop for ServersAlone {
    fn drop(&mut self) {
        servers().stopping = false;
        SERVERS_CHANGED.notify_all();
    }
}

/// Waits until no other test uses the shared servers and keeps them from
/// starting, for a test that stops and restarts one.
pub fn servers_to_myself() -> ServersAlone {
    wait_for_servers(servers(), |state| !state.stopping).stopping = true;
    drop(wait_for_servers(servers(), |state| state.users == 0));
    ServersAlone(())
}

/// One engine for the whole test binary, so each example is compiled once.
static SHARED_HOST: LazyLock<ActorHost> =
    LazyLock::new(|| ActorHost::new(StoreRoot::new("/nonexistent/unused-root")).unwrap());

impl Harness {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let host = SHARED_HOST.with_root(StoreRoot::new(dir.path().join("root")));
        Self {
            dir,
            host,
            _servers: None,
        }
    }

    /// A host over a fresh shared root (a new database and bucket prefix
    /// on this process's private PostgreSQL and SeaweedFS).
    pub fn start_shared() -> Self {
        let servers = ServersInUse::start();
        let dir = tempfile::tempdir().unwrap();
        let services = theater_store_testing::Services::shared();
        services.configure_environment();
        let root = services.new_root(&dir.path().join("cache"));
        Self::on_shared_root(dir, &root, Some(servers))
    }

    /// A host over the shared root `root` (a root string).
    pub fn on_shared_root(dir: TempDir, root: &str, servers: Option<ServersInUse>) -> Self {
        let root = StoreRoot::at(root, theater_store::Options::default()).unwrap();
        let host = SHARED_HOST.with_root(root);
        Self {
            dir,
            host,
            _servers: servers,
        }
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
