//! The request parameters the bridge applies or refuses itself (README "Request fields"):
//! `n` (only 1), `stop` (the reply is cut at the first stop sequence), `response_format` /
//! the Responses API's `text.format` (`json_object`, `json_schema`: the turn carries an
//! instruction, the reply is checked, and Claude is asked once to fix it). Every other
//! sampling field (`temperature`, `max_tokens`, `seed`, `logprobs`…) is accepted and ignored:
//! Claude Code chooses. Pure functions, no I/O.

use serde_json::{Map, Value};

use super::openai::ApiError;

/// Stop sequences at most (OpenAI's limit).
pub const MAX_STOP: usize = 4;

/// What the reply must look like.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ReplyFormat {
    #[default]
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        schema: Value,
    },
}

impl ReplyFormat {
    pub fn is_json(&self) -> bool {
        !matches!(self, ReplyFormat::Text)
    }

    /// The instruction added to the turn (None for plain text).
    pub fn instruction(&self) -> Option<String> {
        let base = "[Reply format required by the client: answer with a single JSON object and nothing else: no prose before or after it, no Markdown code fence.";
        match self {
            ReplyFormat::Text => None,
            ReplyFormat::JsonObject => Some(format!("{base}]")),
            ReplyFormat::JsonSchema { name, schema } => Some(format!(
                "{base} The object must match this JSON Schema (named {name:?}), with every required key:\n{schema}]"
            )),
        }
    }

    /// The turn asking Claude to fix a reply that did not pass `check`.
    pub fn repair_prompt(&self, problem: &str) -> String {
        let schema = match self {
            ReplyFormat::JsonSchema { .. } => ", matching the JSON Schema given before",
            _ => "",
        };
        format!(
            "[Your previous reply could not be used: {problem}. Reply again with only the JSON object{schema}: no prose, no Markdown code fence.]"
        )
    }

    /// The reply as the client gets it (a code fence around the JSON removed), or what is wrong.
    pub fn check(&self, reply: &str) -> Result<String, String> {
        if !self.is_json() {
            return Ok(reply.to_string());
        }
        let text = strip_fence(reply.trim());
        let value: Value = serde_json::from_str(text)
            .map_err(|e| format!("it is not valid JSON ({e}); it starts {:?}", preview(text)))?;
        let Value::Object(object) = &value else {
            return Err("it is JSON but not an object".into());
        };
        if let ReplyFormat::JsonSchema { schema, .. } = self {
            check_object(object, schema, "")?;
        }
        Ok(text.to_string())
    }
}

fn preview(text: &str) -> String {
    text.chars().take(40).collect()
}

/// "```json\n{…}\n```" → "{…}".
fn strip_fence(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    let body = rest
        .split_once('\n')
        .map_or("", |(_, b)| b)
        .trim_end()
        .strip_suffix("```")
        .unwrap_or(rest);
    body.trim()
}

/// The schema's required keys are present and the top-level property types match (a
/// shallow check: enough to catch prose, a missing field or a wrong kind of value).
fn check_object(object: &Map<String, Value>, schema: &Value, path: &str) -> Result<(), String> {
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for key in required.iter().filter_map(Value::as_str) {
            if !object.contains_key(key) {
                return Err(format!(
                    "the JSON object lacks the required key `{path}{key}`"
                ));
            }
        }
    }
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (key, property) in properties {
            let (Some(value), Some(kind)) = (object.get(key), property.get("type")) else {
                continue;
            };
            let kinds: Vec<&str> = match kind {
                Value::String(k) => vec![k.as_str()],
                Value::Array(ks) => ks.iter().filter_map(Value::as_str).collect(),
                _ => continue,
            };
            if !kinds.iter().any(|k| is_kind(value, k)) {
                return Err(format!(
                    "`{path}{key}` should be of type {} but is {value}",
                    kinds.join(" or ")
                ));
            }
            if let Value::Object(inner) = value {
                check_object(inner, property, &format!("{path}{key}."))?;
            }
        }
    }
    Ok(())
}

fn is_kind(value: &Value, kind: &str) -> bool {
    match kind {
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        _ => true,
    }
}

/// The parameters of one request that the bridge acts on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    pub stop: Vec<String>,
    pub format: ReplyFormat,
}

/// Reads `n`, `stop` and `response_format` of a chat-completions body.
pub fn chat_params(object: &Map<String, Value>) -> Result<Params, ApiError> {
    check_n(object.get("n"))?;
    Ok(Params {
        stop: stop_sequences(object.get("stop"))?,
        format: match object.get("response_format") {
            None | Some(Value::Null) => ReplyFormat::Text,
            Some(v) => reply_format(v, "response_format", false)?,
        },
    })
}

/// `n` must be absent, null or 1: a Claude Code turn has one reply.
pub fn check_n(n: Option<&Value>) -> Result<(), ApiError> {
    match n {
        None | Some(Value::Null) => Ok(()),
        Some(v) if v.as_u64() == Some(1) => Ok(()),
        Some(v) if v.as_u64().is_some_and(|n| n > 1) => Err(ApiError::new(
            400,
            "unsupported_parameter",
            format!(
                "`n` is {v}: the bridge returns one choice per request (a Claude Code turn has one reply); send {v} requests instead, or leave `n` out"
            ),
        )),
        Some(v) => Err(ApiError::bad_request(format!(
            "`n` must be a whole number of at least 1, got {v}"
        ))),
    }
}

fn stop_sequences(stop: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "`stop` must be a string or an array of at most {MAX_STOP} non-empty strings"
        ))
    };
    let list = match stop {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.len() <= MAX_STOP => items
            .iter()
            .map(|i| i.as_str().map(String::from).ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad()),
    };
    if list.iter().any(String::is_empty) {
        return Err(bad());
    }
    Ok(list)
}

/// A `response_format` (chat) or `text.format` (Responses: the schema fields sit beside
/// `type` instead of under `json_schema`).
pub fn reply_format(value: &Value, field: &str, flat: bool) -> Result<ReplyFormat, ApiError> {
    let kind = value.get("type").and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request(format!(
            "`{field}` must be an object with `type` \"text\", \"json_object\" or \"json_schema\""
        ))
    })?;
    match kind {
        "text" => Ok(ReplyFormat::Text),
        "json_object" => Ok(ReplyFormat::JsonObject),
        "json_schema" => {
            let spec = if flat {
                Some(value)
            } else {
                value.get("json_schema")
            };
            let spec = spec.filter(|s| s.is_object()).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`{field}.json_schema` is required with type json_schema: {{\"name\": …, \"schema\": {{…}}}}"
                ))
            })?;
            let name = spec
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("response")
                .to_string();
            let schema = spec.get("schema").cloned().unwrap_or(Value::Null);
            if !schema.is_object() {
                let at = if flat { "schema" } else { "json_schema.schema" };
                return Err(ApiError::bad_request(format!(
                    "`{field}.{at}` must be a JSON Schema object"
                )));
            }
            Ok(ReplyFormat::JsonSchema { name, schema })
        }
        other => Err(ApiError::bad_request(format!(
            "`{field}.type` is {other:?}; use \"text\", \"json_object\" or \"json_schema\""
        ))),
    }
}

/// Cuts streamed text at the first stop sequence. Text that could be the start of a stop
/// sequence is held back until the next piece (or `finish`) shows it is not.
#[derive(Debug, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopFilter {
    pub fn new(stops: Vec<String>) -> Self {
        StopFilter {
            stops,
            held: String::new(),
            stopped: false,
        }
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Takes the next piece of text; returns what may be sent now.
    pub fn push(&mut self, text: &str) -> String {
        if self.stopped {
            return String::new();
        }
        if self.stops.is_empty() {
            return text.to_string();
        }
        self.held.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.stopped = true;
            let out = self.held[..at].to_string();
            self.held.clear();
            return out;
        }
        // Keep the longest tail that is a prefix of some stop sequence.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let out = self.held[..keep].to_string();
        self.held.drain(..keep);
        out
    }

    /// The text held back at the end of the reply.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// The whole reply cut at the first stop sequence.
    pub fn apply(stops: &[String], text: &str) -> String {
        let at = stops
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
            .unwrap_or(text.len());
        text[..at].to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(body: Value) -> Result<Params, ApiError> {
        chat_params(body.as_object().unwrap())
    }

    #[test]
    fn n_above_one_is_refused_with_the_reason() {
        let e = params(json!({"n": 2})).unwrap_err();
        assert_eq!((e.status, e.code), (400, "unsupported_parameter"));
        assert!(e.message.contains("one choice"), "{}", e.message);
        assert!(params(json!({"n": 1})).is_ok());
        assert!(
            params(json!({"n": 0}))
                .unwrap_err()
                .message
                .contains("at least 1")
        );
    }

    #[test]
    fn stop_accepts_a_string_or_up_to_four() {
        assert_eq!(params(json!({"stop": "x"})).unwrap().stop, vec!["x"]);
        assert!(params(json!({"stop": ["a", "b", "c", "d", "e"]})).is_err());
        assert!(params(json!({"stop": [1]})).is_err());
        assert!(params(json!({"stop": ""})).is_err());
    }

    #[test]
    fn stop_filter_cuts_across_pieces() {
        let mut f = StopFilter::new(vec!["END".into()]);
        let mut out = f.push("hello E");
        out += &f.push("N");
        out += &f.push("D and more");
        out += &f.push("ignored");
        out += &f.finish();
        assert_eq!(out, "hello ");
        assert!(f.stopped());
        let mut g = StopFilter::new(vec!["END".into()]);
        let out = g.push("a E") + &g.push("x") + &g.finish();
        assert_eq!(out, "a Ex");
        assert_eq!(StopFilter::apply(&["b".into()], "aabcc"), "aa");
    }

    #[test]
    fn response_formats_parse_and_name_the_wrong_field() {
        assert_eq!(
            params(json!({"response_format": {"type": "json_object"}}))
                .unwrap()
                .format,
            ReplyFormat::JsonObject
        );
        let p = params(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}}}})).unwrap();
        assert!(matches!(p.format, ReplyFormat::JsonSchema { ref name, .. } if name == "p"));
        assert!(
            params(json!({"response_format": {"type": "xml"}}))
                .unwrap_err()
                .message
                .contains("response_format.type")
        );
        assert!(
            params(json!({"response_format": {"type": "json_schema"}}))
                .unwrap_err()
                .message
                .contains("json_schema")
        );
        let flat = reply_format(
            &json!({"type": "json_schema", "name": "n", "schema": {}}),
            "text.format",
            true,
        )
        .unwrap();
        assert!(flat.is_json());
    }

    #[test]
    fn json_replies_are_checked_against_the_schema() {
        let f = ReplyFormat::JsonSchema {
            name: "p".into(),
            schema: json!({"type": "object", "required": ["name", "age"], "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}),
        };
        assert!(
            f.check("Sure! Here it is")
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(f.check(r#"{"name": "Ada"}"#).unwrap_err().contains("`age`"));
        assert!(
            f.check(r#"{"name": "Ada", "age": "x"}"#)
                .unwrap_err()
                .contains("integer")
        );
        assert_eq!(
            f.check("```json\n{\"name\": \"Ada\", \"age\": 36}\n```")
                .unwrap(),
            "{\"name\": \"Ada\", \"age\": 36}"
        );
        assert!(ReplyFormat::JsonObject.check("[1]").is_err());
        assert_eq!(ReplyFormat::Text.check("prose").unwrap(), "prose");
    }
}
