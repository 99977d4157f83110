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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    pub updated_at: chrono::DateTime<chrono::Utc>,
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut r = LlmRequest { messages: vec![], tools: vec![], model: None, max_tokens: None, temperature: None };
        assert!(r.validate().is_err());
        r.messages.push(Message::text(Role::User, "hi"));
        assert!(r.validate().is_ok());
        r.model = Some(String::new());
        assert!(r.validate().is_err());
    }
}
