//! `theater-store serve`: the HTTP gateway over this root, until stopped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use theater_store::StoreRoot;
use theater_store_gateway::{Access, Limits, Tokens};

pub async fn serve(
    root: &StoreRoot,
    listen: SocketAddr,
    tokens: Option<&Path>,
    limits: Limits,
) -> anyhow::Result<ExitCode> {
    let access = match tokens {
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
        Access::Tokens(tokens) => format!("to the holders of {} tokens", tokens.len()),
    };
    println!("serving http://{bound}/v1/ ({who})");
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
