//! `theater-store serve`: the HTTP gateway over this root, until stopped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use theater_store::StoreRoot;
use theater_store_gateway::{Access, Limits, Tokens};

use crate::out::outln;
use crate::parse;

/// Serve the root over HTTP under /v1 (docs/HTTP.md): content by label and ref, streamed and verified, with ETags and ranges; label writes with compare-and-swap; the change feed as Server-Sent Events. Until Ctrl-C.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The address to listen on.
    #[arg(long, value_name = "ADDR", default_value = theater_store_gateway::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Bearer tokens and what each grants, one per line: `TOKEN STORE[:ro]...` (`*` for every store). Without it the gateway serves reads only, and only on loopback.
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// The largest request body (e.g. 64MiB) [default: 64MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse::size)]
    max_body: Option<usize>,
    /// The most space a store may take for writes through the gateway to be taken [default: 1GiB].
    #[arg(long, value_name = "SIZE", value_parser = parse::size)]
    store_quota: Option<usize>,
    /// How long a request may take to be answered; a body then streams at the client's pace (e.g. 30s) [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    timeout: Option<Duration>,
    /// How long a connection may take to send a request's headers (e.g. 10s) [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    header_timeout: Option<Duration>,
    /// Requests handled at once; more wait their turn [default: 64].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent: Option<u32>,
    /// Connections open at once; more are closed as soon as they arrive [default: 1024].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
}

/// A duration of more than zero: a zero timeout would refuse everything.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse::duration(text)? {
        Duration::ZERO => Err(format!(
            "{text:?} is no time at all; give a positive duration"
        )),
        duration => Ok(duration),
    }
}

impl ServeArgs {
    /// The gateway's limits: the defaults, with what was given.
    fn limits(&self) -> Limits {
        let defaults = Limits::default();
        Limits {
            max_body_bytes: self.max_body.unwrap_or(defaults.max_body_bytes),
            max_store_bytes: self
                .store_quota
                .map_or(defaults.max_store_bytes, |quota| quota as u64),
            timeout: self.timeout.unwrap_or(defaults.timeout),
            header_timeout: self.header_timeout.unwrap_or(defaults.header_timeout),
            max_concurrent_requests: self
                .max_concurrent
                .map_or(defaults.max_concurrent_requests, |n| n as usize),
            max_connections: self
                .max_connections
                .map_or(defaults.max_connections, |n| n as usize),
            ..defaults
        }
    }
}

pub async fn serve(root: &StoreRoot, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let (listen, limits) = (args.listen, args.limits());
    let access = match args.tokens.as_deref() {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading tokens file {}", path.display()))?;
            let tokens = Tokens::parse(&text)
                .map_err(|why| anyhow::anyhow!("tokens file {}: {why}", path.display()))?;
            if tokens.is_empty() {
                anyhow::bail!(
                    "tokens file {} holds no token: nobody could use the gateway",
                    path.display()
                );
            }
            Access::Tokens(tokens)
        }
        None if listen.ip().is_loopback() => Access::ReadOnlyToAll,
        None => anyhow::bail!(
            "without --tokens the gateway serves reads to anyone, so only on loopback: pass \
             --tokens FILE to listen on {listen}"
        ),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let bound = listener.local_addr()?;
    let who = match &access {
        Access::ReadOnlyToAll => "reads only, to anyone on this machine (no --tokens)".to_owned(),
        Access::Tokens(tokens) => match tokens.len() {
            1 => "to the holder of its one token".to_owned(),
            n => format!("to the holders of {n} tokens"),
        },
    };
    outln!("serving http://{bound}/v1/ ({who})");
    eprintln!(
        "root {}; stop with Ctrl-C",
        root.describe().unwrap_or_default()
    );
    let app = theater_store_gateway::router(root.clone(), access, limits.clone());
    theater_store_gateway::serve(listener, app, &limits, crate::stop_signal())
        .await
        .context("serving")?;
    Ok(ExitCode::SUCCESS)
}
