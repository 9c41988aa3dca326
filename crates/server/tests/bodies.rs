//! The JSON API against arbitrary bodies (proptest): every route that takes a body answers a bad
//! one with a documented 4xx and the JSON error shape, never a 5xx or a dropped connection, and
//! never stores anything for it; a good body posted among the bad ones is stored before it is
//! acknowledged.
//!
//! The router runs in process on a real SQLite database with the shipped personas. No worker is
//! started, so no reply is ever generated; the generator is a stand-in that refuses, only so the
//! OpenAI-compatible route has something to call.

use std::path::Path;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use axum::Router;
use proptest::prelude::*;
use rapport_core::{GenerationError, GenerationRequest, Generator, TextStream};
use rapport_pipeline::prompt::Prompts;
use rapport_pipeline::{PersonaLibrary, PipelineConfig};
use rapport_server::personas::Personas;
use rapport_server::state::{AppConfig, AppState};
use rapport_store::Store;
use serde_json::{json, Value};
use tower::ServiceExt;

/// Refuses every request: these tests never generate.
pub struct NoModel;

#[async_trait::async_trait]
impl Generator for NoModel {
    fn name(&self) -> &str {
        "none"
    }
    async fn generate(&self, _: GenerationRequest) -> Result<TextStream, GenerationError> {
        Err(GenerationError::Unavailable("no model in this test".into()))
    }
}

struct Api {
    router: Router,
    cookie: String,
    csrf: String,
    conversation: String,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

/// The runtime the in-process router runs on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The app on a SQLite file at `db` with the shipped personas and no model.
pub fn shipped_app(rt: &tokio::runtime::Runtime, db: &Path, config: AppConfig) -> AppState {
    let personas_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/personas");
    rt.block_on(async {
        let store = Store::connect(&format!("sqlite://{}", db.display())).await.unwrap();
        let library = PersonaLibrary::load_dir(&personas_dir).unwrap();
        let personas =
            Personas::new(library, None, Arc::new(Prompts::embedded()), PipelineConfig::default());
        AppState::new(store, personas, Arc::new(NoModel), config)
    })
}

impl Api {
    fn new() -> Api {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        // Rate limits would turn later cases into 429s; they are tested in `front_door`.
        let unlimited =
            rapport_server::limits::RateLimit { per_minute: 1_000_000, burst: 1_000_000 };
        let config = AppConfig {
            rate: unlimited,
            client_rate: unlimited,
            conversation_rate: unlimited,
            ..AppConfig::default()
        };
        let router =
            rapport_server::app::router(shipped_app(&rt, &dir.path().join("rapport.db"), config));
        let mut api = Api {
            router,
            cookie: String::new(),
            csrf: String::new(),
            conversation: String::new(),
            rt,
            _dir: dir,
        };
        let (status, headers, body) = api.send("GET", "/api/session", None, &[]);
        assert_eq!(status, 200);
        api.cookie = headers.split(';').next().unwrap().to_string();
        api.csrf = body["csrf_token"].as_str().unwrap().to_string();
        let (status, _, body) = api.send(
            "POST",
            "/api/conversations",
            Some(br#"{"persona":"wedding-host"}"#.to_vec()),
            &[],
        );
        assert_eq!(status, 201, "{body}");
        api.conversation = body["conversation"]["id"].as_str().unwrap().to_string();
        api
    }

    /// (status, the set-cookie header, the JSON body or Null).
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, String, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("cookie", &self.cookie)
            .header("x-csrf-token", &self.csrf);
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(body.map(Body::from).unwrap_or_else(Body::empty)).unwrap();
        self.rt.block_on(async {
            let response = self.router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let cookie = response
                .headers()
                .get("set-cookie")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let bytes = to_bytes(response.into_body(), 16 << 20).await.unwrap();
            (status, cookie, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
        })
    }

    fn user_messages(&self) -> Vec<String> {
        let (_, _, body) =
            self.send("GET", &format!("/api/conversations/{}", self.conversation), None, &[]);
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "user")
            .map(|m| m["content"].as_str().unwrap().to_string())
            .collect()
    }
}

/// Any JSON value, nested a few levels: the shapes a confused or hostile client sends.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("content".to_string()),
                    Just("persona".to_string()),
                    Just("alternative".to_string()),
                    Just("messages".to_string()),
                    Just("model".to_string()),
                    ".{0,12}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn is_error_shape(body: &Value) -> bool {
    body["error"]["message"].as_str().is_some_and(|m| !m.is_empty())
        && body["error"]["type"].is_string()
}

#[test]
fn arbitrary_bodies_get_documented_errors_and_store_nothing() {
    let api = Api::new();
    let routes = [
        ("POST", "/api/conversations".to_string()),
        ("POST", format!("/api/conversations/{}/messages", api.conversation)),
        ("POST", format!("/api/conversations/{}/alternatives", api.conversation)),
        ("POST", "/api/personas/import".to_string()),
        ("POST", "/v1/chat/completions".to_string()),
    ];
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(96);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    });
    let strategy = (
        0..routes.len(),
        prop_oneof![
            any_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            proptest::collection::vec(any::<u8>(), 0..300)
        ],
    );
    let accepted_messages = std::cell::RefCell::new(Vec::new());
    runner
        .run(&strategy, |(route, body)| {
            let (method, path) = &routes[route];
            let (status, _, response) = api.send(method, path, Some(body.clone()), &[]);
            let message_route = path.ends_with("/messages");
            if status.is_success() {
                // Only a well-formed request may succeed, and a message then exists.
                let value: Value = serde_json::from_slice(&body).map_err(|_| {
                    TestCaseError::fail(format!(
                        "{path} accepted bytes that are not JSON: {status}"
                    ))
                })?;
                if message_route {
                    prop_assert_eq!(status, StatusCode::ACCEPTED);
                    accepted_messages
                        .borrow_mut()
                        .push(value["content"].as_str().unwrap().trim().to_string());
                }
            } else {
                prop_assert!(
                    status.is_client_error() || path.starts_with("/v1"),
                    "{} {} answered {} to {:?}",
                    method,
                    path,
                    status,
                    String::from_utf8_lossy(&body)
                );
                prop_assert!(
                    is_error_shape(&response),
                    "{} {} → {} without the JSON error shape: {}",
                    method,
                    path,
                    status,
                    response
                );
                // A reply is never being written here (no workers), so a second good message
                // is a 409, which is an answer about the conversation, not about the body.
                if message_route && status == StatusCode::CONFLICT {
                    prop_assert_eq!(response["error"]["type"].as_str(), Some("conflict"));
                }
            }
            Ok(())
        })
        .unwrap();
    // Stored exactly what was acknowledged, nothing from the rejected bodies.
    assert_eq!(api.user_messages(), accepted_messages.into_inner());
}

#[test]
fn a_good_message_among_bad_ones_is_stored_before_it_is_acknowledged() {
    let api = Api::new();
    let path = format!("/api/conversations/{}/messages", api.conversation);
    // `["hi"]` is what serde's derive would read as `{"content": "hi"}`; the fuzz test above
    // found it accepted before bodies had to be objects.
    for bad in [
        &b"{"[..],
        b"[]",
        b"[\"hi\"]",
        b"[\"hi\", 60]",
        b"{\"content\": 5}",
        b"{\"content\": \"\"}",
        b"{\"content\": \"hi\", \"extra\": 1}",
        b"\xff\xfe",
    ] {
        let (status, _, body) = api.send("POST", &path, Some(bad.to_vec()), &[]);
        assert!(status.is_client_error(), "{status} for {:?}", String::from_utf8_lossy(bad));
        assert!(is_error_shape(&body), "{body}");
    }
    assert!(api.user_messages().is_empty());
    let (status, _, body) = api.send(
        "POST",
        &path,
        Some(br#"{"content":"Hello there!"}"#.to_vec()),
        &[("idempotency-key", "k1")],
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(api.user_messages(), ["Hello there!"], "stored by the time the 202 came back");
    // Too large for the 64 KiB body limit: 413 in the JSON shape.
    let huge = serde_json::to_vec(&json!({"content": "x".repeat(70_000)})).unwrap();
    let (status, _, body) = api.send("POST", &path, Some(huge), &[]);
    assert_eq!(status, 413);
    assert!(is_error_shape(&body));
    assert_eq!(api.user_messages().len(), 1);
}
