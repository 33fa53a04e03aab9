//! `theater-store`: run actors against a store root, and look after stores.
//!
//! Exit status: 0 on success, 1 when an operation fails, an actor fails or
//! `verify` finds a problem, 2 on usage errors, 3 when a store, label,
//! ref, actor or root the command names does not exist ([`Missing`]).

// Lines go through `out::outln!`, which stops quietly at a closed pipe.
#![deny(clippy::print_stdout)]

mod chain;
mod demo;
mod feed;
mod missing;
mod out;
mod parse;
mod progress;
mod run;
mod serve;
mod stores;
mod sync;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use theater_store::{Options, ROOT_ENV_VAR, StoreRoot};

/// Run Theater actors against a content-addressed store, and look after stores.
#[derive(Parser, Debug)]
#[command(name = "theater-store", version, about, propagate_version = true)]
struct Cli {
    /// The store root: a directory, or a shared root
    /// `postgres://USER@HOST:PORT/DB?objects=s3://BUCKET/PREFIX`
    /// [default: $THEATER_STORE_ROOT, else the platform data directory]
    #[arg(long, global = true, value_name = "ROOT", env = ROOT_ENV_VAR, hide_env = true)]
    root: Option<String>,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,

    /// How log lines (on stderr) look: `text`, or `json` (one object per
    /// line). Which are written is up to RUST_LOG (unset:
    /// `warn,theater_store_gateway=info`).
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an actor's init (its new state to stdout or --state FILE, its logs to stderr), a WASI command's main (exit code passed through), or a keyvalue watcher on the buckets given with --watch until stopped.
    Run(RunArgs),
    /// Run the bundled example actors for the 15 seed usage patterns, and show what they stored.
    Demo,
    /// Serve the root over HTTP under /v1 (docs/HTTP.md): content by label and ref, streamed and verified, with ETags and ranges; label writes with compare-and-swap; the change feed as Server-Sent Events. Until Ctrl-C.
    Serve(serve::ServeArgs),
    /// List every store in the root with its object count, bytes and label count.
    Stores {
        /// Also the root's own stores: `_chains` (event chains), `_compiled` (the compiled-component cache), `_sync` (what syncs agreed on), `_owners` (which actor created which store), `_cursors` (how far keyvalue watchers got).
        #[arg(long)]
        all: bool,
    },
    /// List every actor with an event chain: its id (for `chain`), events recorded and kept, and when it last recorded a call
    Actors,
    /// Space by label prefix: labels grouped by their first DEPTH `/`-separated parts, with the distinct content they point at (content under several groups counts in each)
    Du {
        /// The store id.
        store: String,
        /// Only labels starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// How many `/`-separated parts of a label name its group.
        #[arg(long, value_name = "N", default_value_t = 1)]
        depth: usize,
    },
    /// A page of a store's change log: each label change after --since, one line each (seq, time, label, old ref, new ref, actor; `-` for none).
    Changes {
        /// The store id.
        store: String,
        /// Only changes after this sequence number (0: from the oldest kept).
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        since: u64,
        /// At most this many changes (at most 10000).
        #[arg(long, value_name = "N", default_value_t = 1000)]
        limit: usize,
    },
    /// A label's past values from the change log, newest first: seq, time, ref (`-` where it was removed), actor.
    History {
        /// The store id.
        store: String,
        /// The label.
        label: String,
        /// At most this many versions.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
    },
    /// Print a store's label changes as they happen, one line each (as `changes` prints them), until stopped.
    Watch {
        /// The store id.
        store: String,
        /// Only labels starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// First replay the changes after this sequence number; without it, only changes from now on.
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
    },
    /// List a store's labels with the refs they point at.
    Labels {
        /// The store id.
        store: String,
        /// Only labels starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many labels.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Only labels after this one (for paging: pass the last label printed).
        #[arg(long, value_name = "LABEL")]
        after: Option<String>,
        /// Instead of labels: the content no label reaches, oldest first, and whether gc with --grace would take it now or the grace period keeps it.
        #[arg(long, conflicts_with_all = ["prefix", "limit", "after"])]
        unlabelled: bool,
        /// With --unlabelled: the grace period gc would use (e.g. 0s, 10m, 1h).
        #[arg(long, default_value = "1h", value_parser = parse::duration, requires = "unlabelled")]
        grace: Duration,
        /// The labels as they were at a point of the store's change log: right after change SEQ (see `changes`), at a TIME (2026-11-01T09:00:00Z) or an AGE ago (30m).
        #[arg(long, value_name = "SEQ|TIME|AGE", value_parser = parse::point, conflicts_with_all = ["unlabelled", "limit", "after"])]
        at: Option<theater_store::Point>,
    },
    /// Put labels back as they were at a point of the store's change log (right after change SEQ, at a TIME, or an AGE ago), in one transaction, as new changes (themselves revertible); prints what moved.
    Revert {
        /// The store id.
        store: String,
        /// The point to go back to: a change number (see `changes` and `history`), a time (2026-11-01T09:00:00Z) or an age (30m).
        #[arg(long, value_name = "SEQ|TIME|AGE", value_parser = parse::point)]
        to: theater_store::Point,
        /// Only labels starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only this one label.
        #[arg(long, conflicts_with = "prefix")]
        label: Option<String>,
        /// Say what would move without moving it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write content to stdout, verified against its hash.
    Cat {
        /// The store id.
        store: String,
        /// The content ref (64 hex digits).
        #[arg(required_unless_present = "label", conflicts_with = "label")]
        reference: Option<String>,
        /// Read the content this label points at instead.
        #[arg(long)]
        label: Option<String>,
        /// With --label: the content the label pointed at at a point of the store's change log (SEQ, TIME or AGE, as for `labels --at`).
        #[arg(long, value_name = "SEQ|TIME|AGE", value_parser = parse::point, conflicts_with = "reference")]
        at: Option<theater_store::Point>,
        /// Only bytes START up to END (exclusive); `START..` runs to the end.
        /// Only the 16 KiB groups the range touches are read and verified.
        #[arg(long, value_name = "START..END", value_parser = parse::range)]
        range: Option<parse::ByteRange>,
    },
    /// Store a file (or stdin), streaming it, and print its ref.
    Put {
        /// The store id.
        store: String,
        /// The file to store; `-` or nothing reads stdin.
        file: Option<PathBuf>,
        /// Also point this label at it.
        #[arg(long)]
        label: Option<String>,
    },
    /// Point a label at content already in the store.
    Label {
        /// The store id.
        store: String,
        /// The label.
        #[arg(required_unless_present = "from")]
        label: Option<String>,
        /// The content ref.
        #[arg(required_unless_present = "from")]
        reference: Option<String>,
        /// Many labels in one transaction (all or none): one `LABEL REF` per line of FILE (`-`: stdin); blank lines and lines starting with # are skipped.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["label", "reference"])]
        from: Option<PathBuf>,
    },
    /// Remove a label (the content stays).
    Unlabel {
        /// The store id.
        store: String,
        /// The label.
        #[arg(required_unless_present = "from")]
        label: Option<String>,
        /// Many labels in one transaction (all or none): one label per line of FILE (`-`: stdin); blank lines and lines starting with # are skipped.
        #[arg(long, value_name = "FILE", conflicts_with = "label")]
        from: Option<PathBuf>,
    },
    /// Re-hash every object, find dangling labels and leftovers; quarantine corrupt objects.
    Verify {
        /// Only this store [default: every store].
        store: Option<String>,
        /// Then store again, from the same store in root FROM (a directory or a shared root string), the content found missing or quarantined, and check again.
        #[arg(long, value_name = "FROM")]
        repair: Option<String>,
    },
    /// List what verify moved aside as corrupt; with --purge, delete what was moved more than --older-than ago
    Quarantine {
        /// Only this store [default: every store].
        store: Option<String>,
        /// Delete quarantined bytes moved aside more than --older-than ago.
        #[arg(long)]
        purge: bool,
        /// With --purge: keep what was quarantined more recently than this (e.g. 0s, 7d).
        #[arg(long, default_value = "7d", value_parser = parse::duration, requires = "purge")]
        older_than: Duration,
    },
    /// Remove content that no label reaches and that is older than the grace period.
    Gc {
        /// Only this store [default: every store].
        store: Option<String>,
        /// Report what would be removed without removing it.
        #[arg(long)]
        dry_run: bool,
        /// Keep unlabelled content younger than this (e.g. 30s, 10m, 1h, 2d).
        #[arg(long, default_value = "1h", value_parser = parse::duration)]
        grace: Duration,
        /// Trim each change log to entries younger than this, and stop
        /// keeping the content only trimmed entries named (what history and
        /// reads at a past point need). `0s` with `--history-min 0` frees
        /// everything no label reaches.
        #[arg(long, value_name = "AGE", default_value = "7d", value_parser = parse::duration)]
        history: Duration,
        /// Keep at least this many of each log's newest entries, however old.
        #[arg(long, value_name = "N", default_value_t = 10_000)]
        history_min: u64,
    },
    /// Write a package of a store's labels and content (see docs/PACKAGE-FORMAT.md).
    Export {
        /// The store id (`_chains`: the event chains).
        #[arg(required_unless_present = "all")]
        store: Option<String>,
        /// Only labels starting with this, and the content they reach (what
        /// they point at, and what refs written inside it name); in
        /// `_chains`, `head/ACTOR` for one actor's chain.
        #[arg(long)]
        prefix: Option<String>,
        /// The whole root: every store and every event chain, for `import --all`.
        #[arg(long, conflicts_with_all = ["store", "prefix"])]
        all: bool,
        /// The store as it was at a point of its change log (SEQ, TIME or
        /// AGE, as for `labels --at`): its labels then and what they reach.
        #[arg(long, value_name = "SEQ|TIME|AGE", value_parser = parse::point, conflicts_with = "all")]
        at: Option<theater_store::Point>,
        /// The package file to write (`-`: standard output). A device, FIFO
        /// or symlink is written into as it is; a regular file is replaced
        /// only once the package is whole.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
    },
    /// Import a package into a store (or, with --all, a whole root's package
    /// into this root), after checking every hash in it.
    Import {
        /// The store id (`_chains`: event chains, verified before any head moves).
        #[arg(required_unless_present = "all")]
        store: Option<String>,
        /// The package file.
        #[arg(required_unless_present = "all")]
        file: Option<PathBuf>,
        /// A whole root's package (from `export --all`) to import into this root.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["store", "file"])]
        all: Option<PathBuf>,
        /// Check the package and report what it would change, changing nothing.
        #[arg(long)]
        dry_run: bool,
        /// Point labels the store has elsewhere at the package's content
        /// anyway (without it they are kept and reported as conflicts: exit 1).
        #[arg(long)]
        overwrite: bool,
    },
    /// List an actor's recorded store calls (its event chain), newest first.
    Chain {
        /// The actor id (`run` prints it; by default `component-` and the
        /// start of the component's hash).
        actor: String,
        /// At most this many events [default: all; with --json, 1000].
        #[arg(long, value_name = "N", conflicts_with = "trim_before")]
        limit: Option<usize>,
        /// Instead of listing, drop the events before this position (`1200`),
        /// time (`2026-11-01T00:00:00Z`) or age (`30d`), keeping whole
        /// segments: a checkpoint that `verify-chain` accepts replaces them,
        /// and `gc _chains` frees their space.
        #[arg(long, value_name = "SEQ|TIME|AGE", value_parser = parse::trim_before)]
        trim_before: Option<theater_store::TrimBefore>,
    },
    /// Check an actor's event chain link by link; name the first broken one (exit 1).
    VerifyChain {
        /// The actor id.
        actor: String,
    },
    /// Bring stores in root TO up to date with root FROM: copy the content TO
    /// lacks, move labels unless TO changed them too (a conflict: exit 1).
    Sync {
        /// The root to copy from (a directory or a root string).
        from: String,
        /// The root to bring up to date (a directory or a root string).
        to: String,
        /// Only these stores [default: every store in FROM].
        stores: Vec<String>,
        /// Only labels starting with this, and the content they point at.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Report what would change without changing anything.
        #[arg(long, conflicts_with = "follow")]
        dry_run: bool,
        /// Compare every label of both sides (and copy unlabelled content too), rather than only what the change logs say changed since the last sync.
        #[arg(long)]
        full: bool,
        /// Keep syncing: after each sync, wait for the next change to the store and sync again, until stopped (one store only).
        #[arg(long)]
        follow: bool,
    },
    /// Remove a store with all its labels and content.
    RmStore {
        /// The store id.
        store: String,
        /// Report what would be removed without removing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// After the index was lost (deleted, or moved aside when damaged):
    /// index every content file again, each labelled `recovered/REF`.
    /// Labels, chains and small content lived only in the index; restore
    /// those from a package.
    Reindex,
}

/// Options of `theater-store run`.
#[derive(Args, Debug)]
struct RunArgs {
    /// The actor component (.wasm, built for wasm32-wasip2).
    actor: PathBuf,
    /// The parameter passed to init.
    #[arg(long, default_value = "")]
    param: String,
    /// Read the previous state from FILE (if it exists) and write the new state back to it.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Let the actor use this store; add `:ro` for read-only. Repeatable.
    #[arg(long = "grant", value_name = "STORE_ID[:ro]", value_parser = parse::grant)]
    grants: Vec<parse::Grant>,
    /// Let the actor use any store in the root, read-write (Theater's share-by-id behaviour).
    #[arg(long)]
    grant_any: bool,
    /// The actor's memory limit (e.g. 64MiB, 1GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse::size)]
    memory_limit: Option<usize>,
    /// Stop the actor after this many seconds, host calls included [default: 30].
    #[arg(long, value_name = "SECS", value_parser = parse::seconds)]
    timeout: Option<Duration>,
    /// Most space a store may take through the actor's writes: content,
    /// per-object overhead and labels [default: 1GiB].
    #[arg(long, value_name = "SIZE", value_parser = parse::size)]
    store_quota: Option<usize>,
    /// Most space the actor may add across all stores and its event chain
    /// in this run [default: 1GiB].
    #[arg(long, value_name = "SIZE", value_parser = parse::size)]
    actor_quota: Option<usize>,
    /// Most stores the actor may create [default: 100].
    #[arg(long, value_name = "N")]
    max_stores: Option<usize>,
    /// Most content readers and writers the actor may hold open at once [default: 64].
    #[arg(long, value_name = "N")]
    max_streams: Option<usize>,
    /// Record the actor's store calls in this actor's event chain
    /// [default: `component-` and the first 16 hex digits of the
    /// component's BLAKE3 hash].
    #[arg(long = "actor", value_name = "ID", conflicts_with = "no_chain")]
    actor_id: Option<String>,
    /// Record no event chain for this run.
    #[arg(long)]
    no_chain: bool,
    /// Compile the component afresh, neither reading nor filling the
    /// root's cache of compiled components.
    #[arg(long)]
    no_cache: bool,
    /// Give the component environment variable NAME (with VALUE, or, for a
    /// bare NAME, the value it has here). Repeatable; nothing else of this
    /// environment is passed.
    #[arg(long = "env", value_name = "NAME[=VALUE]", value_parser = parse::env)]
    env: Vec<(String, Option<String>)>,
    /// For a keyvalue watcher (a component exporting wasi:keyvalue/watcher):
    /// call it for each change to the keys of BUCKET starting with PREFIX,
    /// in order, until stopped (Ctrl-C). The bucket needs a grant (`:ro`
    /// will do). Repeatable. Where it got is kept per actor (--actor), so
    /// the next run carries on from there.
    #[arg(long = "watch", value_name = "BUCKET[:PREFIX]", value_parser = parse::watched)]
    watch: Vec<theater_store_host::WatchedBucket>,
    /// Start every watched bucket after this change, instead of where
    /// this actor stopped last (0: from the oldest change kept).
    #[arg(long, value_name = "SEQ", requires = "watch")]
    watch_since: Option<u64>,
    /// A WASI command's arguments (after `--`); its argv[0] is the file name.
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

/// Resolves on Ctrl-C or SIGTERM; never, when neither can be listened for.
async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = interrupt => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    if interrupt.await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Log lines to stderr, filtered by RUST_LOG, as text or JSON.
fn start_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,theater_store_gateway=info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // Another subscriber already set (never, in this binary) keeps its own.
    let _ = match format {
        "json" => logs.json().try_init(),
        _ => logs.try_init(),
    };
}

/// The root the command works on.
fn resolve_root(root: Option<String>, options: Options) -> anyhow::Result<StoreRoot> {
    if let Some(root) = root {
        return Ok(StoreRoot::at(&root, options)?);
    }
    let path = StoreRoot::default_location().context(
        "no store root: pass --root DIR or set THEATER_STORE_ROOT (the platform data directory is unknown)",
    )?;
    Ok(StoreRoot::with_options(path, options))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    start_logging(&cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    let code = match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(error) => {
            if json {
                // Scripts read the kind, not the words.
                let report = serde_json::json!({
                    "error": message(&error),
                    "kind": missing::kind(&error),
                });
                eprintln!("{report}");
            } else {
                eprintln!("error: {}", message(&error));
            }
            missing::exit_code(&error)
        }
    };
    // Everything the command waited for is done. What may still run is a
    // call that gave up at a deadline (say, one waiting for another
    // process's lock); it was never acknowledged, so do not wait for it.
    runtime.shutdown_background();
    code
}

/// The error and its causes, each said once: the store's errors already
/// name their cause in their own words, and anyhow's `{:#}` would repeat it.
fn message(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
    }
    message
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let json = cli.json;
    if let Command::Sync {
        from,
        to,
        stores,
        prefix,
        dry_run,
        full,
        follow,
    } = cli.command
    {
        let options = theater_store::SyncOptions {
            prefix,
            dry_run,
            full,
            ..Default::default()
        };
        if follow {
            return sync::follow(&from, &to, stores, options, json).await;
        }
        return sync::sync(&from, &to, stores, options, json).await;
    }
    let mut options = Options::default();
    if let Command::Gc {
        history,
        history_min,
        ..
    } = &cli.command
    {
        options.change_retention = *history;
        options.change_retention_min = *history_min;
    }
    let root = resolve_root(cli.root, options)?;
    // Only commands that write may start a root; the others, given a
    // directory that is not there (a typo), say so.
    let creates = matches!(
        cli.command,
        Command::Run(_)
            | Command::Demo
            | Command::Put { .. }
            | Command::Import { .. }
            | Command::Reindex
    );
    if !creates
        && let Some(path) = root.path()
        && !path.exists()
    {
        return Err(missing::Missing(format!(
            "store root {} does not exist (commands that write create it: put, import, run, demo)",
            path.display()
        ))
        .into());
    }
    match cli.command {
        Command::Run(args) => run::run(&root, args, json).await,
        Command::Demo => demo::demo(&root, json).await,
        Command::Serve(args) => serve::serve(&root, args).await,
        Command::Stores { all } => stores::list_stores(&root, all, json).await,
        Command::Actors => chain::actors(&root, json).await,
        Command::Quarantine {
            store,
            purge,
            older_than,
        } => {
            let purge = purge.then_some(older_than);
            stores::quarantine(&root, store.as_deref(), purge, json).await
        }
        Command::Du {
            store,
            prefix,
            depth,
        } => stores::du(&root, &store, &prefix, depth, json).await,
        Command::Changes {
            store,
            since,
            limit,
        } => feed::changes(&root, &store, since, limit, json).await,
        Command::Watch {
            store,
            prefix,
            since,
        } => feed::watch(&root, &store, &prefix, since, json).await,
        Command::History {
            store,
            label,
            limit,
        } => feed::history(&root, &store, &label, limit, json).await,
        Command::Labels {
            store,
            unlabelled: true,
            grace,
            ..
        } => stores::unlabelled(&root, &store, grace, json).await,
        Command::Labels {
            store,
            prefix,
            at: Some(at),
            ..
        } => feed::labels_at(&root, &store, &prefix, at, json).await,
        Command::Labels {
            store,
            prefix,
            limit,
            after,
            ..
        } => stores::labels(&root, &store, &prefix, limit, after.as_deref(), json).await,
        Command::Revert {
            store,
            to,
            prefix,
            label,
            dry_run,
        } => {
            let scope = match &label {
                Some(label) => feed::Reverted::Label(label),
                None => feed::Reverted::Prefix(&prefix),
            };
            feed::revert(&root, &store, scope, to, dry_run, json).await
        }
        Command::Cat {
            store,
            reference,
            label,
            at,
            range,
        } => {
            let label = label.as_deref().map(|label| (label, at));
            stores::cat(&root, &store, reference.as_deref(), label, range).await
        }
        Command::Put { store, file, label } => {
            stores::put(&root, &store, file.as_deref(), label.as_deref(), json).await
        }
        Command::Label {
            store,
            label,
            reference,
            from,
        } => match (from, label, reference) {
            (Some(file), _, _) => stores::label_many(&root, &store, &file, json).await,
            (None, Some(label), Some(reference)) => {
                stores::label(&root, &store, &label, &reference, json).await
            }
            _ => unreachable!("clap requires a label and a ref, or --from"),
        },
        Command::Unlabel { store, label, from } => match (from, label) {
            (Some(file), _) => stores::unlabel_many(&root, &store, &file, json).await,
            (None, Some(label)) => stores::unlabel(&root, &store, &label, json).await,
            (None, None) => unreachable!("clap requires a label or --from"),
        },
        Command::Verify { store, repair } => {
            let repair = repair
                .map(|from| resolve_root(Some(from), Options::default()))
                .transpose()?;
            stores::verify(&root, store.as_deref(), repair.as_ref(), json).await
        }
        Command::Gc {
            store,
            dry_run,
            grace,
            ..
        } => stores::gc(&root, store.as_deref(), grace, dry_run, json).await,
        Command::Export {
            store,
            prefix,
            all,
            at,
            output,
        } => {
            let what = match store.as_deref() {
                Some(id) if !all => stores::Exported::Store {
                    id,
                    prefix: prefix.as_deref(),
                    at,
                },
                _ => stores::Exported::Root,
            };
            stores::export(&root, what, &output, json).await
        }
        Command::Import {
            store,
            file,
            all,
            dry_run,
            overwrite,
        } => {
            let options = theater_store::ImportOptions { dry_run, overwrite };
            match (store, file, all) {
                (_, _, Some(file)) => {
                    stores::import(&root, stores::Imported::Root, &file, options, json).await
                }
                (Some(store), Some(file), None) => {
                    let into = stores::Imported::Store(&store);
                    stores::import(&root, into, &file, options, json).await
                }
                _ => unreachable!("clap requires a store and a file, or --all FILE"),
            }
        }
        Command::Chain {
            actor,
            trim_before: Some(before),
            ..
        } => chain::trim(&root, &actor, before, json).await,
        Command::Chain { actor, limit, .. } => chain::list(&root, &actor, limit, json).await,
        Command::VerifyChain { actor } => chain::verify(&root, &actor, json).await,
        Command::RmStore { store, dry_run } => stores::rm_store(&root, &store, dry_run, json).await,
        Command::Reindex => stores::reindex(&root, json).await,
        Command::Sync { .. } => unreachable!("handled before the root is resolved"),
    }
}

#[cfg(test)]
mod tests {
    use super::message;

    #[test]
    fn an_error_names_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(28);
        let store_error = theater_store::StoreError::Io {
            store: "s".into(),
            action: "writing object",
            path: "/r/stores/s/tmp/x".into(),
            source: io,
        };
        let error = anyhow::Error::new(store_error).context("putting big.bin");
        let said = message(&error);
        assert_eq!(said.matches("os error 28").count(), 1, "{said}");
        assert!(
            said.starts_with("putting big.bin: store s: writing object /r/stores/s/tmp/x failed: ")
        );
    }
}
