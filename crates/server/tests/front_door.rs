//! The front door, tried as a hostile visitor would: the router in process on a real SQLite
//! database, each request coming from a TCP peer address the test chooses (the
//! `ConnectInfo` a real listener adds). No worker runs, so queued jobs stay queued.

use std::net::SocketAddr;

use axum::body::{to_bytes, Body};
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::Router;
use rapport_server::client::ClientPolicy;
use rapport_server::limits::RateLimit;
use rapport_server::state::{AppConfig, AppState};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::bodies::{runtime, shipped_app};

struct Door {
    app: AppState,
    router: Router,
    db: std::path::PathBuf,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

/// One response: status, headers we look at, JSON body.
struct Answer {
    status: StatusCode,
    cookie: Option<String>,
    retry_after: Option<u64>,
    body: Value,
}

/// A browser-like client: its address, and the session it has (if it keeps its cookie).
#[derive(Clone, Default)]
struct Visitor {
    peer: String,
    forwarded_for: Option<String>,
    cookie: Option<String>,
    csrf: Option<String>,
}

impl Visitor {
    fn from(peer: &str) -> Self {
        Visitor { peer: peer.into(), ..Visitor::default() }
    }
}

impl Door {
    fn new(config: AppConfig) -> Door {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("rapport.db");
        let app = shipped_app(&rt, &db, config);
        let router = rapport_server::app::router(app.clone());
        Door { app, router, db, rt, _dir: dir }
    }

    fn send(&self, who: &Visitor, method: &str, path: &str, body: Option<Value>) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(cookie) = &who.cookie {
            request = request.header("cookie", cookie);
        }
        if let Some(csrf) = &who.csrf {
            request = request.header("x-csrf-token", csrf);
        }
        if let Some(f) = &who.forwarded_for {
            request = request.header("x-forwarded-for", f);
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let mut request = request
            .body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty))
            .unwrap();
        let peer: SocketAddr = format!("{}:40000", who.peer).parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
        self.rt.block_on(async {
            let response = self.router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let cookie = response
                .headers()
                .get("set-cookie")
                .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string());
            let retry_after =
                response.headers().get("retry-after").map(|v| v.to_str().unwrap().parse().unwrap());
            let bytes = to_bytes(response.into_body(), 16 << 20).await.unwrap();
            Answer {
                status,
                cookie,
                retry_after,
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            }
        })
    }

    /// Loads the session (as the page does), keeping its cookie and CSRF token.
    fn arrive(&self, who: &mut Visitor) {
        let a = self.send(who, "GET", "/api/session", None);
        assert_eq!(a.status, 200);
        if let Some(c) = a.cookie {
            who.cookie = Some(c);
        }
        who.csrf = Some(a.body["csrf_token"].as_str().unwrap().to_string());
    }

    /// A new conversation and one message in it: the two answers.
    fn say_hello(&self, who: &Visitor) -> (Answer, Option<Answer>) {
        let created =
            self.send(who, "POST", "/api/conversations", Some(json!({"persona": "wedding-host"})));
        if created.status != 201 {
            return (created, None);
        }
        let id = created.body["conversation"]["id"].as_str().unwrap().to_string();
        let posted = self.send(
            who,
            "POST",
            &format!("/api/conversations/{id}/messages"),
            Some(json!({"content": "Hello! How do you know the couple?"})),
        );
        (created, Some(posted))
    }

    fn rows(&self) -> Vec<(&'static str, i64)> {
        self.rt.block_on(self.app.store.row_counts()).unwrap()
    }

    /// The database file and its write-ahead log, bytes.
    fn file_sizes(&self) -> (u64, u64) {
        let size = |p: std::path::PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        (size(self.db.clone()), size(self.db.with_extension("db-wal")))
    }

    /// A series' value from `/metrics` (0 when absent).
    fn metric(&self, line_start: &str) -> f64 {
        let request = Request::builder().uri("/metrics").body(Body::empty()).unwrap();
        let body = self.rt.block_on(async {
            to_bytes(self.router.clone().oneshot(request).await.unwrap().into_body(), 1 << 20)
                .await
                .unwrap()
        });
        String::from_utf8(body.to_vec())
            .unwrap()
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

fn unlimited() -> RateLimit {
    RateLimit { per_minute: 1_000_000, burst: 1_000_000 }
}

#[test]
fn ten_thousand_cookie_less_reads_leave_the_database_unchanged() {
    let door = Door::new(AppConfig::default());
    let before = (door.rows(), door.file_sizes());
    let stranger = Visitor::from("203.0.113.5");
    let forged = Visitor {
        cookie: Some(format!("rapport_session={}", "ab".repeat(32))),
        ..Visitor::from("203.0.113.6")
    };
    let paths = [
        "/",
        "/api/session",
        "/api/personas",
        "/api/conversations",
        "/api/conversations/0123456789abcdef0123456789abcdef",
    ];
    for i in 0..10_000 {
        let who = if i % 10 == 9 { &forged } else { &stranger };
        let path = paths[i % paths.len()];
        let a = door.send(who, "GET", path, None);
        let expected = if path.ends_with("cdef") { StatusCode::NOT_FOUND } else { StatusCode::OK };
        assert_eq!(a.status, expected, "{path}");
        assert!(a.cookie.is_some(), "a stranger is handed a session (minted, not stored)");
    }
    assert_eq!((door.rows(), door.file_sizes()), before, "no row and no byte written");
    assert!(before.0.iter().all(|(_, n)| *n == 0));
}

#[test]
fn a_minted_session_writes_with_its_csrf_token_and_is_stored_then() {
    let door = Door::new(AppConfig::default());
    let mut guest = Visitor::from("198.51.100.7");
    door.arrive(&mut guest);
    assert_eq!(door.rows()[0], ("sessions", 0));
    let (created, posted) = door.say_hello(&guest);
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(posted.unwrap().status, 202);
    assert_eq!(door.rows()[0], ("sessions", 1), "stored by its first write");
    // The session's cookie keeps working and is not replaced.
    let again = door.send(&guest, "GET", "/api/conversations", None);
    assert_eq!(again.body["conversations"].as_array().unwrap().len(), 1);
    assert!(again.cookie.is_none());
    // A write without the CSRF token is still refused, stored session or not.
    let no_csrf = Visitor { csrf: None, ..guest.clone() };
    assert_eq!(
        door.send(&no_csrf, "POST", "/api/conversations", Some(json!({"persona": "wedding-host"})))
            .status,
        403
    );
    let mut stranger = Visitor::from("198.51.100.8");
    door.arrive(&mut stranger);
    let stolen_csrf = Visitor { csrf: guest.csrf.clone(), ..stranger };
    assert_eq!(
        door.send(
            &stolen_csrf,
            "POST",
            "/api/conversations",
            Some(json!({"persona": "wedding-host"}))
        )
        .status,
        403,
        "another session's CSRF token does not fit"
    );
}

#[test]
fn dropping_the_cookie_does_not_reset_the_limits() {
    let door = Door::new(AppConfig::default());
    let mut answers = Vec::new();
    for _ in 0..30 {
        // A fresh session each time: the flooder drops its cookie.
        let mut flooder = Visitor::from("203.0.113.5");
        door.arrive(&mut flooder);
        let (created, posted) = door.say_hello(&flooder);
        answers.push(posted.unwrap_or(created));
    }
    let accepted = answers.iter().filter(|a| a.status == 202).count();
    assert_eq!(
        accepted,
        AppConfig::default().max_queued_per_client,
        "the address's share of the queue, whatever its cookies"
    );
    for refused in answers.iter().filter(|a| a.status != 202) {
        assert_eq!(refused.status, 429);
        assert!(refused.retry_after.is_some_and(|s| s >= 1), "Retry-After on every refusal");
        let kind = refused.body["error"]["type"].as_str().unwrap();
        assert!(kind == "client_queue_full" || kind == "rate_limited", "{kind}");
        assert!(
            refused.body["error"]["message"].as_str().unwrap().contains("try again in about")
                || kind == "rate_limited"
        );
    }
    let sessions_refused = answers
        .iter()
        .filter(|a| a.body["error"]["message"].as_str().is_some_and(|m| m.contains("new sessions")))
        .count();
    assert_eq!(
        sessions_refused,
        30 - 20,
        "sessions beyond the address's burst of 20 are not created"
    );
    assert_eq!(door.rows()[0], ("sessions", 20));
    // Someone else is not held up by it.
    let mut guest = Visitor::from("198.51.100.7");
    door.arrive(&mut guest);
    assert_eq!(door.say_hello(&guest).1.unwrap().status, 202);
    assert!(door.metric("rapport_rejections_total{reason=\"client_queue_full\"}") >= 16.0);
    assert_eq!(door.metric("rapport_rejections_total{reason=\"client_sessions\"}"), 10.0);
}

#[test]
fn messages_are_limited_per_address_across_sessions() {
    let door = Door::new(AppConfig {
        client_rate: RateLimit { per_minute: 2, burst: 3 },
        session_rate: unlimited(),
        max_queued_per_client: 100,
        ..AppConfig::default()
    });
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let mut v = Visitor::from("203.0.113.9");
        door.arrive(&mut v);
        let posted = door.say_hello(&v).1.unwrap();
        if posted.status == 429 {
            assert!(
                posted.body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("messages from this address"),
                "{}",
                posted.body
            );
            assert!(posted.retry_after.unwrap() >= 1);
        }
        statuses.push(posted.status.as_u16());
    }
    assert_eq!(statuses, [202, 202, 202, 429, 429]);
}

#[test]
fn a_full_queue_says_how_long_to_wait_with_503() {
    let door = Door::new(AppConfig { max_queued: 3, ..AppConfig::default() });
    let mut statuses = Vec::new();
    for i in 0..5 {
        let mut v = Visitor::from(&format!("192.0.2.{}", i + 1));
        door.arrive(&mut v);
        let posted = door.say_hello(&v).1.unwrap();
        if posted.status == 503 {
            assert_eq!(posted.body["error"]["type"], "queue_full");
            let message = posted.body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("the server is busy") && message.contains("try again in about"),
                "{message}"
            );
            assert!(posted.retry_after.is_some());
        }
        statuses.push(posted.status.as_u16());
    }
    assert_eq!(statuses, [202, 202, 202, 503, 503]);
    assert_eq!(
        door.rows().iter().find(|(t, _)| *t == "jobs").unwrap().1,
        3,
        "nothing queued past the bound"
    );
}

#[test]
fn the_proxy_header_is_believed_only_from_a_trusted_proxy() {
    let clients = ClientPolicy {
        header: Some("x-forwarded-for".parse().unwrap()),
        trusted: vec!["127.0.0.1".parse().unwrap()],
    };
    let door = Door::new(AppConfig { clients, session_rate: unlimited(), ..AppConfig::default() });
    let mut through_proxy = 0;
    let mut direct = 0;
    for i in 0..8 {
        // Behind the proxy: eight guests at eight addresses.
        let mut guest = Visitor {
            forwarded_for: Some(format!("198.51.100.{}", i + 1)),
            ..Visitor::from("127.0.0.1")
        };
        door.arrive(&mut guest);
        through_proxy += (door.say_hello(&guest).1.unwrap().status == 202) as usize;
        // Not from the proxy: a script that writes the header itself stays one client.
        let mut liar = Visitor {
            forwarded_for: Some(format!("192.0.2.{}", i + 1)),
            ..Visitor::from("203.0.113.5")
        };
        door.arrive(&mut liar);
        direct += (door.say_hello(&liar).1.unwrap().status == 202) as usize;
    }
    assert_eq!(through_proxy, 8);
    assert_eq!(direct, AppConfig::default().max_queued_per_client);
}

#[test]
fn the_persona_api_is_limited_per_address_whatever_the_headers() {
    let door = Door::new(AppConfig {
        rate: RateLimit { per_minute: 1, burst: 2 },
        ..AppConfig::default()
    });
    let body = json!({"model": "wedding-host", "messages": [{"role": "user", "content": "hi"}]});
    let mut statuses = Vec::new();
    for i in 0..4 {
        let v =
            Visitor { forwarded_for: Some(format!("192.0.2.{i}")), ..Visitor::from("203.0.113.5") };
        statuses.push(
            door.send(&v, "POST", "/v1/chat/completions", Some(body.clone())).status.as_u16(),
        );
    }
    // The first two reach the (absent) model and fail there; the rest are refused at the door.
    assert!(statuses[..2].iter().all(|s| *s != 429), "{statuses:?}");
    assert_eq!(&statuses[2..], [429, 429]);
}

#[test]
fn the_sweeper_expires_what_went_idle_and_counts_it() {
    let door = Door::new(AppConfig::default());
    let mut guest = Visitor::from("198.51.100.7");
    door.arrive(&mut guest);
    door.say_hello(&guest);
    let mut silent = Visitor::from("198.51.100.8");
    door.arrive(&mut silent);
    assert_eq!(
        door.send(&silent, "POST", "/api/conversations", Some(json!({"persona": "wedding-host"})))
            .status,
        201
    );
    let two_days_ago = rapport_store::now_ms() - 2 * 86_400_000;
    door.rt
        .block_on(
            door.app.store.execute_admin(&format!("UPDATE sessions SET seen_at = {two_days_ago}")),
        )
        .unwrap();
    door.rt.block_on(rapport_server::sweeper::sweep(&door.app));
    assert_eq!(
        door.rows()[0],
        ("sessions", 1),
        "the silent session went after a day, the one that talked stays"
    );
    assert_eq!(door.metric("rapport_expired_total{what=\"sessions\"}"), 1.0);
    // The expired session's cookie still reads (as a new, empty session) and can start again.
    assert!(door.send(&silent, "GET", "/api/conversations", None).body["conversations"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        door.send(&silent, "POST", "/api/conversations", Some(json!({"persona": "wedding-host"})))
            .status,
        201
    );
}

#[test]
fn conversations_and_imports_are_limited_per_address_even_for_one_session() {
    // One stored session could otherwise start conversations (each a row with the persona's
    // state) or import cards without end.
    let door = Door::new(AppConfig {
        conversation_rate: RateLimit { per_minute: 1, burst: 3 },
        ..AppConfig::default()
    });
    let mut guest = Visitor::from("203.0.113.7");
    door.arrive(&mut guest);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let a = door.send(
            &guest,
            "POST",
            "/api/conversations",
            Some(json!({"persona": "wedding-host"})),
        );
        if a.status == 429 {
            assert!(
                a.body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("new conversations and imports from this address"),
                "{}",
                a.body
            );
            assert!(a.retry_after.is_some_and(|s| s >= 1));
        }
        statuses.push(a.status.as_u16());
    }
    assert_eq!(statuses, [201, 201, 201, 429, 429]);
    // A card import draws on the same allowance, before the card is read.
    let card = json!({"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": "Robin", "description": "A gardener.", "first_mes": "Hi!"}});
    assert_eq!(door.send(&guest, "POST", "/api/personas/import", Some(card)).status, 429);
    assert_eq!(door.rows().iter().find(|(t, _)| *t == "conversations").unwrap().1, 3);
    // A dropped cookie does not reset it.
    let mut again = Visitor::from("203.0.113.7");
    door.arrive(&mut again);
    assert_eq!(
        door.send(&again, "POST", "/api/conversations", Some(json!({"persona": "wedding-host"})))
            .status,
        429
    );
    assert_eq!(door.metric("rapport_rejections_total{reason=\"client_conversations\"}"), 4.0);
}
