//! A fault-injecting proxy in front of a real OpenAI-compatible server.
//!
//! The real model server cannot hang, reset a stream halfway or send garbage on demand, so this
//! proxy does it on a fixed schedule and passes every other request through to the real server
//! untouched. It is the only stand-in the chaos runs use, and it stands in only for the faults.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use serde::Serialize;

/// What the proxy does with one generation request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Forward it and stream the answer back unchanged.
    Pass,
    /// Accept the request and never answer.
    Hang,
    /// Forward it, pass a few chunks of the answer, then cut the connection.
    Reset,
    /// Answer 200 with an event stream of bytes that are not the API's JSON.
    Garbage,
    /// Answer 503 at once.
    Unavailable,
}

/// A running proxy.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT/v1`.
    pub base: String,
    injected: Arc<Mutex<BTreeMap<Fault, usize>>>,
    server: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// How many requests met each fault so far.
    pub fn injected(&self) -> BTreeMap<Fault, usize> {
        self.injected.lock().expect("not poisoned").clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Clone)]
struct Proxy {
    upstream: String,
    http: reqwest::Client,
    schedule: Arc<Vec<Fault>>,
    next: Arc<AtomicUsize>,
    injected: Arc<Mutex<BTreeMap<Fault, usize>>>,
}

/// Starts a proxy to `upstream` (an OpenAI base URL ending in `/v1`); generation requests meet
/// `schedule`'s faults in turn, cycling.
pub async fn start(upstream: &str, schedule: Vec<Fault>) -> anyhow::Result<FaultProxy> {
    anyhow::ensure!(!schedule.is_empty(), "the fault schedule is empty");
    let injected = Arc::new(Mutex::new(BTreeMap::new()));
    let proxy = Proxy {
        upstream: upstream.trim_end_matches('/').to_string(),
        http: reqwest::Client::new(),
        schedule: Arc::new(schedule),
        next: Arc::new(AtomicUsize::new(0)),
        injected: injected.clone(),
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/{*rest}", get(pass_get))
        .with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/v1", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(FaultProxy { base, injected, server })
}

async fn chat(State(proxy): State<Proxy>, headers: HeaderMap, body: Bytes) -> Response {
    let n = proxy.next.fetch_add(1, Ordering::Relaxed);
    let fault = proxy.schedule[n % proxy.schedule.len()];
    *proxy.injected.lock().expect("not poisoned").entry(fault).or_insert(0) += 1;
    tracing::debug!(request = n, ?fault, "generation request");
    match fault {
        Fault::Hang => {
            // The client's first-byte timeout is what ends this; the future is dropped then.
            futures::future::pending::<()>().await;
            unreachable!("pending never completes")
        }
        Fault::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "injected: the model server is overloaded").into_response(),
        Fault::Garbage => Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from("data: {\"choices\": [{\"delta\": \n\ndata: \u{0}\u{1}\u{fffd} not json at all\n\ndata: {\"id\": 42}\n\n"))
            .expect("a valid response"),
        Fault::Pass | Fault::Reset => {
            let mut request = proxy.http.post(format!("{}/chat/completions", proxy.upstream)).header("content-type", "application/json").body(body);
            if let Some(auth) = headers.get("authorization") {
                request = request.header("authorization", auth);
            }
            let upstream = match request.send().await {
                Ok(r) => r,
                Err(e) => return (StatusCode::BAD_GATEWAY, format!("upstream: {e}")).into_response(),
            };
            let status = upstream.status();
            let content_type = upstream.headers().get("content-type").cloned();
            let stream = upstream.bytes_stream().map(|chunk| chunk.map_err(std::io::Error::other));
            let body = if fault == Fault::Reset {
                // A few chunks, then an error: hyper aborts the connection mid-body, which the
                // client sees as a reset stream rather than a clean end.
                let cut = stream.take(3).chain(futures::stream::once(async { Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected reset")) }));
                Body::from_stream(cut)
            } else {
                Body::from_stream(stream)
            };
            let mut response = Response::builder().status(status.as_u16());
            if let Some(ct) = content_type {
                response = response.header("content-type", ct);
            }
            response.body(body).expect("a valid response")
        }
    }
}

async fn pass_get(State(proxy): State<Proxy>, Path(rest): Path<String>) -> Response {
    match proxy.http.get(format!("{}/{rest}", proxy.upstream)).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let bytes = r.bytes().await.unwrap_or_default();
            (StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), bytes).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("upstream: {e}")).into_response(),
    }
}
