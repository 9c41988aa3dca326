//! The web API's OpenAPI document (`web/openapi.json`, served at `/api/openapi.json`) held to
//! what the server really sends.
//!
//! The document is written by hand, so it can drift from the handlers. Every response the web
//! tests read through their API client, every event of a reply stream and every request body the
//! server accepted is checked here against the document: an undocumented route or status, a
//! field the handler added or dropped, a null where the document promises a value, or a body the
//! document would call invalid fails the test that saw it. Objects in the document are closed
//! (`additionalProperties` is stated on every one, and false unless it says why not), so a new
//! field cannot ship without its line in the document.
//!
//! The checker implements the part of JSON Schema (2020-12, as OpenAPI 3.1 uses it) that the
//! document uses, and refuses any other keyword, so the document cannot lean on a rule that is
//! silently not checked.

use std::sync::OnceLock;

use serde_json::Value;

/// The document, as the server embeds it.
const DOCUMENT: &str = include_str!("../../../web/openapi.json");

/// Keywords that only annotate.
const ANNOTATIONS: &[&str] = &["description", "title", "format", "example"];

/// Keywords the checker enforces.
const CHECKED: &[&str] = &[
    "$ref",
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "propertyNames",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "anyOf",
    "oneOf",
];

/// The parsed document.
pub struct Contract {
    doc: Value,
}

/// The document, parsed once per test binary.
pub fn contract() -> &'static Contract {
    static ONCE: OnceLock<Contract> = OnceLock::new();
    ONCE.get_or_init(|| Contract {
        doc: serde_json::from_str(DOCUMENT).expect("openapi.json is JSON"),
    })
}

impl Contract {
    /// The documented operation `method` on the concrete `path` (query ignored): its template
    /// and its object.
    pub fn operation(&self, method: &str, path: &str) -> Result<(&str, &Value), String> {
        let path = path.split('?').next().unwrap_or_default();
        let segments: Vec<&str> = path.split('/').collect();
        let paths = self.doc["paths"].as_object().ok_or("the document has no paths")?;
        let template = paths
            .keys()
            .find(|t| {
                let ts: Vec<&str> = t.split('/').collect();
                ts.len() == segments.len()
                    && ts
                        .iter()
                        .zip(&segments)
                        .all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()))
            })
            .ok_or_else(|| format!("{path} is not in openapi.json"))?;
        let op = paths[template].get(method.to_ascii_lowercase()).ok_or_else(|| {
            format!("{} {template} is not in openapi.json", method.to_uppercase())
        })?;
        Ok((template, op))
    }

    /// Checks one response: its status is documented for the operation, and its body matches
    /// the documented content (JSON against the schema; text by its media type; none for a
    /// response without content).
    pub fn response(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: Option<&str>,
        body: &str,
    ) -> Result<(), String> {
        let (template, op) = self.operation(method, path)?;
        let what = format!("{} {template} → {status}", method.to_uppercase());
        let response = op["responses"]
            .get(status.to_string())
            .ok_or_else(|| format!("{what}: status not documented; body: {}", cut(body)))?;
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            return if body.is_empty() {
                Ok(())
            } else {
                Err(format!("{what}: documented without a body, but got {}", cut(body)))
            };
        };
        let media = content_type.unwrap_or_default().split(';').next().unwrap_or_default().trim();
        let Some(documented) = content.get(media) else {
            return Err(format!(
                "{what}: content type {media:?} is not documented (documented: {:?})",
                content.keys().collect::<Vec<_>>()
            ));
        };
        let schema = &documented["schema"];
        let value = if media == "application/json" {
            serde_json::from_str(body)
                .map_err(|e| format!("{what}: not JSON ({e}): {}", cut(body)))?
        } else if media == "text/event-stream" {
            return Ok(()); // the events are checked one by one, see `event`
        } else {
            Value::String(body.to_string())
        };
        self.validate(schema, &value, "body").map_err(|e| format!("{what}: {e}\nin: {}", cut(body)))
    }

    /// Checks a request body the server accepted (a 2xx answer) against the documented one.
    pub fn request(&self, method: &str, path: &str, body: &Value) -> Result<(), String> {
        let (template, op) = self.operation(method, path)?;
        let what = format!("{} {template} request", method.to_uppercase());
        let Some(schema) = op.pointer("/requestBody/content/application~1json/schema") else {
            // Routes that take no body ignore one; `{}` is what a client sends for "nothing".
            if body.as_object().is_some_and(|o| o.is_empty()) {
                return Ok(());
            }
            return Err(format!("{what}: a JSON body was accepted but none is documented: {body}"));
        };
        self.validate(schema, body, "request").map_err(|e| format!("{what}: {e}"))
    }

    /// Checks the data of one event of a reply stream against `x-events` of the events route.
    pub fn event(&self, name: &str, data: &Value) -> Result<(), String> {
        let (_, op) = self.operation("get", "/api/conversations/x/events")?;
        let schema = op["x-events"]
            .get(name)
            .ok_or_else(|| format!("event {name:?} is not in x-events of the events route"))?;
        self.validate(schema, data, name).map_err(|e| format!("event {name}: {e}\nin: {data}"))
    }

    fn resolve<'a>(&'a self, reference: &str) -> Result<&'a Value, String> {
        let pointer =
            reference.strip_prefix('#').ok_or_else(|| format!("{reference}: not local"))?;
        self.doc.pointer(pointer).ok_or_else(|| format!("{reference} does not resolve"))
    }

    /// `value` against `schema`; the error names where (`at`, a path into the value).
    fn validate(&self, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        if let Value::Bool(allowed) = schema {
            return if *allowed { Ok(()) } else { Err(format!("{at}: not allowed here")) };
        }
        let schema =
            schema.as_object().ok_or_else(|| format!("{at}: the schema is not an object"))?;
        for keyword in schema.keys() {
            if !CHECKED.contains(&keyword.as_str()) && !ANNOTATIONS.contains(&keyword.as_str()) {
                return Err(format!(
                    "{at}: the schema uses {keyword:?}, which this check does not enforce"
                ));
            }
        }
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            self.validate(self.resolve(reference)?, value, at)?;
        }
        if let Some(types) = schema.get("type") {
            let allowed: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => return Err(format!("{at}: bad type keyword {types}")),
            };
            if !allowed.iter().any(|t| is_type(value, t)) {
                return Err(format!(
                    "{at}: expected {}, got {}",
                    allowed.join(" or "),
                    short(value)
                ));
            }
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array) {
            if !options.contains(value) {
                return Err(format!(
                    "{at}: {} is not one of {}",
                    short(value),
                    Value::from(options.clone())
                ));
            }
        }
        if let Some(expected) = schema.get("const") {
            if expected != value {
                return Err(format!("{at}: expected {expected}, got {}", short(value)));
            }
        }
        if let Some(n) = value.as_f64() {
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                if n < min {
                    return Err(format!("{at}: {n} is below the minimum {min}"));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                if n > max {
                    return Err(format!("{at}: {n} is above the maximum {max}"));
                }
            }
        }
        if let Some(text) = value.as_str() {
            let chars = text.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                if chars < min {
                    return Err(format!("{at}: {chars} characters, at least {min} documented"));
                }
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                if chars > max {
                    return Err(format!("{at}: {chars} characters, at most {max} documented"));
                }
            }
        }
        if let Some(object) = value.as_object() {
            let properties = schema.get("properties").and_then(Value::as_object);
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for key in required.iter().filter_map(Value::as_str) {
                    if !object.contains_key(key) {
                        return Err(format!("{at}: required field {key:?} is missing"));
                    }
                }
            }
            for (key, field) in object {
                let here = format!("{at}.{key}");
                if let Some(names) = schema.get("propertyNames") {
                    self.validate(names, &Value::String(key.clone()), &here)?;
                }
                match properties.and_then(|p| p.get(key)) {
                    Some(property) => self.validate(property, field, &here)?,
                    None => match schema.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            return Err(format!(
                                "{here}: not in the document (an undocumented field)"
                            ))
                        }
                        Some(extra) => self.validate(extra, field, &here)?,
                        None => {}
                    },
                }
            }
        }
        if let Some(items) = value.as_array() {
            let count = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if count < min {
                    return Err(format!("{at}: {count} items, at least {min} documented"));
                }
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if count > max {
                    return Err(format!("{at}: {count} items, at most {max} documented"));
                }
            }
            let prefix = schema
                .get("prefixItems")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for (i, item) in items.iter().enumerate() {
                let here = format!("{at}[{i}]");
                match (prefix.get(i), schema.get("items")) {
                    (Some(s), _) | (None, Some(s)) => self.validate(s, item, &here)?,
                    (None, None) => {}
                }
            }
        }
        if let Some(options) = schema.get("anyOf").and_then(Value::as_array) {
            let errors: Vec<String> =
                options.iter().filter_map(|s| self.validate(s, value, at).err()).collect();
            if errors.len() == options.len() {
                return Err(format!("{at}: matches none of anyOf: {}", errors.join("; ")));
            }
        }
        if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
            let errors: Vec<String> =
                options.iter().filter_map(|s| self.validate(s, value, at).err()).collect();
            match options.len() - errors.len() {
                1 => {}
                0 => return Err(format!("{at}: matches none of oneOf: {}", errors.join("; "))),
                n => return Err(format!("{at}: matches {n} of oneOf, not exactly one")),
            }
        }
        Ok(())
    }

    /// Every schema in the document (components, parameters, bodies, responses, events) and
    /// every schema nested in one, with where it is.
    fn schemas(&self) -> Vec<(String, &Value)> {
        fn schema<'a>(at: String, v: &'a Value, out: &mut Vec<(String, &'a Value)>) {
            let Some(o) = v.as_object() else { return };
            out.push((at.clone(), v));
            for key in ["items", "additionalProperties", "propertyNames"] {
                if let Some(child) = o.get(key) {
                    schema(format!("{at}/{key}"), child, out);
                }
            }
            for key in ["properties"] {
                for (name, child) in o.get(key).and_then(Value::as_object).into_iter().flatten() {
                    schema(format!("{at}/{key}/{name}"), child, out);
                }
            }
            for key in ["anyOf", "oneOf", "prefixItems"] {
                for (i, child) in
                    o.get(key).and_then(Value::as_array).into_iter().flatten().enumerate()
                {
                    schema(format!("{at}/{key}/{i}"), child, out);
                }
            }
        }
        fn document<'a>(at: String, v: &'a Value, out: &mut Vec<(String, &'a Value)>) {
            match v {
                Value::Object(o) => {
                    for (key, child) in o {
                        let here = format!("{at}/{key}");
                        match key.as_str() {
                            "schema" => schema(here, child, out),
                            "schemas" | "x-events" => {
                                for (name, s) in child.as_object().into_iter().flatten() {
                                    schema(format!("{here}/{name}"), s, out);
                                }
                            }
                            _ => document(here, child, out),
                        }
                    }
                }
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        document(format!("{at}/{i}"), item, out);
                    }
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        document(String::new(), &self.doc, &mut out);
        out
    }
}

fn is_type(value: &Value, t: &str) -> bool {
    match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

fn short(value: &Value) -> String {
    cut(&value.to_string())
}

fn cut(text: &str) -> String {
    let mut out: String = text.chars().take(300).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// The routes `crates/server/src/app.rs` serves, read from its source.
fn routed() -> Vec<String> {
    let app = include_str!("../../server/src/app.rs");
    app.split(".route(")
        .skip(1)
        .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next().map(String::from))
        .collect()
}

#[test]
fn the_api_document_covers_every_route_and_only_uses_what_its_check_enforces() {
    let c = contract();
    // The page and its static files are the page, not the API.
    let api: Vec<String> =
        routed().into_iter().filter(|r| r != "/" && !r.starts_with("/static/")).collect();
    assert!(api.len() >= 20, "the routes were read from app.rs: {api:?}");
    let documented: Vec<&String> = c.doc["paths"].as_object().unwrap().keys().collect();
    for route in &api {
        assert!(documented.contains(&route), "{route} is served but not in openapi.json");
    }
    for path in &documented {
        assert!(api.contains(path), "{path} is in openapi.json but not served");
    }
    for (at, schema) in c.schemas() {
        let o = schema.as_object().unwrap();
        for keyword in o.keys() {
            assert!(
                CHECKED.contains(&keyword.as_str()) || ANNOTATIONS.contains(&keyword.as_str()),
                "{at} uses {keyword:?}, which the check does not enforce"
            );
        }
        if let Some(reference) = o.get("$ref").and_then(Value::as_str) {
            c.resolve(reference).unwrap_or_else(|e| panic!("{at}: {e}"));
        }
        // A closed object by default: say so, or say that it is open.
        if o.get("type") == Some(&Value::from("object")) && o.contains_key("properties") {
            assert!(o.contains_key("additionalProperties"), "{at}: state additionalProperties");
        }
    }
    // Every operation documents a success, with its body unless it is a 204.
    for (path, ops) in c.doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            let success: Vec<_> = responses.iter().filter(|(s, _)| s.starts_with('2')).collect();
            assert!(!success.is_empty(), "{method} {path}: no success response");
            for (status, r) in success {
                assert!(
                    status == "204" || r.get("content").is_some(),
                    "{method} {path} {status}: no content"
                );
            }
        }
    }
}

#[test]
fn the_check_refuses_what_the_document_does_not_say() {
    let c = contract();
    let good = r#"{"csrf_token": "abc", "max_message_chars": 2000}"#;
    c.response("GET", "/api/session", 200, Some("application/json"), good).unwrap();
    for (status, body, why) in [
        (200, r#"{"csrf_token": "abc"}"#, "required field \"max_message_chars\""),
        (
            200,
            r#"{"csrf_token": "abc", "max_message_chars": 2000, "debug": 1}"#,
            "undocumented field",
        ),
        (200, r#"{"csrf_token": 5, "max_message_chars": 2000}"#, "expected string"),
        (418, good, "status not documented"),
    ] {
        let e =
            c.response("GET", "/api/session", status, Some("application/json"), body).unwrap_err();
        assert!(e.contains(why), "{why}: {e}");
    }
    assert!(c
        .response("GET", "/api/nothing", 200, None, "")
        .unwrap_err()
        .contains("not in openapi.json"));
    let e = c.response("DELETE", "/api/conversations/abc", 204, None, "{}").unwrap_err();
    assert!(e.contains("without a body"), "{e}");
    // oneOf: exactly one shape of the new-conversation body.
    c.request("POST", "/api/conversations", &serde_json::json!({"persona": "wedding-host"}))
        .unwrap();
    c.request("POST", "/api/conversations", &serde_json::json!({"scenario": "s", "level": "easy"}))
        .unwrap();
    assert!(c
        .request(
            "POST",
            "/api/conversations",
            &serde_json::json!({"persona": "p", "level": "easy"})
        )
        .is_err());
    // A tagged union, a tuple and a nullable reference.
    c.event("prepared", &serde_json::json!({
        "turn": 1, "stage": {"from": "ice_breaker", "to": "casual", "why": "w"},
        "closeness": {"before": 0, "after": 3, "decision": "go_closer", "reasons": []},
        "listening": {"listened": null, "repeats": null, "question": null, "answered": null, "repeats_in_a_row": 0, "could_listen": false},
        "emotion": {"ekman": "joy", "labels": [["joy", 0.9]], "valence": 0.5, "arousal": 0.2, "mood": 0.1, "distress": false},
        "secret": {"status": "locked", "missing": ["stage close"]}, "guards": []
    })).unwrap();
    let e = c.event("prepared", &serde_json::json!({"turn": 1})).unwrap_err();
    assert!(e.contains("required field"), "{e}");
    assert!(c.event("started", &serde_json::json!({"attempt": 1})).is_ok());
    assert!(c.event("teleported", &serde_json::json!({})).is_err());
    let e = c.validate(&serde_json::json!({"prefixItems": [{"type": "string"}, {"type": "number"}], "items": false}), &serde_json::json!(["joy", 0.5, 1]), "t").unwrap_err();
    assert!(e.contains("not allowed"), "{e}");
    let e = c
        .validate(&serde_json::json!({"pattern": "^a"}), &serde_json::json!("b"), "t")
        .unwrap_err();
    assert!(e.contains("does not enforce"), "{e}");
}
