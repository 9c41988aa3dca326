//! The chat page and its static files, compiled into the binary so that `rapport serve` needs
//! nothing beside it.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;

use crate::error::AppError;
use crate::session::CurrentSession;
use crate::state::AppState;

const INDEX: &str = include_str!("../../../web/templates/index.html");
const APP_JS: &str = include_str!("../../../web/static/app.js");
const APP_CSS: &str = include_str!("../../../web/static/app.css");
/// The OpenAPI document of the JSON API.
pub const OPENAPI: &str = include_str!("../../../web/openapi.json");

fn templates() -> &'static tera::Tera {
    static TERA: OnceLock<tera::Tera> = OnceLock::new();
    TERA.get_or_init(|| {
        let mut tera = tera::Tera::default();
        tera.add_raw_template("index.html", INDEX)
            .expect("web/templates/index.html is a valid template");
        // HTML-escape every value put into the page.
        tera.autoescape_on(vec!["index.html"]);
        tera
    })
}

/// `GET /`.
pub async fn index(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
) -> Response {
    let mut context = tera::Context::new();
    context.insert("csrf_token", &session.csrf);
    context.insert("max_message_chars", &app.config.max_message_chars);
    match templates().render("index.html", &context) {
        Ok(html) => ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response(),
        Err(e) => AppError::internal(format!("rendering the page: {e}")).into_response(),
    }
}

/// `GET /static/app.js`.
pub async fn app_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
        .into_response()
}

/// `GET /static/app.css`.
pub async fn app_css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        APP_CSS,
    )
        .into_response()
}

/// `GET /api/openapi.json`.
pub async fn openapi() -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
