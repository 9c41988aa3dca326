//! One simulated person as the server sees them: a session cookie, its CSRF token, and the
//! conversation API followed over Server-Sent Events.
//!
//! Every call that writes retries the way the page does: a 429 waits for its Retry-After, a
//! refused connection or a 5xx (a server being restarted under it) waits and tries again, and a
//! posted message always carries an Idempotency-Key so that a retry can never post it twice.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rapport_core::SseDecoder;
use serde_json::{json, Value};

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error it will not get over by retrying.
    #[error("{method} {path} → {status}: {body}")]
    Refused { method: &'static str, path: String, status: u16, body: String },
    /// No answer in time (connection refused, reset or silent until the deadline).
    #[error("{method} {path}: no answer within {secs} s ({last})")]
    Unreachable { method: &'static str, path: String, secs: u64, last: String },
    /// The answer was not what the API documents.
    #[error("{0}")]
    Protocol(String),
}

/// How long a call keeps retrying before it gives up, and how long a reply may take.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    /// Retries of one request stop after this long.
    pub request: Duration,
    /// A reply stream is abandoned after this long.
    pub reply: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Self { request: Duration::from_secs(60), reply: Duration::from_secs(600) }
    }
}

/// A person's session on one server.
#[derive(Clone)]
pub struct Session {
    http: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
    patience: Patience,
    /// Requests that failed (a 5xx or no connection) and were sent again, and reply streams
    /// that broke and were followed again, by this session and its moved copies.
    retried: Arc<AtomicUsize>,
    /// The address this person says they come from, in `X-Forwarded-For` (servers started by
    /// this program trust loopback's word for it), so that each simulated person is its own
    /// client to the server's per-address limits; `None`: the loopback peer is the client.
    address: Option<String>,
}

/// The address simulated person `n` comes from: 198.18.0.0/15, the range set aside for
/// benchmarks (RFC 2544), so no real client is ever named.
pub fn person_address(n: usize) -> String {
    format!("198.{}.{}.{}", 18 + ((n >> 16) & 1), (n >> 8) & 255, n & 255)
}

/// A message the server acknowledged (202, or 200 for a retry it recognised).
#[derive(Debug, Clone)]
pub struct Posted {
    pub message_id: String,
    pub job_id: String,
    /// When the acknowledgement arrived.
    pub acknowledged: Instant,
    /// The position the server reported (1 = next).
    pub position: Option<u64>,
}

/// How a reply stream ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// `done`, with the stored reply's id and text.
    Done { message_id: String, text: String },
    /// `failed`, with the server's explanation.
    Failed(String),
    /// The stream broke or went silent before either (the server died, say).
    Broken(String),
}

/// What one reply stream showed, timed on the client's clock.
#[derive(Debug, Clone)]
pub struct Followed {
    pub ending: Ending,
    /// The first `delta` (or non-empty `replace`) with text.
    pub first_text: Option<Instant>,
    /// When `done`/`failed` arrived, or the stream broke.
    pub ended: Instant,
    /// `started` events seen (more than one: the job was taken again after a crash).
    pub starts: u32,
}

impl Session {
    /// Opens a session: the server sets the cookie and hands out the CSRF token.
    pub async fn open(
        http: &reqwest::Client,
        base: &str,
        patience: Patience,
    ) -> Result<Session, ClientError> {
        Self::open_as(http, base, patience, None).await
    }

    /// Opens a session for a person at `address` (see [`person_address`]).
    pub async fn open_as(
        http: &reqwest::Client,
        base: &str,
        patience: Patience,
        address: Option<String>,
    ) -> Result<Session, ClientError> {
        let mut session = Session {
            http: http.clone(),
            base: base.trim_end_matches('/').to_string(),
            cookie: String::new(),
            csrf: String::new(),
            patience,
            retried: Arc::default(),
            address,
        };
        let deadline = Instant::now() + patience.request;
        let mut last = String::new();
        while Instant::now() < deadline {
            let mut request = http.get(format!("{}/api/session", session.base));
            if let Some(a) = &session.address {
                request = request.header("x-forwarded-for", a);
            }
            match request.send().await {
                Ok(r) if r.status() == 200 => {
                    let cookie = r
                        .headers()
                        .get("set-cookie")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.split(';').next())
                        .ok_or_else(|| {
                            ClientError::Protocol("GET /api/session set no cookie".into())
                        })?
                        .to_string();
                    let body: Value = r
                        .json()
                        .await
                        .map_err(|e| ClientError::Protocol(format!("GET /api/session: {e}")))?;
                    session.cookie = cookie;
                    session.csrf = body["csrf_token"]
                        .as_str()
                        .ok_or_else(|| ClientError::Protocol("no csrf_token".into()))?
                        .to_string();
                    return Ok(session);
                }
                Ok(r) => last = format!("status {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(ClientError::Unreachable {
            method: "GET",
            path: "/api/session".into(),
            secs: patience.request.as_secs(),
            last,
        })
    }

    /// The same person on another address (a restarted server on a new port).
    pub fn moved_to(&self, base: &str) -> Session {
        Session { base: base.trim_end_matches('/').to_string(), ..self.clone() }
    }

    /// How many requests failed and were sent again, and how many broken reply streams were
    /// followed again (the person never saw those failures).
    pub fn retried(&self) -> usize {
        self.retried.load(Ordering::Relaxed)
    }

    /// Counts one more retry made outside [`call`](Self::call) (a stream followed again).
    pub fn note_retry(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .header("x-csrf-token", &self.csrf);
        match &self.address {
            Some(a) => request.header("x-forwarded-for", a),
            None => request,
        }
    }

    /// Sends until the server gives an answer that retrying cannot change.
    async fn call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
        extra: &[(&str, &str)],
    ) -> Result<(u16, Value), ClientError> {
        let deadline = Instant::now() + self.patience.request;
        let mut last = String::new();
        loop {
            let mut request = self.request(method.parse().expect("a method name"), path);
            for (name, value) in extra {
                request = request.header(*name, *value);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            // (how long to wait, whether the request failed rather than was told to wait)
            let (wait, failed) = match request.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let retry_after = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    let text = r.text().await.unwrap_or_default();
                    match status {
                        429 => (Duration::from_secs(retry_after.unwrap_or(1).max(1)), false),
                        // A server starting, stopping or briefly without its database.
                        500 | 502 | 503 | 504 => {
                            last = format!("{status} {text}");
                            (Duration::from_millis(500), true)
                        }
                        _ if status < 400 => {
                            return Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
                        }
                        _ => {
                            return Err(ClientError::Refused {
                                method,
                                path: path.to_string(),
                                status,
                                body: text,
                            })
                        }
                    }
                }
                Err(e) => {
                    last = e.to_string();
                    (Duration::from_millis(300), true)
                }
            };
            if Instant::now() + wait > deadline {
                return Err(ClientError::Unreachable {
                    method,
                    path: path.to_string(),
                    secs: self.patience.request.as_secs(),
                    last,
                });
            }
            if failed {
                self.retried.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// GET a JSON resource.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        Ok(self.call("GET", path, None, &[]).await?.1)
    }

    /// Starts a conversation with `persona`; returns its id.
    pub async fn create(&self, persona: &str) -> Result<String, ClientError> {
        let (_, body) = self
            .call("POST", "/api/conversations", Some(&json!({"persona": persona})), &[])
            .await?;
        body["conversation"]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::Protocol(format!("create: no conversation id in {body}")))
    }

    /// Posts a message under `key`; a retry with the same key returns the first post.
    pub async fn post(
        &self,
        conversation: &str,
        content: &str,
        key: &str,
    ) -> Result<Posted, ClientError> {
        let path = format!("/api/conversations/{conversation}/messages");
        let (_, body) = self
            .call("POST", &path, Some(&json!({"content": content})), &[("idempotency-key", key)])
            .await?;
        let message_id = body["message"]["id"]
            .as_str()
            .ok_or_else(|| ClientError::Protocol(format!("post: no message id in {body}")))?
            .to_string();
        let job_id = body["job"]["id"]
            .as_str()
            .ok_or_else(|| ClientError::Protocol(format!("post: no job id in {body}")))?
            .to_string();
        Ok(Posted {
            message_id,
            job_id,
            acknowledged: Instant::now(),
            position: body["queue"]["position"].as_u64(),
        })
    }

    /// Sends what the person has typed so far (the page does as they type; `paused` once they
    /// stop typing); returns what the server did with it (`waiting`, `unchanged`, `full`,
    /// `off`).
    pub async fn draft(
        &self,
        conversation: &str,
        content: &str,
        paused: bool,
    ) -> Result<String, ClientError> {
        let path = format!("/api/conversations/{conversation}/draft");
        let body = json!({"content": content, "paused": paused});
        let (_, body) = self.call("POST", &path, Some(&body), &[]).await?;
        body["draft"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::Protocol(format!("draft: no outcome in {body}")))
    }

    /// Asks for the last reply again (the page's "try again" after a failure); returns the
    /// status and body, whose `job` is the new job.
    pub async fn regenerate(&self, conversation: &str) -> Result<(u16, Value), ClientError> {
        self.call("POST", &format!("/api/conversations/{conversation}/regenerate"), None, &[]).await
    }

    /// Follows a job's reply stream to its end. A stream that breaks is reported as
    /// [`Ending::Broken`]; the caller decides whether to reconnect.
    pub async fn follow(&self, conversation: &str, job: &str) -> Followed {
        self.follow_observed(conversation, job, |_| {}).await
    }

    /// [`follow`](Self::follow), calling `seen` with each event's name as it arrives (a test
    /// that must act while a reply is at a given point).
    pub async fn follow_observed(
        &self,
        conversation: &str,
        job: &str,
        mut seen: impl FnMut(&str),
    ) -> Followed {
        let deadline = tokio::time::Instant::now() + self.patience.reply;
        let path = format!("/api/conversations/{conversation}/events?job={job}");
        let mut followed = Followed {
            ending: Ending::Broken(String::new()),
            first_text: None,
            ended: Instant::now(),
            starts: 0,
        };
        let response = match tokio::time::timeout_at(
            deadline,
            self.request(reqwest::Method::GET, &path).send(),
        )
        .await
        {
            Ok(Ok(r)) if r.status() == 200 => r,
            Ok(Ok(r)) => {
                followed.ending = Ending::Broken(format!("GET events → {}", r.status()));
                return followed;
            }
            Ok(Err(e)) => {
                followed.ending = Ending::Broken(e.to_string());
                return followed;
            }
            Err(_) => {
                followed.ending = Ending::Broken("no answer to GET events in time".into());
                return followed;
            }
        };
        let mut stream = response.bytes_stream();
        let mut parser = EventParser::default();
        loop {
            let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => {
                    followed.ending = Ending::Broken(format!(
                        "no end within {} s",
                        self.patience.reply.as_secs()
                    ));
                    break;
                }
                Ok(None) => {
                    followed.ending = Ending::Broken("the stream closed before done".into());
                    break;
                }
                Ok(Some(Err(e))) => {
                    followed.ending = Ending::Broken(e.to_string());
                    break;
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            let events = match parser.feed(&chunk) {
                Ok(events) => events,
                Err(e) => {
                    followed.ending = Ending::Broken(e);
                    break;
                }
            };
            let mut finished = false;
            for (name, data) in events {
                seen(&name);
                match name.as_str() {
                    "started" => followed.starts += 1,
                    "delta" | "replace" => {
                        let has_text = data["text"].as_str().is_some_and(|t| !t.trim().is_empty());
                        if has_text && followed.first_text.is_none() {
                            followed.first_text = Some(Instant::now());
                        }
                    }
                    "done" => {
                        let message = &data["message"];
                        followed.ending = Ending::Done {
                            message_id: message["id"].as_str().unwrap_or_default().to_string(),
                            text: message["content"].as_str().unwrap_or_default().to_string(),
                        };
                        finished = true;
                    }
                    "failed" => {
                        followed.ending =
                            Ending::Failed(data["error"].as_str().unwrap_or("failed").to_string());
                        finished = true;
                    }
                    _ => {}
                }
            }
            if finished {
                break;
            }
        }
        followed.ended = Instant::now();
        followed
    }
}

/// Splits a byte stream into SSE events (name, JSON data) with rapport-core's decoder (the one
/// the OpenAI-compatible backend uses). Keep-alive comments and events without data are
/// skipped; a block may arrive split across chunks, even inside a character.
#[derive(Default)]
pub struct EventParser {
    decoder: SseDecoder,
}

impl EventParser {
    /// Feeds a chunk; returns the events it completed, or an error once one line grows past
    /// the decoder's bound (not an event stream).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<(String, Value)>, String> {
        Ok(self
            .decoder
            .push(chunk)?
            .into_iter()
            .filter(|event| !event.data.is_empty())
            .map(|event| {
                let value = serde_json::from_str(&event.data).unwrap_or(Value::String(event.data));
                (event.event.unwrap_or_else(|| "message".to_string()), value)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn events_split_anywhere_parse_the_same() {
        let stream = "event: started\ndata: {\"attempt\":1}\n\n: keep-alive\n\nevent: delta\ndata: {\"text\":\"héllo ✨\"}\n\nevent: done\ndata: {\"message\":{\"id\":\"m1\",\"content\":\"héllo ✨\"}}\n\n";
        let whole = EventParser::default().feed(stream.as_bytes()).unwrap();
        assert_eq!(
            whole.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["started", "delta", "done"]
        );
        for cut in 0..stream.len() {
            let mut parser = EventParser::default();
            let mut events = parser.feed(&stream.as_bytes()[..cut]).unwrap();
            events.extend(parser.feed(&stream.as_bytes()[cut..]).unwrap());
            assert_eq!(events, whole, "cut at byte {cut}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_parser(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut parser = EventParser::default();
            for chunk in chunks {
                let _ = parser.feed(&chunk);
            }
        }
    }
}
