//! Sessions by cookie, and CSRF protection for the writes they authorise.
//!
//! No login: the first request gets a signed random token in an HttpOnly, SameSite=Lax cookie
//! (Secure behind TLS). Because the browser sends that cookie with requests other sites trigger,
//! every write must also carry the session's CSRF token in `X-CSRF-Token`, which another site's
//! page cannot read.
//!
//! A stranger's reads write nothing: the session is minted (token, id and CSRF token derived
//! under the deployment's key) and its row is written by its first write, which is also when
//! the client's limit on new sessions is charged. A stored session's `seen_at` is refreshed at
//! most hourly; idle sessions expire ([`crate::sweeper`]).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rapport_store::Session;

use crate::client::ClientAddress;
use crate::door;
use crate::error::AppError;
use crate::limits::Scope;
use crate::state::AppState;

/// The cookie's name.
pub const COOKIE: &str = "rapport_session";
/// The header writes must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The session of the request, put there by [`sessions`].
#[derive(Debug, Clone)]
pub struct CurrentSession(pub Session);

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Middleware: finds or mints the session, checks the CSRF token on writes, stores a new
/// session on its first write.
pub async fn sessions(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    let found = match cookie_value(request.headers(), COOKIE) {
        Some(token) => match app.store.session_by_token(&token).await {
            Ok(found) => found,
            Err(e) => return AppError::from(e).into_response(),
        },
        None => None,
    };
    if is_write(request.method()) {
        let sent = request.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        let valid = matches!((&found, sent), (Some(s), Some(t)) if s.csrf == t);
        if !valid {
            let why = if found.is_none() {
                "no session: load the page or GET /api/session first"
            } else {
                "missing or wrong X-CSRF-Token header"
            };
            return AppError::new(StatusCode::FORBIDDEN, "csrf", format!("{why}; writes must send the session's CSRF token (from GET /api/session or the page's csrf-token meta tag) in X-CSRF-Token")).into_response();
        }
    }
    let (mut session, new_token) = match found {
        Some(s) => (s, None),
        None => {
            let made = app.store.mint_session();
            (made.session, Some(made.token))
        }
    };
    let stored = if is_write(request.method()) && !session.is_stored() {
        // The session's first write: it becomes a row, charged to the client's session limit.
        let client = request
            .extensions()
            .get::<ClientAddress>()
            .cloned()
            .unwrap_or(ClientAddress("unknown".into()));
        if let Err(e) = door::limit(&app, Scope::ClientSessions, client.as_str()).await {
            return e.into_response();
        }
        app.store.save_session(&mut session).await.map(|_| ())
    } else {
        app.store.touch_session(&mut session).await
    };
    if let Err(e) = stored {
        return AppError::from(e).into_response();
    }
    let secure = app.config.secure_cookies
        || request
            .headers()
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    request.extensions_mut().insert(CurrentSession(session));
    let mut response = next.run(request).await;
    if let Some(token) = new_token {
        let cookie = format!(
            "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age=31536000{}",
            if secure { "; Secure" } else { "" }
        );
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; rapport_session=abc; b=2"));
        assert_eq!(cookie_value(&h, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie_value(&h, "zz"), None);
    }
}
