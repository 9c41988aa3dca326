//! `rapport serve-llm`: the embedded model behind an OpenAI-compatible API.

use std::net::SocketAddr;

use clap::Args;
use rapport_server::openai::{router, OpenAiState};

use crate::backend::BackendArgs;

#[derive(Args, Debug)]
pub struct ServeLlmArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// Address to listen on. Loopback by default: the API has no authentication of its own.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
}

pub async fn run(args: ServeLlmArgs) -> anyhow::Result<()> {
    let backend = args.backend.build().await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    // Printed on stdout so scripts and tests that bind port 0 can read the real address.
    println!("listening on http://{}/v1 (model '{}')", listener.local_addr()?, backend.model_name);
    let app = router(OpenAiState::new(backend.generator, backend.model_name, backend.sampling));
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
