//! [`ActorHost`]: loads actor components and runs their `init` under the
//! grants and limits the embedder chose, one wasmtime `Store` per run.

use std::path::Path;

use theater_store::{ContentRef, Event, EventChain, Outcome, StoreRoot};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxView, WasiView};

use crate::bindings::StoreActorPre;
use crate::bindings::watch_service::WatchServicePre;
use crate::ctx::TheaterCtx;
use crate::enforce::{ActorFailure, ActorLimiter, enforce_limits, start_epoch_clock};
use crate::policy::{Grants, Limits};
use crate::{TheaterCtxView, TheaterView, add_to_linker_async};

/// How much of an actor's stderr (panic messages, mostly) is kept.
const STDERR_CAPACITY: usize = 64 << 10;

/// How much of a command's stdout and stderr is kept when captured.
const COMMAND_OUTPUT_CAPACITY: usize = 1 << 20;

/// Runs actor components against one store root.
///
/// Holds the wasmtime engine (compiled code is shared by every run) and a
/// linker with WASI p2 (no filesystem, no network, no inherited stdio) plus
/// the store and runtime imports.
#[derive(Clone)]
pub struct ActorHost {
    engine: Engine,
    linker: Linker<ActorState>,
    root: StoreRoot,
    /// What compiled code from this engine is compatible with, as text
    /// (see [`ActorHost::load_cached`]).
    engine_key: String,
}

/// A compiled, linked component, ready to be instantiated any number of
/// times: a Theater actor (exports `theater:simple/actor`), a keyvalue
/// watcher (exports `wasi:keyvalue/watcher`, world `watch-service`) or a
/// plain WASI command (exports `wasi:cli/run`, as a `fn main()` program
/// built for `wasm32-wasip2` does).
#[derive(Clone)]
pub struct ActorComponent {
    pub(crate) kind: Kind,
    /// The component's BLAKE3 hash, recorded when a run starts.
    hash: ContentRef,
    default_actor_id: String,
}

#[derive(Clone)]
pub(crate) enum Kind {
    Actor(StoreActorPre<ActorState>),
    Watcher(WatchServicePre<ActorState>),
    Command(CommandPre<ActorState>),
}

impl ActorComponent {
    /// Whether this is a WASI command, run with [`ActorHost::run_command`]
    /// rather than [`ActorHost::run_init`].
    pub fn is_command(&self) -> bool {
        matches!(self.kind, Kind::Command(_))
    }

    /// Whether this is a keyvalue watcher, run with
    /// [`ActorHost::run_watcher`].
    pub fn is_watcher(&self) -> bool {
        matches!(self.kind, Kind::Watcher(_))
    }

    /// The actor id its store calls are recorded under unless a run names
    /// another: `component-` and the first 16 hex digits of the
    /// component's BLAKE3 hash, so that runs of the same build share a chain.
    pub fn default_actor_id(&self) -> &str {
        &self.default_actor_id
    }
}

/// The actor id a component's store calls are recorded under when no
/// other is named, by [`ActorHost`] and the CLI alike: `component-` and the
/// first 16 hex digits of the component's BLAKE3 hash
/// ([`ContentRef::for_content`] of its bytes). A rebuilt component gets a
/// new id, so a new chain and none of the stores the old build created;
/// name the actor (`--actor ID`, [`ChainRecording::Actor`]) to keep them.
/// An embedding that records like the CLI does:
/// `ctx.set_chain(Some(root.event_chain(&default_actor_id(&ContentRef::for_content(&wasm)))?))`.
pub fn default_actor_id(component: &ContentRef) -> String {
    format!("component-{}", &component.hash()[..16])
}

/// What a run may reach and use.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Stores beyond the actor's own that it may use.
    pub grants: Grants,
    /// Resource limits.
    pub limits: Limits,
    /// Which event chain the run's store calls are recorded in.
    pub chain: ChainRecording,
    /// Environment variables the component sees (`NAME`, `VALUE`); none
    /// unless given, never the host's own.
    pub env: Vec<(String, String)>,
}

/// Which event chain a run's store calls are recorded in (see
/// [`theater_store::EventChain`]); the actor reads it with `get-chain`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ChainRecording {
    /// The component's own chain ([`ActorComponent::default_actor_id`]).
    #[default]
    FromComponent,
    /// The chain of this actor id.
    Actor(String),
    /// Record nothing; `get-chain` returns no events.
    Off,
}

impl ChainRecording {
    /// The actor id whose chain a run of `component` records in, if any.
    pub fn actor_id<'a>(&'a self, component: &'a ActorComponent) -> Option<&'a str> {
        match self {
            Self::FromComponent => Some(component.default_actor_id()),
            Self::Actor(id) => Some(id),
            Self::Off => None,
        }
    }
}

/// Everything a run of `init` produced.
#[derive(Debug)]
pub struct ActorRun {
    /// The new state, or why there is none.
    pub outcome: Result<Option<Vec<u8>>, ActorFailure>,
    /// Lines the actor logged through `runtime.log`.
    pub logs: Vec<String>,
    /// Lines logged past [`Limits::max_log_lines`], counted but not kept.
    pub dropped_log_lines: usize,
    /// Stores the actor created with `new`.
    pub created_stores: Vec<String>,
    /// The data passed to `runtime.shutdown`, if the actor called it.
    pub shutdown: Option<Option<Vec<u8>>>,
    /// What the actor wrote to stderr (a panic message, typically), cut at 64 KiB.
    pub stderr: String,
}

impl ActorHost {
    /// A host serving stores from `root`.
    pub fn new(root: StoreRoot) -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config)?;
        start_epoch_clock(&engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        add_to_linker_async(&mut linker)?;
        crate::keyvalue::add_to_linker_async(&mut linker)?;
        let engine_key = engine_key(&engine);
        Ok(Self {
            engine,
            linker,
            root,
            engine_key,
        })
    }

    /// A host over another root that shares this one's engine, so that
    /// components loaded by either run on both without recompiling.
    pub fn with_root(&self, root: StoreRoot) -> Self {
        Self {
            root,
            ..self.clone()
        }
    }

    /// The root every actor's stores live in.
    pub fn root(&self) -> &StoreRoot {
        &self.root
    }

    /// Compiles and links a component from its bytes. Fails when it is not
    /// a component, imports something this host does not provide, or is
    /// neither an actor nor a command.
    pub fn load(&self, wasm: &[u8]) -> wasmtime::Result<ActorComponent> {
        let component = Component::new(&self.engine, wasm)?;
        self.link(component, &ContentRef::for_content(wasm))
    }

    /// [`ActorHost::load`], keeping the compiled code in the root's
    /// component cache ([`StoreRoot::component_cache`]), labelled by the
    /// component's BLAKE3 hash and the engine's compatibility hash: the
    /// next load of the same bytes by a compatible engine deserializes
    /// instead of compiling. Cached code is content like any other,
    /// verified against its hash on the way out. A cache that cannot be
    /// read or written costs only the compile.
    pub async fn load_cached(&self, wasm: &[u8]) -> wasmtime::Result<ActorComponent> {
        let cache = self.root.component_cache();
        let hash = ContentRef::for_content(wasm);
        let label = format!("{}/{}", hash.hash(), self.engine_key);
        if let Ok(Some(compiled)) = cache.get_content_by_label(&label).await {
            // SAFETY: these bytes were written by `Component::serialize`
            // under this label, whose engine part matches only an engine
            // with the same compatibility hash, and they were just checked
            // against their BLAKE3 ref, so they are exactly what was written.
            if let Ok(component) = unsafe { Component::deserialize(&self.engine, &compiled) } {
                return self.link(component, &hash);
            }
        }
        let component = Component::new(&self.engine, wasm)?;
        if let Ok(compiled) = component.serialize() {
            let _ = cache.store_at_label(&label, compiled).await;
        }
        self.link(component, &hash)
    }

    /// Compiles and links a component from a `.wasm` file, through the
    /// component cache (see [`ActorHost::load_cached`]).
    pub async fn load_file_cached(&self, path: &Path) -> wasmtime::Result<ActorComponent> {
        self.load_cached(&read_component(path)?).await
    }

    fn link(&self, component: Component, hash: &ContentRef) -> wasmtime::Result<ActorComponent> {
        let pre = self.linker.instantiate_pre(&component)?;
        let kind = if let Ok(actor) = StoreActorPre::new(pre.clone()) {
            Kind::Actor(actor)
        } else if let Ok(watcher) = WatchServicePre::new(pre.clone()) {
            Kind::Watcher(watcher)
        } else {
            match CommandPre::new(pre) {
                Ok(command) => Kind::Command(command),
                Err(not_command) => {
                    return Err(not_command.context(
                        "the component is not a Theater actor (exporting theater:simple/actor), \
                         a keyvalue watcher (exporting wasi:keyvalue/watcher) or a WASI command \
                         (exporting wasi:cli/run)",
                    ));
                }
            }
        };
        Ok(ActorComponent {
            kind,
            default_actor_id: default_actor_id(hash),
            hash: hash.clone(),
        })
    }

    /// Compiles and links an actor component from a `.wasm` file.
    pub fn load_file(&self, path: &Path) -> wasmtime::Result<ActorComponent> {
        self.load(&read_component(path)?)
    }

    /// Instantiates `actor` with a fresh context and calls its `init` with
    /// the previous `state` and `param`. A trap, timeout or memory overrun
    /// ends only this run; the host carries on.
    pub async fn run_init(
        &self,
        actor: &ActorComponent,
        options: RunOptions,
        state: Option<Vec<u8>>,
        param: &str,
    ) -> ActorRun {
        let limits = options.limits.clone();
        let Kind::Actor(pre) = &actor.kind else {
            return ActorRun::refused(ActorFailure::InvalidOptions(
                "the component is not a Theater actor, so it has no init: run it as a command \
                 or a watcher"
                    .into(),
            ));
        };
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let wasi = WasiCtx::builder()
            .stderr(stderr.clone())
            .envs(&options.env)
            .build();
        let mut store = match self.new_store(actor, options, wasi) {
            Ok(store) => store,
            Err(failure) => return ActorRun::refused(failure),
        };
        let chain = store.data().theater.chain().cloned();
        let mut host_notes = record_start(chain.as_ref(), actor, "init", &limits).await;
        host_notes.extend(restore_created(&mut store).await);

        let outcome = match pre.instantiate_async(&mut store).await {
            Err(error) => Err(store.data().failure(&error, ActorFailure::of_instantiation)),
            Ok(instance) => {
                let call = instance
                    .theater_simple_actor()
                    .call_init(&mut store, state.as_deref(), (param,))
                    .await;
                match call {
                    Ok(Ok((new_state,))) => Ok(new_state),
                    Ok(Err(message)) => Err(ActorFailure::Returned(message)),
                    Err(trap) => Err(store.data().failure(&trap, ActorFailure::of_call)),
                }
            }
        };
        let data = store.data_mut();
        // An actor whose host call gave up at the deadline may have carried
        // on and returned; it still ran out of time.
        let outcome = match outcome {
            _ if data.theater.timed_out() => Err(ActorFailure::TimedOut(limits.timeout)),
            outcome => outcome,
        };
        let end = Event {
            size: outcome
                .as_ref()
                .ok()
                .map(|state| state.as_ref().map_or(0, |s| s.len() as u64)),
            outcome: run_outcome(outcome.as_ref().err()),
            ..Event::new("run-end")
        };
        host_notes.extend(record(chain.as_ref(), end, &limits).await);
        let (mut logs, dropped_log_lines) = data.theater.take_logs();
        logs.extend(host_notes);
        let mut created_stores: Vec<String> =
            data.theater.created_stores().map(str::to_owned).collect();
        created_stores.sort();
        ActorRun {
            outcome,
            logs,
            dropped_log_lines,
            created_stores,
            shutdown: data.theater.shutdown_requested().cloned(),
            stderr: String::from_utf8_lossy(&stderr.contents()).into_owned(),
        }
    }

    /// Instantiates a WASI command and calls its `run` (its `main`) with
    /// `args` as its argv (the first is the program's name, by
    /// convention), under the same grants, limits and event chain as an
    /// actor. Its stdout and stderr go where `output` says.
    pub async fn run_command(
        &self,
        command: &ActorComponent,
        options: RunOptions,
        args: &[String],
        output: CommandOutput,
    ) -> CommandRun {
        let limits = options.limits.clone();
        let Kind::Command(pre) = &command.kind else {
            return CommandRun::refused(ActorFailure::InvalidOptions(
                "the component is not a WASI command: run a Theater actor's init, or a \
                 watcher with buckets to watch"
                    .into(),
            ));
        };
        let stdout = MemoryOutputPipe::new(COMMAND_OUTPUT_CAPACITY);
        let stderr = MemoryOutputPipe::new(COMMAND_OUTPUT_CAPACITY);
        let mut wasi = WasiCtx::builder();
        wasi.args(args).envs(&options.env);
        match output {
            CommandOutput::Inherit => wasi.inherit_stdout().inherit_stderr(),
            CommandOutput::Capture => wasi.stdout(stdout.clone()).stderr(stderr.clone()),
        };
        let mut store = match self.new_store(command, options, wasi.build()) {
            Ok(store) => store,
            Err(failure) => return CommandRun::refused(failure),
        };
        let chain = store.data().theater.chain().cloned();
        let mut host_notes = record_start(chain.as_ref(), command, "command", &limits).await;
        host_notes.extend(restore_created(&mut store).await);
        let outcome = match pre.instantiate_async(&mut store).await {
            Err(error) => Err(store.data().failure(&error, ActorFailure::of_instantiation)),
            Ok(instance) => match instance.wasi_cli_run().call_run(&mut store).await {
                Ok(Ok(())) => Ok(0),
                Ok(Err(())) => Ok(1),
                Err(trap) => match trap.downcast_ref::<I32Exit>() {
                    Some(exit) => Ok(exit.0),
                    None => Err(store.data().failure(&trap, ActorFailure::of_call)),
                },
            },
        };
        let outcome = match outcome {
            _ if store.data().theater.timed_out() => Err(ActorFailure::TimedOut(limits.timeout)),
            outcome => outcome,
        };
        let end_outcome = match &outcome {
            Ok(0) => Outcome::Ok,
            Ok(code) => Outcome::Error {
                kind: "exit".into(),
                message: format!("exited with code {code}"),
            },
            Err(failure) => run_outcome(Some(failure)),
        };
        let stderr = end_run(chain.as_ref(), end_outcome, &limits, host_notes, &stderr).await;
        CommandRun {
            outcome,
            stdout: stdout.contents().to_vec(),
            stderr,
        }
    }

    /// A wasmtime store for one run: the context under the run's grants,
    /// limits and chain, its deadline, and the memory limiter.
    pub(crate) fn new_store(
        &self,
        component: &ActorComponent,
        options: RunOptions,
        wasi: WasiCtx,
    ) -> Result<Store<ActorState>, ActorFailure> {
        let limits = options.limits.clone();
        let chain = options
            .chain
            .actor_id(component)
            .map(|id| self.root.event_chain(id))
            .transpose()
            .map_err(|error| ActorFailure::InvalidOptions(error.to_string()))?;
        let mut store_ctx = TheaterCtx::new(self.root.clone(), options.grants, options.limits);
        store_ctx.set_chain(chain);
        let data = ActorState {
            wasi,
            table: ResourceTable::new(),
            theater: store_ctx,
            memory: ActorLimiter::new(&limits),
        };
        let mut store = Store::new(&self.engine, data);
        enforce_limits(&mut store, &limits, |data| &mut data.memory);
        Ok(store)
    }
}

/// Where a command's stdout and stderr go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandOutput {
    /// To this process's own stdout and stderr (what `theater-store run` does).
    Inherit,
    /// Into [`CommandRun::stdout`] and [`CommandRun::stderr`], up to 1 MiB each.
    Capture,
}

/// What a command's run produced.
#[derive(Debug)]
pub struct CommandRun {
    /// Its exit code (0 for success; `std::process::exit(n)` gives n), or
    /// why it did not finish.
    pub outcome: Result<i32, ActorFailure>,
    /// Its stdout, when captured.
    pub stdout: Vec<u8>,
    /// Its stderr, when captured.
    pub stderr: String,
}

impl CommandRun {
    /// A run that never started.
    fn refused(failure: ActorFailure) -> Self {
        Self {
            outcome: Err(failure),
            stdout: Vec::new(),
            stderr: String::new(),
        }
    }
}

fn read_component(path: &Path) -> wasmtime::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|error| wasmtime::Error::msg(format!("reading {}: {error}", path.display())))
}

/// The engine's compatibility hash (which settings and version compiled
/// code depends on) as 16 hex digits, stable across processes.
fn engine_key(engine: &Engine) -> String {
    /// Collects what the hash feeds it, to hash it with BLAKE3.
    #[derive(Default)]
    struct Bytes(Vec<u8>);
    impl std::hash::Hasher for Bytes {
        fn write(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
        fn finish(&self) -> u64 {
            0
        }
    }
    let mut bytes = Bytes::default();
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut bytes);
    ContentRef::for_content(&bytes.0).hash()[..16].to_owned()
}

impl ActorRun {
    /// A run that never started.
    fn refused(failure: ActorFailure) -> Self {
        Self {
            outcome: Err(failure),
            logs: Vec::new(),
            dropped_log_lines: 0,
            created_stores: Vec::new(),
            shutdown: None,
            stderr: String::new(),
        }
    }
}

/// Records that a run of `component` starts (`how`: `init` or `command`)
/// in its chain, if it has one. Returns a note for the run's output if
/// the chain could not take it.
pub(crate) async fn record_start(
    chain: Option<&EventChain>,
    component: &ActorComponent,
    how: &str,
    limits: &Limits,
) -> Vec<String> {
    let start = Event {
        label: Some(how.to_owned()),
        refs: vec![component.hash.hash().to_owned()],
        ..Event::new("run-start")
    };
    record(chain, start, limits).await
}

/// Appends a run's own event (`run-start`, `run-end`) to its chain, if it
/// has one, waiting no longer than the run's timeout (the root's write
/// lock may be held elsewhere); a failure becomes a note for the run's
/// output, never silence.
pub(crate) async fn record(
    chain: Option<&EventChain>,
    event: Event,
    limits: &Limits,
) -> Vec<String> {
    let Some(chain) = chain else {
        return Vec::new();
    };
    let event_type = event.event_type.clone();
    let appended = tokio::time::timeout(limits.timeout, chain.append(event.bounded())).await;
    let error = match appended {
        Ok(Ok(())) => return Vec::new(),
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!("the store did not take it within {:?}", limits.timeout),
    };
    vec![format!(
        "host: could not record {event_type} in the chain of {}: {error}",
        chain.actor()
    )]
}

/// Records a run's `run-end` event with `outcome`, and gives the run's
/// stderr followed by the host's notes (one per line).
pub(crate) async fn end_run(
    chain: Option<&EventChain>,
    outcome: Outcome,
    limits: &Limits,
    mut host_notes: Vec<String>,
    stderr: &MemoryOutputPipe,
) -> String {
    let end = Event {
        outcome,
        ..Event::new("run-end")
    };
    host_notes.extend(record(chain, end, limits).await);
    let mut text = String::from_utf8_lossy(&stderr.contents()).into_owned();
    for note in host_notes {
        text.push_str(&note);
        text.push('\n');
    }
    text
}

/// Gives the actor back the stores it created in earlier runs; a failure
/// becomes a note for the run's output (the run goes on without them).
pub(crate) async fn restore_created(store: &mut Store<ActorState>) -> Vec<String> {
    match store.data_mut().theater.restore_created_stores().await {
        Ok(_) => Vec::new(),
        Err(error) => vec![format!(
            "host: the stores this actor created in earlier runs could not be restored: {error}"
        )],
    }
}

/// How a run ended, as its `run-end` event records it.
pub(crate) fn run_outcome(failure: Option<&ActorFailure>) -> Outcome {
    match failure {
        None => Outcome::Ok,
        Some(failure) => Outcome::Error {
            kind: failure.kind().into(),
            message: failure.to_string(),
        },
    }
}

/// The data of each run's wasmtime `Store`.
pub(crate) struct ActorState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) theater: TheaterCtx,
    pub(crate) memory: ActorLimiter,
}

impl ActorState {
    /// What `error` from instantiating or calling the actor was, by
    /// `classify` ([`ActorFailure::of_instantiation`] or
    /// [`ActorFailure::of_call`]).
    pub(crate) fn failure(
        &self,
        error: &wasmtime::Error,
        classify: fn(&wasmtime::Error, &TheaterCtx, &ActorLimiter) -> ActorFailure,
    ) -> ActorFailure {
        classify(error, &self.theater, &self.memory)
    }
}

impl WasiView for ActorState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl TheaterView for ActorState {
    fn theater_view(&mut self) -> TheaterCtxView<'_> {
        TheaterCtxView {
            ctx: &mut self.theater,
            table: &mut self.table,
        }
    }
}

impl std::fmt::Debug for ActorHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorHost")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}
