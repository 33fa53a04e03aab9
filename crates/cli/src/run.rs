//! `theater-store run`: one actor's init, with its state in a file or on stdout.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;
use theater_store::StoreRoot;
use theater_store_host::{
    Access, ActorComponent, ActorFailure, ActorHost, ChainRecording, CommandOutput, Grants, Limits,
    RunOptions, StartAt, WatchOptions, WatchProgress,
};

use crate::RunArgs;
use crate::stores::{print_json, printable, temp_file_beside};

pub async fn run(root: &StoreRoot, args: RunArgs, json: bool) -> anyhow::Result<ExitCode> {
    let host = ActorHost::new(root.clone())?;
    let loaded = if args.no_cache {
        host.load_file(&args.actor)
    } else {
        host.load_file_cached(&args.actor).await
    };
    let actor = loaded
        .map_err(|error| anyhow::anyhow!("loading actor {}: {error:#}", args.actor.display()))?;
    let previous = match &args.state {
        Some(path) => read_state(path)?,
        None => None,
    };
    let mut grants = Grants::none();
    for grant in &args.grants {
        let access = if grant.read_only {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        };
        grants = grants.store(grant.store.clone(), access);
    }
    if args.grant_any {
        grants = grants.any_store(Access::ReadWrite);
    }
    let defaults = Limits::default();
    let limits = Limits {
        max_memory_bytes: args.memory_limit.unwrap_or(defaults.max_memory_bytes),
        timeout: args.timeout.unwrap_or(defaults.timeout),
        max_store_bytes: args
            .store_quota
            .map_or(defaults.max_store_bytes, |q| q as u64),
        max_actor_bytes: args
            .actor_quota
            .map_or(defaults.max_actor_bytes, |q| q as u64),
        max_stores_created: args.max_stores.unwrap_or(defaults.max_stores_created),
        max_open_streams: args.max_streams.unwrap_or(defaults.max_open_streams),
        ..defaults
    };
    let chain = match (&args.actor_id, args.no_chain) {
        (_, true) => ChainRecording::Off,
        (Some(id), false) => ChainRecording::Actor(id.clone()),
        (None, false) => ChainRecording::FromComponent,
    };
    let chain_id = chain.actor_id(&actor).map(str::to_owned);
    let mut env = Vec::with_capacity(args.env.len());
    for (name, value) in &args.env {
        let value = match value {
            Some(value) => value.clone(),
            None => std::env::var(name).map_err(|_| {
                anyhow::anyhow!("--env {name}: {name} is not set (or not Unicode) here")
            })?,
        };
        env.push((name.clone(), value));
    }
    let options = RunOptions {
        grants,
        limits,
        chain,
        env,
    };
    let absent = absent_grants(root, &args).await?;
    if actor.is_watcher() || !args.watch.is_empty() {
        let exit = run_watcher(&host, &actor, options, &args, chain_id.as_deref(), json).await;
        say_created(root, &absent).await;
        return exit;
    }
    if actor.is_command() {
        let exit = run_command(&host, &actor, options, &args, chain_id.as_deref(), json).await;
        say_created(root, &absent).await;
        return exit;
    }
    if !args.args.is_empty() {
        anyhow::bail!(
            "{} is a Theater actor: arguments after `--` are for WASI commands (pass --param)",
            args.actor.display()
        );
    }
    let run = host.run_init(&actor, options, previous, &args.param).await;

    for line in &run.logs {
        eprintln!("[actor] {}", printable(line));
    }
    if run.dropped_log_lines > 0 {
        eprintln!(
            "[actor] ... {} more log lines dropped",
            run.dropped_log_lines
        );
    }
    for store in &run.created_stores {
        eprintln!("created store {store}");
    }
    say_created(root, &absent).await;
    if let Some(id) = &chain_id {
        eprintln!(
            "store calls recorded in the event chain of actor {id} (`theater-store chain {id}`)"
        );
    }
    let state = match run.outcome {
        Ok(state) => state,
        Err(failure) => {
            eprintln!("error: actor {}: {failure}", args.actor.display());
            if !run.stderr.is_empty() {
                let stderr: Vec<_> = run.stderr.trim_end().lines().map(printable).collect();
                eprintln!("actor stderr:\n{}", stderr.join("\n"));
            }
            if json {
                print_json(&json!({"ok": false, "error": failure.to_string(), "logs": run.logs}))?;
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    match &args.state {
        Some(path) => write_state(path, state.as_deref())?,
        None if !json => {
            if let Some(state) = &state {
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(state)?;
                stdout.flush()?;
            }
        }
        None => {}
    }
    if json {
        print_json(&json!({
            "ok": true,
            "state": state.as_deref().map(String::from_utf8_lossy),
            "logs": run.logs,
            "created_stores": run.created_stores,
            "actor": chain_id,
        }))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The `--grant`ed stores that do not exist yet. The actor's first write
/// to one creates it, and the run then says so, so that a mistyped grant
/// shows rather than quietly making a new store.
async fn absent_grants(root: &StoreRoot, args: &RunArgs) -> anyhow::Result<Vec<String>> {
    let mut absent = Vec::new();
    for grant in &args.grants {
        if !root.store(&grant.store)?.is_created().await? {
            absent.push(grant.store.clone());
        }
    }
    Ok(absent)
}

/// Says which of the `absent` granted stores the run created.
async fn say_created(root: &StoreRoot, absent: &[String]) {
    for id in absent {
        let created = match root.store(id) {
            Ok(store) => store.is_created().await.unwrap_or(false),
            Err(_) => false,
        };
        if created {
            eprintln!("created granted store {id} (it did not exist before this run)");
        }
    }
}

/// Runs a WASI command's `main` with the arguments after `--`; its output
/// goes straight to ours, and its exit code becomes ours.
async fn run_command(
    host: &ActorHost,
    command: &ActorComponent,
    options: RunOptions,
    args: &RunArgs,
    chain_id: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if args.state.is_some() || !args.param.is_empty() {
        anyhow::bail!(
            "{} is a WASI command: pass its arguments after `--` (--param and --state are for actors)",
            args.actor.display()
        );
    }
    let program = args.actor.file_name().map_or_else(
        || "command".into(),
        |name| name.to_string_lossy().into_owned(),
    );
    let argv: Vec<String> = std::iter::once(program)
        .chain(args.args.iter().cloned())
        .collect();
    let run = host
        .run_command(command, options, &argv, CommandOutput::Inherit)
        .await;
    if let Some(id) = chain_id {
        eprintln!(
            "store calls recorded in the event chain of actor {id} (`theater-store chain {id}`)"
        );
    }
    match run.outcome {
        Ok(code) => {
            if json {
                print_json(&json!({"ok": code == 0, "exit_code": code, "actor": chain_id}))?;
            }
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Err(failure) => {
            eprintln!("error: command {}: {failure}", args.actor.display());
            if json {
                print_json(&json!({"ok": false, "error": failure.to_string()}))?;
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Runs a keyvalue watcher on the `--watch` buckets until Ctrl-C or
/// SIGTERM (between two calls), or until it fails.
async fn run_watcher(
    host: &ActorHost,
    watcher: &ActorComponent,
    options: RunOptions,
    args: &RunArgs,
    chain_id: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let name = args.actor.display();
    if !watcher.is_watcher() {
        anyhow::bail!(
            "{name} does not export wasi:keyvalue/watcher, so it cannot --watch (a watcher is \
             built for world watch-service of wasi:keyvalue@0.2.0-draft2)"
        );
    }
    if args.watch.is_empty() {
        anyhow::bail!(
            "{name} is a keyvalue watcher: name the buckets it watches with --watch BUCKET[:PREFIX]"
        );
    }
    if args.state.is_some() || !args.param.is_empty() || !args.args.is_empty() {
        anyhow::bail!("{name} is a keyvalue watcher: it takes no --param, --state or arguments");
    }
    let watch = WatchOptions {
        buckets: args.watch.clone(),
        start: args.watch_since.map_or(StartAt::Resume, StartAt::After),
        output: Some(CommandOutput::Inherit),
    };
    let report = |progress: WatchProgress<'_>| match progress {
        WatchProgress::Started { bucket, after } => {
            let keys = match bucket.prefix.as_str() {
                "" => String::new(),
                prefix => format!(" (keys starting {})", printable(prefix)),
            };
            eprintln!(
                "watching bucket {}{keys} after change {after}",
                bucket.bucket
            );
        }
        WatchProgress::Skipped { bucket, change } => eprintln!(
            "bucket {}: change {} (key {}) skipped: its value is no longer stored, and a later \
             change moved the key",
            bucket.bucket,
            change.seq,
            printable(&change.label)
        ),
        WatchProgress::Delivered { .. } => {}
    };
    let run = host
        .run_watcher(watcher, options, watch, crate::stop_signal(), report)
        .await;
    let started = !matches!(run.outcome, Err(ActorFailure::InvalidOptions(_)));
    if started {
        eprintln!("{} delivered", crate::out::count(run.delivered, "change"));
        if let Some(id) = chain_id {
            eprintln!(
                "deliveries and store calls recorded in the event chain of actor {id} \
                 (`theater-store chain {id}`)"
            );
        }
    }
    if !run.stderr.is_empty() {
        eprint!("{}", run.stderr);
    }
    match run.outcome {
        Ok(()) => {
            if json {
                print_json(&json!({"ok": true, "delivered": run.delivered, "actor": chain_id}))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            eprintln!("error: watcher {name}: {failure}");
            if json {
                print_json(&json!({
                    "ok": false,
                    "error": failure.to_string(),
                    "delivered": run.delivered,
                }))?;
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

fn read_state(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading state file {}", path.display())),
    }
}

/// Replaces the state file atomically; an actor that returns no state
/// leaves no state file.
fn write_state(path: &Path, state: Option<&[u8]>) -> anyhow::Result<()> {
    let Some(state) = state else {
        return match std::fs::remove_file(path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(error).with_context(|| format!("removing state file {}", path.display()))
            }
            _ => Ok(()),
        };
    };
    let write = || -> anyhow::Result<()> {
        let mut partial = temp_file_beside(path)?;
        partial.write_all(state)?;
        partial.as_file().sync_all()?;
        partial.persist(path)?;
        Ok(())
    };
    write().with_context(|| format!("writing state file {}", path.display()))
}
