//! A hand-built embedding (own engine, linker and store data, as
//! crates/host/examples/embed.rs shows) gets the same limits as
//! `ActorHost`: the hostile actors are stopped the same way, with the
//! same figures, and records in the same chain when asked to.

use std::time::Duration;

use serde_json::{Value, json};
use theater_store::{ContentRef, EventChain, StoreRoot};
use theater_store_examples::{HOSTILE, THEATER_COMPAT};
use theater_store_host::wasmtime::component::{Component, Linker, ResourceTable};
use theater_store_host::wasmtime::{Config, Engine, Store};
use theater_store_host::wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use theater_store_host::{
    ActorFailure, ActorLimiter, Grants, Limits, RunOptions, StoreActorPre, TheaterCtx,
    TheaterCtxView, TheaterView, default_actor_id, enforce_limits, start_epoch_clock,
};

use crate::Harness;
use crate::hardening::multi_memory_actor;

struct Data {
    wasi: WasiCtx,
    table: ResourceTable,
    theater: TheaterCtx,
    limiter: ActorLimiter,
}

impl WasiView for Data {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl TheaterView for Data {
    fn theater_view(&mut self) -> TheaterCtxView<'_> {
        TheaterCtxView {
            ctx: &mut self.theater,
            table: &mut self.table,
        }
    }
}

/// Runs `wasm`'s `init` with `param` in an embedding built from the host
/// crate's public pieces only, recording its calls in `chain`.
async fn run_by_hand(
    root: &StoreRoot,
    wasm: &[u8],
    limits: &Limits,
    param: &str,
    chain: Option<EventChain>,
) -> Result<Option<Vec<u8>>, ActorFailure> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    let engine = Engine::new(&config).unwrap();
    start_epoch_clock(&engine).unwrap();
    let mut linker = Linker::<Data>::new(&engine);
    theater_store_host::wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    theater_store_host::add_to_linker_async(&mut linker).unwrap();
    let component = Component::new(&engine, wasm).unwrap();
    let pre = StoreActorPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
    let data = Data {
        wasi: WasiCtx::builder().build(),
        table: ResourceTable::new(),
        theater: TheaterCtx::new(root.clone(), Grants::none(), limits.clone()),
        limiter: ActorLimiter::new(limits),
    };
    let mut store = Store::new(&engine, data);
    store.data_mut().theater.set_chain(chain);
    enforce_limits(&mut store, limits, |data| &mut data.limiter);
    let instance = match pre.instantiate_async(&mut store).await {
        Ok(instance) => instance,
        Err(error) => {
            return Err(ActorFailure::of_instantiation(
                &error,
                &store.data().theater,
                &store.data().limiter,
            ));
        }
    };
    match instance
        .theater_simple_actor()
        .call_init(&mut store, None, (param,))
        .await
    {
        Ok(Ok((state,))) => Ok(state),
        Ok(Err(message)) => Err(ActorFailure::Returned(message)),
        Err(trap) => {
            let data = store.data();
            Err(ActorFailure::of_call(&trap, &data.theater, &data.limiter))
        }
    }
}

/// The failure as a comparable summary: its kind and the limit named.
fn summary(outcome: &Result<Option<Vec<u8>>, ActorFailure>) -> String {
    match outcome {
        Err(ActorFailure::OutOfMemory { limit, .. }) => format!("out of memory at {limit}"),
        Err(ActorFailure::TimedOut(after)) => format!("timed out after {after:?}"),
        Err(ActorFailure::Trapped(_)) => "trapped".into(),
        Err(ActorFailure::Instantiation(_)) => "not instantiated".into(),
        other => format!("{other:?}"),
    }
}

/// Runs the same attack under `ActorHost` and by hand; both summaries.
async fn both(wasm: &'static [u8], limits: Limits, param: Value) -> (String, String) {
    let h = Harness::start();
    let options = RunOptions {
        limits: limits.clone(),
        ..RunOptions::default()
    };
    let actor = h.host.load(wasm).unwrap();
    let hosted = h.run_raw(&actor, options, &param).await.outcome;
    let by_hand = run_by_hand(h.root(), wasm, &limits, &param.to_string(), None).await;
    (summary(&hosted), summary(&by_hand))
}

#[tokio::test]
async fn a_memory_bomb_is_stopped_at_the_same_limit_by_hand() {
    let limits = Limits {
        max_memory_bytes: 64 << 20,
        ..Limits::default()
    };
    let (hosted, by_hand) = both(HOSTILE, limits, json!({"attack": "memory-bomb"})).await;
    assert_eq!(hosted, "out of memory at 67108864");
    assert_eq!(by_hand, hosted);
}

#[tokio::test]
async fn many_memories_share_one_budget_by_hand() {
    let limits = Limits {
        max_memory_bytes: 64 << 20,
        ..Limits::default()
    };
    // Each memory alone within the limit; together twelve times over it.
    let greedy: &'static [u8] = Vec::leak(multi_memory_actor(12, 900));
    let (hosted, by_hand) = both(greedy, limits.clone(), json!(null)).await;
    assert_eq!(hosted, "out of memory at 67108864");
    assert_eq!(by_hand, hosted);
    // More memories than allowed at all: refused at instantiation.
    let many: &'static [u8] = Vec::leak(multi_memory_actor(40, 0));
    let (hosted, by_hand) = both(many, limits, json!(null)).await;
    assert_eq!(hosted, "not instantiated");
    assert_eq!(by_hand, hosted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_times_out_by_hand() {
    let limits = Limits {
        timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (hosted, by_hand) = both(HOSTILE, limits, json!({"attack": "infinite-loop"})).await;
    assert_eq!(hosted, "timed out after 300ms");
    assert_eq!(by_hand, hosted);
}

/// A view whose resource table is not WASI's (so a streamed read could
/// not be found later) is caught at the first streaming call, naming the
/// rule, instead of failing obscurely at a later read.
#[tokio::test]
async fn a_view_with_a_table_other_than_wasis_is_caught_at_the_first_call() {
    struct Split {
        wasi: WasiCtx,
        wasi_table: ResourceTable,
        store_table: ResourceTable,
        theater: TheaterCtx,
    }
    impl WasiView for Split {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.wasi_table,
            }
        }
    }
    impl TheaterView for Split {
        fn theater_view(&mut self) -> TheaterCtxView<'_> {
            TheaterCtxView {
                ctx: &mut self.theater,
                table: &mut self.store_table,
            }
        }
    }
    let h = Harness::start();
    let root = h.root().clone();
    let run = tokio::spawn(async move {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).unwrap();
        let mut linker = Linker::<Split>::new(&engine);
        theater_store_host::wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        theater_store_host::add_to_linker_async(&mut linker).unwrap();
        let component = Component::new(&engine, theater_store_examples::LARGE_FILES).unwrap();
        let pre = StoreActorPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
        let data = Split {
            wasi: WasiCtx::builder().build(),
            wasi_table: ResourceTable::new(),
            store_table: ResourceTable::new(),
            theater: TheaterCtx::new(
                root,
                Grants::none().any_store(theater_store_host::Access::ReadWrite),
                Limits::default(),
            ),
        };
        let mut store = Store::new(&engine, data);
        store.set_epoch_deadline(u64::MAX);
        let instance = pre.instantiate_async(&mut store).await.unwrap();
        let param = json!({"op": "write", "store": "media", "label": "clip", "size": 1024, "chunk": 512, "seed": 1});
        let _ = instance
            .theater_simple_actor()
            .call_init(&mut store, None, (&param.to_string(),))
            .await;
    });
    let panic = run
        .await
        .expect_err("the wrong table is refused")
        .into_panic();
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        message.contains("TheaterView::theater_view must return"),
        "{message}"
    );
}

#[tokio::test]
async fn an_embedding_records_in_the_chain_the_cli_uses_by_default() {
    let h = Harness::start();
    let actor = h.load(THEATER_COMPAT);
    let id = default_actor_id(&ContentRef::for_content(THEATER_COMPAT));
    assert_eq!(id, actor.default_actor_id());
    let hosted = h.host.run_init(&actor, RunOptions::default(), None, "one");
    hosted.await.outcome.unwrap();
    let chain = h.root().event_chain(&id).unwrap();
    let before = chain.events(usize::MAX).await.unwrap().len();
    assert!(before > 1, "ActorHost recorded the run under {id}");

    let limits = Limits::default();
    let by_hand = run_by_hand(
        h.root(),
        THEATER_COMPAT,
        &limits,
        "one",
        Some(chain.clone()),
    );
    let state = by_hand.await.unwrap().unwrap();
    // The actor reads its chain with get-chain: the hosted run's events
    // come first, then this run's own calls, one chain.
    let fields = crate::fields(state);
    assert_eq!(fields["chain_linked"], "true");
    let after = chain.events(usize::MAX).await.unwrap();
    // The hosted run adds run-start and run-end; the embedding, only calls.
    assert_eq!(after.len(), before + (before - 2));
    assert!(chain.verify().await.unwrap().is_intact());
}
