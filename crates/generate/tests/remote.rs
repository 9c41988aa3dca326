//! The OpenAI-compatible client, against a real server and against injected faults.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use rapport_core::{collect_completion, GenerationError, Generator, SamplingParams, StopReason};
use rapport_generate::{OpenAiCompatGenerator, OpenAiCompatOptions};
use rapport_server::openai::{router, OpenAiState};

use crate::{exclusive, request, rt, smollm2};

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn client(base: String, first_byte: Duration, idle: Duration) -> OpenAiCompatGenerator {
    let mut o = OpenAiCompatOptions::new(base, "smollm2-135m");
    o.first_byte_timeout = first_byte;
    o.idle_timeout = idle;
    OpenAiCompatGenerator::new(o).unwrap()
}

#[test]
fn the_remote_backend_matches_the_embedded_one_through_a_real_server() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let model = smollm2().await;
        let addr = serve(router(OpenAiState::new(
            Arc::new(model.clone()),
            "smollm2-135m",
            SamplingParams::default(),
        )))
        .await;
        let remote =
            client(format!("http://{addr}/v1"), Duration::from_secs(60), Duration::from_secs(30));

        for max in [12, 30] {
            let req = request("What is the capital of France?", SamplingParams::greedy(max));
            let local = collect_completion(model.generate(req.clone()).await.unwrap(), |_| {})
                .await
                .unwrap();
            let mut pieces = 0;
            let over_http =
                collect_completion(remote.generate(req).await.unwrap(), |_| pieces += 1)
                    .await
                    .unwrap();
            // Greedy decoding of the same model: the same words, counted the same way.
            assert_eq!(over_http.text, local.text);
            let (http, here) = (over_http.summary.usage, local.summary.usage);
            assert_eq!(
                (http.prompt_tokens, http.completion_tokens),
                (here.prompt_tokens, here.completion_tokens)
            );
            // The same prompt again: the engine's prefix cache holds all of it but the last token
            // (re-read for its logits), and the count crosses HTTP in OpenAI's field.
            assert_eq!(http.cached_prompt_tokens, http.prompt_tokens - 1, "{http:?}");
            assert_eq!(over_http.summary.stop_reason, local.summary.stop_reason);
            assert!(pieces >= 2, "the reply was streamed, not sent whole");
        }
        let cut = request("Write a long story about a dragon.", SamplingParams::greedy(5));
        let done = collect_completion(remote.generate(cut).await.unwrap(), |_| {}).await.unwrap();
        assert_eq!(done.summary.stop_reason, StopReason::Length);
        assert_eq!(done.summary.usage.completion_tokens, 5);
    });
}

fn sse(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

const CHUNK: &str =
    "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n";

/// A server that misbehaves in one way per path prefix.
fn faulty() -> Router {
    Router::new()
        .route(
            "/hang/v1/chat/completions",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "never"
            }),
        )
        .route(
            "/stall/v1/chat/completions",
            post(|| async {
                let s =
                    futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from(CHUNK)) })
                        .chain(futures::stream::once(async {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            Ok(Bytes::new())
                        }));
                sse(Body::from_stream(s))
            }),
        )
        .route(
            "/reset/v1/chat/completions",
            post(|| async {
                // The pause lets the headers and the first chunk reach the client: the reset
                // happens mid-stream, after the client has started reading a reply.
                let s =
                    futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from(CHUNK)) })
                        .chain(futures::stream::once(async {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            Err(std::io::Error::new(
                                std::io::ErrorKind::ConnectionReset,
                                "injected reset",
                            ))
                        }));
                sse(Body::from_stream(s))
            }),
        )
        .route("/nodone/v1/chat/completions", post(|| async { sse(Body::from(CHUNK)) }))
        .route(
            "/garbage/v1/chat/completions",
            post(|| async { sse(Body::from("data: <html>oops</html>\n\n")) }),
        )
        .route(
            "/overloaded/v1/chat/completions",
            post(|| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(serde_json::json!({"error": {"message": "queue full"}})),
                )
            }),
        )
        .route(
            "/midstream/v1/chat/completions",
            post(|| async {
                sse(Body::from(format!(
                    "{CHUNK}data: {{\"error\":{{\"message\":\"out of memory\"}}}}\n\n"
                )))
            }),
        )
}

use futures::StreamExt;

async fn outcome(g: &OpenAiCompatGenerator) -> Result<String, GenerationError> {
    let stream = g.generate(request("hi", SamplingParams::greedy(8))).await?;
    collect_completion(stream, |_| {}).await.map(|c| c.text)
}

#[test]
fn every_injected_fault_becomes_a_clear_typed_error() {
    rt().block_on(async {
        let addr = serve(faulty()).await;
        let short = Duration::from_millis(500);
        let at = |path: &str| client(format!("http://{addr}/{path}/v1"), short, short);

        let e = outcome(&at("hang")).await.unwrap_err();
        assert!(matches!(e, GenerationError::Timeout(_)), "hang: {e}");
        assert!(e.is_transient());

        let e = outcome(&at("stall")).await.unwrap_err();
        assert!(matches!(e, GenerationError::Timeout(_)), "stall: {e}");

        let e = outcome(&at("reset")).await.unwrap_err();
        assert_eq!(e.kind(), "protocol", "reset: {e}");

        let e = outcome(&at("nodone")).await.unwrap_err();
        assert!(e.to_string().contains("before [DONE]"), "nodone: {e}");

        let e = outcome(&at("garbage")).await.unwrap_err();
        assert!(e.to_string().contains("not JSON") && e.to_string().contains("<html>"), "garbage: {e}");

        let e = outcome(&at("overloaded")).await.unwrap_err();
        assert!(matches!(e, GenerationError::Unavailable(ref m) if m.contains("503") && m.contains("queue full")), "overloaded: {e}");
        assert!(e.is_transient());

        let e = outcome(&at("midstream")).await.unwrap_err();
        assert!(matches!(e, GenerationError::Backend(ref m) if m == "out of memory"), "midstream: {e}");
        assert!(!e.is_transient());
    });
}

#[test]
fn a_refused_connection_is_unavailable() {
    rt().block_on(async {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let g = client(
            format!("http://127.0.0.1:{port}/v1"),
            Duration::from_secs(2),
            Duration::from_secs(2),
        );
        let e = outcome(&g).await.unwrap_err();
        assert!(matches!(e, GenerationError::Unavailable(_)), "{e}");
    });
}
