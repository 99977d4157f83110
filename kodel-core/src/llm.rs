//! Provider-neutral LLM types: what an agent asks for (`LlmRequest`), what streams back
//! (`Delta`), and what a finished call adds up to (`LlmDone`). The server's proxy maps
//! them to and from each provider's wire format (OpenAI chat completions, Anthropic
//! Messages); agents and the OpenAI-compatible endpoint only ever see these.

use serde::{Deserialize, Serialize};

/// Bounds on a request, checked by the proxy before anything is forwarded.
pub const MAX_MESSAGES: usize = 2_000;
pub const MAX_TOOLS: usize = 64;
pub const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

/// One message of a conversation. An assistant message may carry tool calls; a tool
/// message answers one of them (`tool_call_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    #[serde(default)]
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into(), tool_calls: Vec::new(), tool_call_id: None }
    }

    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: Role::Tool, content: content.into(), tool_calls: Vec::new(), tool_call_id: Some(call_id.into()) }
    }
}

/// A tool the model asked to run. `arguments` is the JSON text the model produced (it
/// may be invalid JSON: the agent reports that back to the model as a tool error).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A tool the model may call: a name, what it does, and a JSON Schema of its input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LlmRequest {
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    /// `provider/model`; absent: the job template's model, else the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Whether the model may, must or must not call a tool; absent: it may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Text that ends the answer (at most `MAX_STOP`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// OpenAI's `response_format` as the client sent it (OpenAI-compatible providers;
    /// Anthropic has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<serde_json::Value>,
}

/// Most stop sequences per request (OpenAI's limit).
pub const MAX_STOP: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tool call.
    None,
    /// At least one tool call.
    Required,
    /// This tool.
    Tool { name: String },
}

impl LlmRequest {
    /// Checks the bounds; the message says which one was passed.
    pub fn validate(&self) -> Result<(), String> {
        if self.messages.is_empty() {
            return Err("a request needs at least one message".into());
        }
        if self.messages.len() > MAX_MESSAGES {
            return Err(format!("at most {MAX_MESSAGES} messages per request"));
        }
        if self.tools.len() > MAX_TOOLS {
            return Err(format!("at most {MAX_TOOLS} tools per request"));
        }
        if let Some(m) = &self.model
            && (m.is_empty() || m.len() > 200)
        {
            return Err("model must be 1 to 200 characters".into());
        }
        if self.stop.len() > MAX_STOP || self.stop.iter().any(|s| s.is_empty() || s.len() > 500) {
            return Err(format!("at most {MAX_STOP} stop sequences of 1 to 500 bytes"));
        }
        Ok(())
    }
}

/// A piece of a streamed answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Delta {
    Text {
        text: String,
    },
    /// Part of tool call number `index`: the first piece carries its id and name, the
    /// rest add to its arguments.
    ToolCall {
        index: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default)]
        arguments: String,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens served from the provider's prompt cache (part of input_tokens).
    #[serde(default)]
    pub cached_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cached_tokens += other.cached_tokens;
    }

    pub fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    ToolCalls,
    Length,
    ContentFilter,
    Other,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::ToolCalls => "tool_calls",
            Self::Length => "length",
            Self::ContentFilter => "content_filter",
            Self::Other => "other",
        }
    }
}

/// A finished call: the assembled assistant message, what it cost, why it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmDone {
    pub message: Message,
    pub usage: Usage,
    pub finish_reason: FinishReason,
    /// The model that answered, as `provider/model`.
    #[serde(default)]
    pub model: String,
}

/// The LLM providers the proxy speaks to, as the API names them.
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum ProviderName {
    Openai,
    Anthropic,
    Openrouter,
    Ollama,
}

/// An org's own settings for a provider, as the API shows them (the key never).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = LlmProvider))]
pub struct ProviderSettings {
    #[cfg_attr(feature = "openapi", schema(value_type = ProviderName))]
    pub provider: String,
    pub base_url: Option<String>,
    /// Whether a key is stored (keys are stored sealed and never returned).
    pub has_key: bool,
    /// How to speak to it; unset fields take the server's settings, then the defaults.
    #[serde(default)]
    pub wire: WireSettings,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// Which field carries a request's token limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    /// What every OpenAI-compatible server reads (llama.cpp, vLLM, Ollama, OpenRouter).
    MaxTokens,
    /// What OpenAI's own API wants (its reasoning models refuse `max_tokens`).
    MaxCompletionTokens,
}

impl MaxTokensField {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxTokens => "max_tokens",
            Self::MaxCompletionTokens => "max_completion_tokens",
        }
    }
}

/// How to speak to a provider where servers differ; `None` takes the default for the
/// provider and its base URL (`ProviderConfig::wire`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WireSettings {
    /// Stream answers (default), or ask for the whole answer at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// The field of the token limit (OpenAI-compatible providers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_field: Option<MaxTokensField>,
    /// Send `tool_choice: "auto"` with tools (default). Some servers (llama-cpp-python)
    /// leave the tools out of the prompt without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<bool>,
}

impl WireSettings {
    /// `stream=off,max_tokens_field=max_tokens,tool_choice=on` (the `*_WIRE` variables).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut w = Self::default();
        for part in text.split([',', ' ']).map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| format!("{part:?} is not key=value"))?;
            let flag = || match value {
                "on" | "true" | "yes" | "1" => Ok(true),
                "off" | "false" | "no" | "0" => Ok(false),
                _ => Err(format!("{key} must be on or off, not {value:?}")),
            };
            match key {
                "stream" => w.stream = Some(flag()?),
                "tool_choice" => w.tool_choice = Some(flag()?),
                "max_tokens_field" => {
                    w.max_tokens_field = Some(match value {
                        "max_tokens" => MaxTokensField::MaxTokens,
                        "max_completion_tokens" => MaxTokensField::MaxCompletionTokens,
                        _ => return Err(format!("max_tokens_field must be max_tokens or max_completion_tokens, not {value:?}")),
                    })
                }
                _ => return Err(format!("unknown setting {key:?}: use stream, max_tokens_field or tool_choice")),
            }
        }
        Ok(w)
    }

    /// These settings, with `other`'s where these have none.
    pub fn or(self, other: WireSettings) -> WireSettings {
        WireSettings {
            stream: self.stream.or(other.stream),
            max_tokens_field: self.max_tokens_field.or(other.max_tokens_field),
            tool_choice: self.tool_choice.or(other.tool_choice),
        }
    }
}

/// `stream=off,max_tokens_field=max_tokens`: what `parse` reads; empty when nothing is set.
impl std::fmt::Display for WireSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = |b: bool| if b { "on" } else { "off" };
        let mut parts = Vec::new();
        if let Some(s) = self.stream {
            parts.push(format!("stream={}", on(s)));
        }
        if let Some(m) = self.max_tokens_field {
            parts.push(format!("max_tokens_field={}", m.as_str()));
        }
        if let Some(t) = self.tool_choice {
            parts.push(format!("tool_choice={}", on(t)));
        }
        f.write_str(&parts.join(","))
    }
}

/// Builds the assistant message out of deltas, in the order they came.
#[derive(Debug, Default)]
pub struct Assembler {
    text: String,
    calls: Vec<ToolCall>,
}

impl Assembler {
    pub fn push(&mut self, delta: &Delta) {
        match delta {
            Delta::Text { text } => self.text.push_str(text),
            Delta::ToolCall { index, id, name, arguments } => {
                let i = *index as usize;
                // Bounded by the provider's own numbering; a gap makes empty calls that
                // `finish` drops.
                if i >= self.calls.len() && i < MAX_TOOLS * 4 {
                    self.calls.resize_with(i + 1, || ToolCall { id: String::new(), name: String::new(), arguments: String::new() });
                }
                if let Some(call) = self.calls.get_mut(i) {
                    if let Some(id) = id {
                        call.id.clone_from(id);
                    }
                    if let Some(name) = name {
                        call.name.push_str(name);
                    }
                    call.arguments.push_str(arguments);
                }
            }
        }
    }

    pub fn finish(self) -> Message {
        let calls = self
            .calls
            .into_iter()
            .filter(|c| !c.name.is_empty())
            .enumerate()
            .map(|(i, mut c)| {
                if c.id.is_empty() {
                    c.id = format!("call_{i}");
                }
                c
            })
            .collect();
        Message { role: Role::Assistant, content: self.text, tool_calls: calls, tool_call_id: None }
    }
}

/// What a model's text says about tool calls it wrote as text instead of calling the
/// tools (small local models often do): none, calls Kodel can run, or an attempt that
/// cannot be read.
#[derive(Debug, Clone, PartialEq)]
pub enum TextCalls {
    None,
    Found(Vec<ToolCall>),
    /// What the text looked like (cut to 200 characters).
    Unreadable(String),
}

/// The tool calls written in `text`: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
/// (Qwen's and Hermes' format; also in `<tools>` tags), or JSON objects (bare or in a code fence) that name one
/// of `known` with its `arguments` (or `parameters`). Ids are `text_call_N`.
pub fn text_tool_calls(text: &str, known: &[&str]) -> TextCalls {
    // Only an answer that IS the call(s) counts, with a few words around them at most:
    // a summary that quotes a call or mentions a tag is not a call.
    let prose = |outside: &str| outside.trim().chars().count() <= PROSE_AROUND_A_CALL;
    let call_of = |v: &serde_json::Value| -> Option<ToolCall> {
        let v = if v.get("function").is_some_and(|f| f.is_object()) { &v["function"] } else { v };
        let name = v["name"].as_str().filter(|n| known.contains(n))?;
        let args = match v.get("arguments").or_else(|| v.get("parameters"))? {
            serde_json::Value::String(s) => s.clone(),
            o @ serde_json::Value::Object(_) => o.to_string(),
            _ => return None,
        };
        Some(ToolCall { id: String::new(), name: name.to_owned(), arguments: args })
    };
    let number = |calls: Vec<ToolCall>| -> Vec<ToolCall> {
        calls.into_iter().enumerate().map(|(i, c)| ToolCall { id: format!("text_call_{i}"), ..c }).collect()
    };
    let shown = || text.trim().chars().take(200).collect::<String>();
    // Qwen2.5-Coder 1.5B on llama-server also writes `<tools>...</tools>`.
    if let Some((open, close)) = [("<tool_call>", "</tool_call>"), ("<tools>", "</tools>")].into_iter().find(|(open, _)| text.contains(open)) {
        let mut parts = text.split(open);
        let mut outside = parts.next().unwrap_or_default().to_owned();
        let mut bodies = Vec::new();
        for part in parts {
            let (body, after) = part.split_once(close).unwrap_or((part, ""));
            bodies.push(body);
            outside.push_str(after);
        }
        if !prose(&outside) {
            return TextCalls::None;
        }
        let mut calls = Vec::new();
        for body in bodies {
            let body = body.trim().trim_start_matches("```json").trim_start_matches("```").trim_end_matches("```").trim();
            match serde_json::from_str::<serde_json::Value>(body).ok().as_ref().and_then(call_of) {
                Some(call) => calls.push(call),
                None => return TextCalls::Unreadable(shown()),
            }
        }
        return TextCalls::Found(number(calls));
    }
    // JSON objects: each `{` that starts a whole value naming a known tool.
    let mut calls = Vec::new();
    let mut outside = String::new();
    let mut at = 0;
    while let Some(offset) = text[at..].find('{') {
        let start = at + offset;
        let mut values = serde_json::Deserializer::from_str(&text[start..]).into_iter::<serde_json::Value>();
        match values.next() {
            Some(Ok(v)) => {
                let end = start + values.byte_offset().max(1);
                match call_of(&v) {
                    Some(call) => {
                        calls.push(call);
                        outside.push_str(&text[at..start]);
                    }
                    None => outside.push_str(&text[at..end]),
                }
                at = end;
            }
            _ => {
                outside.push_str(&text[at..start + 1]);
                at = start + 1;
            }
        }
    }
    outside.push_str(&text[at..]);
    let outside = outside.replace("```json", "").replace("```", "");
    if !calls.is_empty() {
        return if prose(&outside) { TextCalls::Found(number(calls)) } else { TextCalls::None };
    }
    // An answer that starts as a call (after a few words) naming a known tool, but does
    // not parse as one (positional arguments, cut JSON); or llama-cpp-python's
    // `functions.NAME:`.
    let trimmed = text.trim();
    let starts_as_call = trimmed.find(['{', '`']).is_some_and(|i| prose(&trimmed[..i]));
    let compact: String = trimmed.chars().filter(|c| !c.is_whitespace()).collect();
    let head: String = compact.chars().take(PROSE_AROUND_A_CALL + 40).collect();
    let named = known.iter().any(|k| starts_as_call && compact.contains(&format!("\"name\":\"{k}\"")));
    let functions = known.iter().any(|k| head.contains(&format!("functions.{k}:")) || head.contains(&format!("functions.{k}(")));
    if named || functions {
        return TextCalls::Unreadable(shown());
    }
    TextCalls::None
}

/// Characters of prose an answer may have around the calls it writes as text.
const PROSE_AROUND_A_CALL: usize = 300;

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["read_file", "write_file", "bash"];

    #[test]
    fn tool_calls_written_as_text_are_read() {
        let tagged = "I'll write it.\n<tool_call>\n{\"name\": \"write_file\", \"arguments\": {\"path\": \"a.txt\", \"content\": \"hi\"}}\n</tool_call>";
        let TextCalls::Found(calls) = text_tool_calls(tagged, KNOWN) else { panic!("not found") };
        assert_eq!((calls[0].id.as_str(), calls[0].name.as_str()), ("text_call_0", "write_file"));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&calls[0].arguments).unwrap()["path"], "a.txt");

        let tools_tag = "<tools>\n{\"name\": \"bash\", \"arguments\": {\"command\": \"ls\"}}\n</tools>";
        assert!(matches!(text_tool_calls(tools_tag, KNOWN), TextCalls::Found(c) if c[0].name == "bash"));

        let fenced = "```json\n{\"name\": \"bash\", \"parameters\": {\"command\": \"ls\"}}\n```\nand then {\"name\": \"read_file\", \"arguments\": \"{\\\"path\\\": \\\"b\\\"}\"}";
        let TextCalls::Found(calls) = text_tool_calls(fenced, KNOWN) else { panic!("not found") };
        assert_eq!(calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["bash", "read_file"]);
        assert_eq!(calls[1].arguments, "{\"path\": \"b\"}");

        // Unknown tools and ordinary JSON are not calls; a summary is not either.
        assert_eq!(text_tool_calls("{\"name\": \"rm_rf\", \"arguments\": {}}", KNOWN), TextCalls::None);
        assert_eq!(text_tool_calls("Done: config is {\"debug\": true}.", KNOWN), TextCalls::None);
        let long = "I fixed the bug in calc.py: add() returned a - b and now returns a + b. ".repeat(5);
        let summaries = [
            format!("{long}Earlier I ran {{\"name\": \"write_file\", \"arguments\": {{\"path\": \"calc.py\", \"content\": \"old\"}}}} and then fixed it."),
            format!("{long}The docs now explain the <tool_call> and <tools> tags that small models write."),
            format!("{long}I renamed utils/functions.bash_helpers and functions.read_file_cached."),
            format!("{long}The call looked like {{\"name\": \"bash\", \"arguments\": [\"ls\"]}} in the old log."),
        ];
        for summary in &summaries {
            assert_eq!(text_tool_calls(summary, KNOWN), TextCalls::None, "{summary}");
        }
        // A call needs its arguments: without, it is an attempt that cannot be run.
        assert!(matches!(text_tool_calls("{\"name\": \"bash\"}", KNOWN), TextCalls::Unreadable(_)));
        // An attempt that does not parse says so.
        assert!(matches!(text_tool_calls("<tool_call>{\"name\": \"bash\", \"arguments\": {\"command\": </tool_call>", KNOWN), TextCalls::Unreadable(_)));
        assert!(matches!(text_tool_calls("{\"name\": \"write_file\", \"arguments\": {\"path\": \"a\"", KNOWN), TextCalls::Unreadable(_)));
        assert!(matches!(text_tool_calls("functions.write_file:", KNOWN), TextCalls::Unreadable(_)));
    }

    #[test]
    fn wire_settings_read_and_print() {
        let w = WireSettings::parse("stream=off, max_tokens_field=max_tokens,tool_choice=on").unwrap();
        assert_eq!(w, WireSettings { stream: Some(false), max_tokens_field: Some(MaxTokensField::MaxTokens), tool_choice: Some(true) });
        assert_eq!(WireSettings::parse(&w.to_string()).unwrap(), w);
        assert_eq!(WireSettings::parse("").unwrap(), WireSettings::default());
        assert!(WireSettings::parse("stream=maybe").unwrap_err().contains("on or off"));
        assert!(WireSettings::parse("streaming=on").unwrap_err().contains("unknown setting"));
    }

    #[test]
    fn tool_calls_assemble_from_pieces() {
        let mut a = Assembler::default();
        a.push(&Delta::Text { text: "Let me ".into() });
        a.push(&Delta::Text { text: "look.".into() });
        a.push(&Delta::ToolCall { index: 0, id: Some("c1".into()), name: Some("read_file".into()), arguments: "{\"pa".into() });
        a.push(&Delta::ToolCall { index: 1, id: Some("c2".into()), name: Some("glob".into()), arguments: String::new() });
        a.push(&Delta::ToolCall { index: 0, id: None, name: None, arguments: "th\":\"a\"}".into() });
        a.push(&Delta::ToolCall { index: 1, id: None, name: None, arguments: "{}".into() });
        let m = a.finish();
        assert_eq!(m.content, "Let me look.");
        assert_eq!(m.tool_calls.len(), 2);
        assert_eq!(m.tool_calls[0].arguments, "{\"path\":\"a\"}");
        assert_eq!(m.tool_calls[1].name, "glob");
    }

    #[test]
    fn requests_are_bounded() {
        let mut r = LlmRequest::default();
        assert!(r.validate().is_err());
        r.messages.push(Message::text(Role::User, "hi"));
        assert!(r.validate().is_ok());
        r.model = Some(String::new());
        assert!(r.validate().is_err());
    }
}
