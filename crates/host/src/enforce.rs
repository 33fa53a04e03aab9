//! What makes [`Limits`] hold in any embedding, not only in
//! [`ActorHost`](crate::ActorHost), which is built from these same pieces:
//!
//! - [`ActorLimiter`]: one budget over all of an actor's memories and
//!   tables, with caps on how many it may have;
//! - [`start_epoch_clock`] and [`enforce_limits`]: the deadline, as an
//!   epoch interrupt (the engine needs `Config::epoch_interruption(true)`);
//! - [`ActorFailure::of_instantiation`] and [`ActorFailure::of_call`]:
//!   what a failed instantiation or call was (timeout, out of memory, trap).

use std::time::Duration;

use wasmtime::{Engine, ResourceLimiter, Store, Trap};

use crate::ctx::TheaterCtx;
use crate::policy::Limits;

/// How often [`start_epoch_clock`] ticks: the deadline's resolution.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Bytes charged per table element: a pointer-sized reference.
const TABLE_ELEMENT_BYTES: usize = 8;

/// Caps what an actor's instances allocate, all together: every linear
/// memory and table counts against one [`Limits::max_memory_bytes`], so a
/// component with many memories gets no more than one with a single
/// memory (wasmtime's `StoreLimits` caps each memory alone). Remembers
/// whether it had to refuse, so that the trap that follows is reported as
/// running out of memory ([`ActorFailure::of_call`]).
#[derive(Debug)]
pub struct ActorLimiter {
    max_bytes: usize,
    used_bytes: usize,
    max_instances: usize,
    max_memories: usize,
    max_tables: usize,
    refused: bool,
}

impl ActorLimiter {
    /// A limiter for `limits`' memory, instance, memory-count and
    /// table-count caps.
    pub fn new(limits: &Limits) -> Self {
        Self {
            max_bytes: limits.max_memory_bytes,
            used_bytes: 0,
            max_instances: limits.max_instances,
            max_memories: limits.max_memories,
            max_tables: limits.max_tables,
            refused: false,
        }
    }

    /// Whether it refused a memory or table growth.
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// Grows the total by `added` bytes if that stays within the limit.
    fn charge(&mut self, added: usize) -> bool {
        match self.used_bytes.checked_add(added) {
            Some(total) if total <= self.max_bytes => {
                self.used_bytes = total;
                true
            }
            _ => {
                self.refused = true;
                false
            }
        }
    }
}

impl ResourceLimiter for ActorLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.charge(desired.saturating_sub(current)))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let added = desired.saturating_sub(current);
        Ok(self.charge(added.saturating_mul(TABLE_ELEMENT_BYTES)))
    }

    fn instances(&self) -> usize {
        self.max_instances
    }

    fn memories(&self) -> usize {
        self.max_memories
    }

    fn tables(&self) -> usize {
        self.max_tables
    }
}

/// Ticks `engine`'s epoch every [`EPOCH_TICK`] on a thread of its own,
/// which ends once the engine is dropped. Start one per engine; the
/// engine must have been made with `Config::epoch_interruption(true)`.
pub fn start_epoch_clock(engine: &Engine) -> std::io::Result<()> {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("theater-store-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .map(drop)
}

/// Puts a new `store` under `limits`: the limiter `limiter` finds in its
/// data caps memory and tables, and wasm code traps once
/// [`Limits::timeout`] has passed (with [`start_epoch_clock`] running).
/// The actor's [`TheaterCtx`] carries the same deadline for host calls
/// ([`TheaterCtx::new`] starts it).
pub fn enforce_limits<T: 'static>(
    store: &mut Store<T>,
    limits: &Limits,
    limiter: impl FnMut(&mut T) -> &mut ActorLimiter + Send + Sync + 'static,
) {
    let mut limiter = limiter;
    store.limiter(move |data| limiter(data) as &mut dyn ResourceLimiter);
    store.set_epoch_deadline(deadline_ticks(limits.timeout));
    store.epoch_deadline_trap();
}

/// Epoch ticks until `timeout` has passed (one more, so never early).
pub(crate) fn deadline_ticks(timeout: Duration) -> u64 {
    let ticks = timeout.as_nanos() / EPOCH_TICK.as_nanos();
    u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
}

/// Why a run produced no result.
#[derive(Debug, thiserror::Error)]
pub enum ActorFailure {
    /// `init` returned `err(message)`.
    #[error("the actor returned an error: {0}")]
    Returned(String),
    /// The actor ran past [`Limits::timeout`] and was stopped.
    #[error("the actor ran past its {0:?} deadline and was stopped")]
    TimedOut(Duration),
    /// The actor tried to grow its memories and tables, all together, past
    /// [`Limits::max_memory_bytes`].
    #[error("the actor tried to grow its memory past the {limit} byte limit and trapped: {trap}")]
    OutOfMemory {
        /// The limit in force.
        limit: usize,
        /// The trap that followed.
        trap: String,
    },
    /// The actor trapped (a panic, an `unreachable`, a bad memory access).
    #[error("the actor trapped: {0}")]
    Trapped(String),
    /// The component could not be instantiated.
    #[error("the actor could not be instantiated: {0}")]
    Instantiation(String),
    /// A watcher could not be given its next change (its bucket's log
    /// was trimmed past its position, a value is over its read limit,
    /// the store failed), so it was stopped before that change.
    #[error("the watcher was stopped: {0}")]
    WatchStopped(String),
    /// The run's options were refused (an invalid actor id).
    #[error("the run could not start: {0}")]
    InvalidOptions(String),
}

impl ActorFailure {
    /// A short, stable name for the failure, as a run's `run-end` event
    /// records it: `returned`, `timed-out`, `out-of-memory`, `trapped`,
    /// `instantiation`, `watch-stopped` or `invalid-options`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Returned(_) => "returned",
            Self::TimedOut(_) => "timed-out",
            Self::OutOfMemory { .. } => "out-of-memory",
            Self::Trapped(_) => "trapped",
            Self::Instantiation(_) => "instantiation",
            Self::WatchStopped(_) => "watch-stopped",
            Self::InvalidOptions(_) => "invalid-options",
        }
    }

    /// What a failed instantiation was: the deadline (a start function
    /// still running when it passed), the memory limit (a start function
    /// or data segments asking for too much), or anything else.
    pub fn of_instantiation(
        error: &wasmtime::Error,
        ctx: &TheaterCtx,
        limiter: &ActorLimiter,
    ) -> Self {
        Self::classify(error, ctx, limiter, Self::Instantiation)
    }

    /// What a failed call into the actor was: the deadline (an epoch
    /// interrupt, or a host call that gave up at it), the memory limit,
    /// or another trap.
    pub fn of_call(error: &wasmtime::Error, ctx: &TheaterCtx, limiter: &ActorLimiter) -> Self {
        Self::classify(error, ctx, limiter, Self::Trapped)
    }

    /// The deadline, then the memory limit, then `otherwise`.
    fn classify(
        error: &wasmtime::Error,
        ctx: &TheaterCtx,
        limiter: &ActorLimiter,
        otherwise: fn(String) -> Self,
    ) -> Self {
        if ctx.timed_out() || error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            Self::TimedOut(ctx.limits().timeout)
        } else if limiter.refused() {
            Self::OutOfMemory {
                limit: limiter.max_bytes,
                trap: format!("{error:#}"),
            }
        } else {
            otherwise(format!("{error:#}"))
        }
    }
}
