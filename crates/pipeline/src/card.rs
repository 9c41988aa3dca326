//! Character Cards (V1, V2, V3; JSON or PNG) in, Character Card V2 out.
//!
//! Cards come from other tools and strangers, so the importer reads them as untyped JSON and
//! checks each field it uses: a wrong type or a missing name is an error that says which field,
//! and nothing in a card can make it panic (the fuzz properties in this module's tests feed it
//! random and mutated cards). What a persona has no place for (the creator, tags, the
//! `extensions` other tools wrote, a lorebook) is carried along so an export gives it back.
//! Rapport's own fields travel in `extensions.rapport`, so a card exported by Rapport imports
//! as the same persona.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::persona::{slug, CardMeta, ExampleExchange, Persona};
use crate::png;
use crate::PipelineError;

/// Which card format a file was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardSpec {
    /// Flat fields, no `spec`.
    V1,
    /// `chara_card_v2`.
    V2,
    /// `chara_card_v3`.
    V3,
}

/// An imported card.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedCard {
    /// The persona it describes.
    pub persona: Persona,
    /// Its format.
    pub spec: CardSpec,
    /// Things that were odd but not fatal (an example line without a speaker).
    pub warnings: Vec<String>,
}

/// Data fields the importer maps; everything else is preserved as extra.
const MAPPED: [&str; 14] = [
    "name",
    "description",
    "personality",
    "scenario",
    "first_mes",
    "mes_example",
    "creator_notes",
    "system_prompt",
    "post_history_instructions",
    "alternate_greetings",
    "tags",
    "creator",
    "character_version",
    "extensions",
];

fn err(m: impl Into<String>) -> PipelineError {
    PipelineError::Card(m.into())
}

/// Imports a card file: PNG (by its signature) or JSON.
pub fn import_bytes(bytes: &[u8]) -> Result<ImportedCard, PipelineError> {
    if png::is_png(bytes) {
        let texts = png::text_chunks(bytes).map_err(err)?;
        // A V3 card also carries a V2 `chara` chunk for older tools; the V3 one is the truth.
        let chunk = texts
            .iter()
            .find(|(k, _)| k == "ccv3")
            .or_else(|| texts.iter().find(|(k, _)| k == "chara"));
        let Some((key, encoded)) = chunk else {
            return Err(err(
                "the PNG has no 'chara' or 'ccv3' text chunk: it is not a character card",
            ));
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| err(format!("the '{key}' chunk is not valid base64: {e}")))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| err(format!("the '{key}' chunk is not UTF-8 JSON")))?;
        return import_json(&text);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| err("neither a PNG nor UTF-8 JSON"))?;
    import_json(text)
}

/// Imports a card from its JSON text.
pub fn import_json(text: &str) -> Result<ImportedCard, PipelineError> {
    let value: Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
        .map_err(|e| err(format!("not valid JSON: {e}")))?;
    let Value::Object(root) = value else { return Err(err("the card must be a JSON object")) };
    let (spec, data) = match root.get("spec").and_then(Value::as_str) {
        Some("chara_card_v2") => (CardSpec::V2, data_of(&root)?),
        Some("chara_card_v3") => (CardSpec::V3, data_of(&root)?),
        Some(other) => {
            return Err(err(format!(
                "unknown card spec '{other}' (expected chara_card_v2 or chara_card_v3)"
            )))
        }
        None if root.contains_key("spec") => return Err(err("'spec' must be a string")),
        None => (CardSpec::V1, root.clone()),
    };
    let mut warnings = Vec::new();
    let name = string(&data, "name")?.trim().to_string();
    if name.is_empty() {
        return Err(err("data.name is missing or empty"));
    }
    let macros = |t: &str| expand_macros(t, &name);
    let description = macros(&string(&data, "description")?);
    let personality = macros(&string(&data, "personality")?);
    let first = macros(&string(&data, "first_mes")?);
    let mut greetings: Vec<String> = std::iter::once(first)
        .chain(strings(&data, "alternate_greetings")?.iter().map(|g| macros(g)))
        .filter(|g| !g.trim().is_empty())
        .collect();
    if greetings.is_empty() {
        warnings.push("the card has no greeting; using \"Hi!\"".into());
        greetings.push("Hi!".into());
    }
    let examples = parse_examples(&macros(&string(&data, "mes_example")?), &name, &mut warnings);

    let mut extensions = match data.get("extensions") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(err("data.extensions must be an object")),
    };
    let rapport = extensions.remove("rapport");
    let mut extra = Map::new();
    extra.insert("extensions".into(), Value::Object(extensions));
    for (k, v) in &data {
        if !MAPPED.contains(&k.as_str()) {
            extra.insert(k.clone(), v.clone());
        }
    }
    let card = CardMeta {
        creator: string(&data, "creator")?,
        creator_notes: string(&data, "creator_notes")?,
        character_version: string(&data, "character_version")?,
        tags: strings(&data, "tags")?,
        system_prompt: string(&data, "system_prompt")?,
        post_history_instructions: string(&data, "post_history_instructions")?,
        scenario: macros(&string(&data, "scenario")?),
        extra_json: Value::Object(extra).to_string(),
    };

    let mut persona = Persona {
        id: slug(&name),
        name,
        bio: description,
        facts: Vec::new(),
        voice: personality
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        greetings,
        examples,
        forbidden_topics: Vec::new(),
        pacing: Default::default(),
        weights: Default::default(),
        secret: None,
        fallbacks: Vec::new(),
        max_sentences: 4,
        card: Some(card),
        prompt: Default::default(),
    };
    if let Some(r) = rapport {
        apply_rapport_extension(&mut persona, r)?;
    }
    persona.validate()?;
    Ok(ImportedCard { persona, spec, warnings })
}

fn data_of(root: &Map<String, Value>) -> Result<Map<String, Value>, PipelineError> {
    match root.get("data") {
        Some(Value::Object(d)) => Ok(d.clone()),
        Some(_) => Err(err("'data' must be an object")),
        None => Err(err("the card has a spec but no 'data'")),
    }
}

/// A string field; absent or null reads as empty, any other type is an error.
fn string(data: &Map<String, Value>, field: &str) -> Result<String, PipelineError> {
    match data.get(field) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(err(format!("data.{field} must be a string, found {}", kind(other)))),
    }
}

fn strings(data: &Map<String, Value>, field: &str) -> Result<Vec<String>, PipelineError> {
    match data.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(String::from).ok_or_else(|| {
                    err(format!("data.{field}[{i}] must be a string, found {}", kind(v)))
                })
            })
            .collect(),
        Some(other) => {
            Err(err(format!("data.{field} must be a list of strings, found {}", kind(other))))
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// `{{char}}` and `<BOT>` become the name; `<USER>` becomes `{{user}}`, which Rapport renders
/// when it builds a prompt (it does not know the user's name when importing).
fn expand_macros(text: &str, name: &str) -> String {
    let mut out = text.replace("\r\n", "\n");
    for m in ["{{char}}", "{{Char}}", "{{CHAR}}", "<BOT>", "<bot>"] {
        out = out.replace(m, name);
    }
    for m in ["{{User}}", "{{USER}}", "<USER>", "<user>"] {
        out = out.replace(m, "{{user}}");
    }
    out
}

/// Splits `mes_example` into exchanges: blocks start with `<START>`; in a block, a line
/// starting `{{user}}:` opens the user's line and `{{char}}:` (or `Name:`) the persona's;
/// other lines continue the current one.
fn parse_examples(text: &str, name: &str, warnings: &mut Vec<String>) -> Vec<ExampleExchange> {
    let mut out = Vec::new();
    let name_label = format!("{name}:");
    for block in split_start(text) {
        let mut user: Option<String> = None;
        let mut reply: Option<String> = None;
        let mut flush = |user: &mut Option<String>, reply: &mut Option<String>| {
            if let (Some(u), Some(r)) = (user.take(), reply.take()) {
                if !u.trim().is_empty() && !r.trim().is_empty() {
                    out.push(ExampleExchange {
                        user: u.trim().to_string(),
                        reply: r.trim().to_string(),
                        stage: None,
                    });
                }
            }
        };
        for line in block.lines() {
            let trimmed = line.trim_start();
            if let Some(rest) = strip_label(trimmed, "{{user}}:") {
                flush(&mut user, &mut reply);
                user = Some(rest.trim().to_string());
            } else if let Some(rest) = strip_label(trimmed, &name_label) {
                if user.is_none() {
                    warnings.push(format!(
                        "an example line of {name} with no user line before it was skipped"
                    ));
                    continue;
                }
                if reply.is_some() {
                    // Two persona lines in a row: one reply in two messages.
                    if let Some(r) = reply.as_mut() {
                        r.push('\n');
                        r.push_str(rest.trim());
                    }
                } else {
                    reply = Some(rest.trim().to_string());
                }
            } else if let Some(current) = reply.as_mut().or(user.as_mut()) {
                if !trimmed.is_empty() {
                    current.push('\n');
                    current.push_str(trimmed);
                }
            }
        }
        flush(&mut user, &mut reply);
    }
    out
}

/// `line` without a leading speaker `label`, compared ignoring ASCII case; byte-safe for any
/// text (a lower-cased copy can change length, which made slicing by it unsafe).
fn strip_label<'a>(line: &'a str, label: &str) -> Option<&'a str> {
    let n = label.len();
    (line.len() >= n && line.is_char_boundary(n) && line[..n].eq_ignore_ascii_case(label))
        .then(|| &line[n..])
}

fn split_start(text: &str) -> Vec<String> {
    let mut blocks = vec![String::new()];
    for line in text.lines() {
        if line.trim().eq_ignore_ascii_case("<start>") {
            blocks.push(String::new());
        } else {
            let b = blocks.last_mut().expect("never empty");
            b.push_str(line);
            b.push('\n');
        }
    }
    blocks
}

/// Rapport's own fields, as exported in `extensions.rapport`.
fn apply_rapport_extension(persona: &mut Persona, value: Value) -> Result<(), PipelineError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Ext {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        bio: Option<String>,
        #[serde(default)]
        facts: Vec<String>,
        #[serde(default)]
        voice: Option<Vec<String>>,
        #[serde(default)]
        examples: Option<Vec<ExampleExchange>>,
        #[serde(default)]
        forbidden_topics: Vec<crate::persona::ForbiddenTopic>,
        #[serde(default)]
        pacing: Option<crate::persona::Pacing>,
        #[serde(default)]
        weights: Option<crate::persona::Weights>,
        #[serde(default)]
        secret: Option<crate::persona::Secret>,
        #[serde(default)]
        fallbacks: Vec<String>,
        #[serde(default)]
        max_sentences: Option<usize>,
        #[serde(default)]
        prompt: Option<crate::layout::PromptTuning>,
    }
    let ext: Ext =
        serde_json::from_value(value).map_err(|e| err(format!("extensions.rapport: {e}")))?;
    if let Some(id) = ext.id {
        persona.id = id;
    }
    // The card's description is the bio with the facts appended (for other tools); the
    // extension has both apart.
    if let Some(bio) = ext.bio {
        persona.bio = bio;
    }
    persona.facts = ext.facts;
    if let Some(v) = ext.voice {
        persona.voice = v;
    }
    if let Some(e) = ext.examples {
        persona.examples = e;
    }
    persona.forbidden_topics = ext.forbidden_topics;
    if let Some(p) = ext.pacing {
        persona.pacing = p;
    }
    if let Some(w) = ext.weights {
        persona.weights = w;
    }
    persona.secret = ext.secret;
    persona.fallbacks = ext.fallbacks;
    if let Some(m) = ext.max_sentences {
        persona.max_sentences = m;
    }
    if let Some(p) = ext.prompt {
        persona.prompt = p;
    }
    Ok(())
}

/// Exports a persona as a Character Card V2 (JSON value). The secret is included (in
/// `extensions.rapport`) only when `with_secret` is set: a card is often shared, and the
/// password of a party game should not travel with it by accident.
pub fn export_v2(persona: &Persona, with_secret: bool) -> Value {
    let meta = persona.card.clone().unwrap_or_default();
    let mut extra: Map<String, Value> = serde_json::from_str(&meta.extra_json).unwrap_or_default();
    let mut extensions = match extra.remove("extensions") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    extensions.insert(
        "rapport".into(),
        json!({
            "id": persona.id,
            "bio": persona.bio,
            "facts": persona.facts,
            "voice": persona.voice,
            "examples": persona.examples,
            "forbidden_topics": persona.forbidden_topics,
            "pacing": persona.pacing,
            "weights": persona.weights,
            "secret": if with_secret { serde_json::to_value(&persona.secret).expect("secret serialises") } else { Value::Null },
            "fallbacks": persona.fallbacks,
            "max_sentences": persona.max_sentences,
            "prompt": (!persona.prompt.is_default()).then_some(&persona.prompt),
        }),
    );
    let mes_example: String = persona
        .examples
        .iter()
        .map(|e| format!("<START>\n{{{{user}}}}: {}\n{{{{char}}}}: {}\n", e.user, e.reply))
        .collect();
    let mut description = persona.bio.clone();
    if !persona.facts.is_empty() {
        description.push_str("\n\n");
        description.push_str(&persona.facts.join("\n"));
    }
    let mut data = Map::new();
    data.insert("name".into(), json!(persona.name));
    data.insert("description".into(), json!(description));
    data.insert("personality".into(), json!(persona.voice.join("\n")));
    data.insert("scenario".into(), json!(meta.scenario));
    data.insert("first_mes".into(), json!(persona.greetings.first().cloned().unwrap_or_default()));
    data.insert("mes_example".into(), json!(mes_example));
    data.insert("creator_notes".into(), json!(meta.creator_notes));
    data.insert("system_prompt".into(), json!(meta.system_prompt));
    data.insert("post_history_instructions".into(), json!(meta.post_history_instructions));
    data.insert(
        "alternate_greetings".into(),
        json!(persona.greetings.iter().skip(1).collect::<Vec<_>>()),
    );
    data.insert("tags".into(), json!(meta.tags));
    data.insert("creator".into(), json!(meta.creator));
    data.insert("character_version".into(), json!(meta.character_version));
    data.insert("extensions".into(), Value::Object(extensions));
    // Unknown data fields (a lorebook, V3 additions) go back where they came from.
    for (k, v) in extra {
        data.entry(k).or_insert(v);
    }
    json!({ "spec": "chara_card_v2", "spec_version": "2.0", "data": Value::Object(data) })
}

/// Exports a persona as a V2 card inside a PNG: `image` if given (its old card chunk is
/// replaced), a blank 1×1 image otherwise.
pub fn export_v2_png(
    persona: &Persona,
    with_secret: bool,
    image: Option<&[u8]>,
) -> Result<Vec<u8>, PipelineError> {
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(export_v2(persona, with_secret).to_string());
    let base = match image {
        Some(bytes) => bytes.to_vec(),
        None => png::blank_png(),
    };
    let with_v2 = png::with_text_chunk(&base, "chara", &encoded).map_err(err)?;
    // A stale V3 chunk would win over the new V2 one on the next import; drop it.
    let texts = png::text_chunks(&with_v2).map_err(err)?;
    if texts.iter().any(|(k, _)| k == "ccv3") {
        return Err(err(
            "the image carries a V3 card ('ccv3' chunk); export onto an image without one",
        ));
    }
    Ok(with_v2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const V2: &str = r#"{
      "spec": "chara_card_v2", "spec_version": "2.0",
      "data": {
        "name": "Seraphina",
        "description": "{{char}} is a forest guardian who watches over {{user}}.",
        "personality": "gentle\nprotective",
        "scenario": "",
        "first_mes": "*{{char}} smiles* You're awake, {{user}}.",
        "mes_example": "<START>\n{{user}}: Who are you?\n{{char}}: I am Seraphina.\nI guard this forest.\n<START>\n<USER>: Thanks.\nSeraphina: Anytime.",
        "creator_notes": "", "system_prompt": "", "post_history_instructions": "",
        "alternate_greetings": ["Oh! Hello there."],
        "character_book": {"entries": [{"keys": ["forest"], "content": "old"}]},
        "tags": ["fantasy"], "creator": "someone", "character_version": "1.2",
        "extensions": {"talkativeness": "0.5", "depth_prompt": {"prompt": "x", "depth": 4}, "nothing": null}
      }
    }"#;

    #[test]
    fn a_v2_card_becomes_a_persona() {
        let c = import_json(V2).unwrap();
        assert_eq!(c.spec, CardSpec::V2);
        let p = &c.persona;
        assert_eq!(p.id, "seraphina");
        assert_eq!(p.bio, "Seraphina is a forest guardian who watches over {{user}}.");
        assert_eq!(
            p.greetings,
            vec![
                "*Seraphina smiles* You're awake, {{user}}.".to_string(),
                "Oh! Hello there.".to_string()
            ]
        );
        assert_eq!(p.examples.len(), 2);
        assert_eq!(p.examples[0].reply, "I am Seraphina.\nI guard this forest.");
        assert_eq!(p.examples[1].user, "Thanks.");
        assert_eq!(p.voice, vec!["gentle".to_string(), "protective".to_string()]);
    }

    #[test]
    fn unknown_extensions_and_fields_survive_an_export() {
        let p = import_json(V2).unwrap().persona;
        let out = export_v2(&p, false);
        let data = &out["data"];
        assert_eq!(data["extensions"]["depth_prompt"]["depth"], 4);
        assert_eq!(data["extensions"]["nothing"], Value::Null);
        assert_eq!(data["character_book"]["entries"][0]["content"], "old");
        assert_eq!(data["creator"], "someone");
        let again = import_json(&out.to_string()).unwrap().persona;
        assert_eq!(again, p);
    }

    #[test]
    fn v3_png_cards_win_over_their_v2_chunk() {
        let v3 = V2
            .replace("chara_card_v2", "chara_card_v3")
            .replace("\"2.0\"", "\"3.0\"")
            .replace("Seraphina", "Sera");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let png = png::with_text_chunk(
            &png::with_text_chunk(&png::blank_png(), "chara", &b64(V2)).unwrap(),
            "ccv3",
            &b64(&v3),
        )
        .unwrap();
        let c = import_bytes(&png).unwrap();
        assert_eq!(c.spec, CardSpec::V3);
        assert_eq!(c.persona.name, "Sera");
    }

    #[test]
    fn bad_cards_say_what_is_wrong() {
        for (card, says) in [
            ("[]", "object"),
            ("{\"spec\":\"chara_card_v9\",\"data\":{}}", "unknown card spec"),
            ("{\"spec\":\"chara_card_v2\"}", "no 'data'"),
            ("{\"spec\":\"chara_card_v2\",\"data\":{\"name\":\"\"}}", "name"),
            ("{\"spec\":\"chara_card_v2\",\"data\":{\"name\":\"A\",\"alternate_greetings\":[1]}}", "alternate_greetings[0]"),
            ("{\"name\": 5}", "data.name must be a string"),
            ("not json", "not valid JSON"),
        ] {
            let e = import_json(card).unwrap_err().to_string();
            assert!(e.contains(says), "{card}: {e}");
        }
        assert!(import_bytes(&png::blank_png()).unwrap_err().to_string().contains("no 'chara'"));
    }

    #[test]
    fn a_png_export_imports_as_the_same_persona_and_keeps_the_secret_only_on_request() {
        let text = "name = \"Ana\"\nbio = \"Ana bakes.\"\ngreetings = [\"Hi!\", \"Hello!\"]\n[secret]\nlabel = \"password\"\nvalue = \"marzipan\"\nunlock_closeness = 70\ntease = \"Earn it.\"\n";
        let p = Persona::from_toml(text, "ana").unwrap();
        let with = import_bytes(&export_v2_png(&p, true, None).unwrap()).unwrap().persona;
        assert_eq!(with.secret, p.secret);
        assert_eq!(with.greetings, p.greetings);
        let without = import_bytes(&export_v2_png(&p, false, None).unwrap()).unwrap().persona;
        assert_eq!(without.secret, None);
    }

    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 ,.!?'é]{1,40}"
            .prop_map(|s| s.trim().to_string())
            .prop_filter("non-empty", |s| !s.is_empty())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = import_bytes(&bytes);
        }

        #[test]
        fn mutated_cards_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
            let mut bytes = V2.as_bytes().to_vec();
            for (i, b) in &flips { let i = i.index(bytes.len()); bytes[i] = *b; }
            let _ = import_bytes(&bytes);
            let _ = import_bytes(&bytes[..cut.index(bytes.len())]);
            let png = export_v2_png(&import_json(V2).unwrap().persona, false, None).unwrap();
            let mut png_bytes = png.clone();
            for (i, b) in &flips { let i = i.index(png_bytes.len()); png_bytes[i] = *b; }
            let _ = import_bytes(&png_bytes);
            let _ = import_bytes(&png[..cut.index(png.len())]);
        }

        #[test]
        fn any_json_value_is_an_error_or_a_valid_persona(v in arb_json()) {
            let card = json!({"spec": "chara_card_v2", "data": v});
            if let Ok(c) = import_json(&card.to_string()) { prop_assert!(c.persona.validate().is_ok()); }
        }

        #[test]
        fn export_then_import_is_the_identity(name in text(), bio in text(), greetings in proptest::collection::vec(text(), 1..4),
                                              examples in proptest::collection::vec((text(), text()), 0..4), facts in proptest::collection::vec(text(), 0..3)) {
            let mut p = Persona::from_toml(&format!("name = {name:?}\nbio = {bio:?}\ngreetings = {greetings:?}"), &slug(&name)).unwrap();
            p.facts = facts;
            p.examples = examples.into_iter().map(|(user, reply)| ExampleExchange { user, reply, stage: None }).collect();
            let back = import_json(&export_v2(&p, true).to_string()).unwrap().persona;
            prop_assert_eq!(back.card.clone().map(|c| c.tags), Some(vec![]));
            let mut back = back;
            back.card = None;
            prop_assert_eq!(back, p);
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            ".{0,20}".prop_map(Value::from)
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("name".to_string()),
                        Just("first_mes".to_string()),
                        Just("mes_example".to_string()),
                        Just("extensions".to_string()),
                        Just("alternate_greetings".to_string()),
                        "[a-z]{1,6}".prop_map(String::from)
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
