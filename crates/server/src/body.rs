//! Request bodies: every route that takes JSON takes one object.
//!
//! serde's derived `Deserialize` also accepts a JSON array of a struct's fields in order, so
//! `["hi"]` would pass as `{"content": "hi"}` — a shape no client of these APIs means, and one
//! the documented errors do not describe (the API fuzz test found a message posted that way).
//! Bodies are therefore read as a JSON value first and must be an object before they are
//! turned into the route's type.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why a body was refused: the status and a message for people.
#[derive(Debug)]
pub struct BodyError {
    /// 400 bad syntax, 413 too large, 415 wrong content type, 422 wrong shape.
    pub status: StatusCode,
    /// What was wrong.
    pub message: String,
}

/// The route's type from a body that must be a JSON object.
pub fn json_object<T: DeserializeOwned>(
    body: Result<Json<Value>, JsonRejection>,
) -> Result<T, BodyError> {
    let Json(value) = body.map_err(|e| BodyError {
        status: e.status(),
        message: if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "the request body is too large".to_string()
        } else {
            e.body_text()
        },
    })?;
    if !value.is_object() {
        return Err(BodyError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: "the request body must be a JSON object".to_string(),
        });
    }
    serde_json::from_value(value).map_err(|e| BodyError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message: format!("Failed to deserialize the JSON body into the target type: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Message {
        content: String,
    }

    #[test]
    fn an_array_of_the_fields_is_refused_though_serde_would_take_it() {
        assert!(
            serde_json::from_value::<Message>(serde_json::json!(["hi"])).is_ok(),
            "serde's derive accepts the array form"
        );
        let e = json_object::<Message>(Ok(Json(serde_json::json!(["hi"])))).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.message.contains("JSON object"));
    }

    #[test]
    fn an_object_is_read_and_a_wrong_one_named() {
        let m: Message = json_object(Ok(Json(serde_json::json!({"content": "hi"})))).unwrap();
        assert_eq!(m.content, "hi");
        let e = json_object::<Message>(Ok(Json(serde_json::json!({"text": "hi"})))).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.message.contains("text"), "{}", e.message);
    }
}
