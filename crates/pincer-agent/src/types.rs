//! The conversation and run types every provider speaks: what goes into a run
//! ([`RunRequest`]), what streams out of it ([`RunEvent`]) and what it ends with ([`RunOutput`]).

use serde::{Deserialize, Serialize};

/// Who said a message. Serialized lowercase (`"system"`, `"user"`, `"assistant"`), which is
/// the spelling of both the OpenAI Chat Completions and the Anthropic Messages APIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model. Anthropic has no system role inside `messages`; that
    /// provider lifts these into the top-level `system` field.
    System,
    /// The human side of the conversation.
    User,
    /// The model's earlier replies.
    Assistant,
}

impl Role {
    /// The wire spelling: `"system"`, `"user"` or `"assistant"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of the conversation: plain text, no attachments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage { role: Role::User, content: content.into() }
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        ChatMessage { role: Role::Assistant, content: content.into() }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage { role: Role::System, content: content.into() }
    }
}

/// One model call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunRequest {
    /// The model id as the provider names it (the part after the first `/` of a model ref).
    /// [`crate::AgentRunner::run`] overwrites it for each model of the chain.
    pub model: String,
    /// Sent before the history (OpenAI: a leading `system` message; Anthropic: `system`).
    pub system_prompt: Option<String>,
    /// The history, oldest first, ending with the new user message.
    pub messages: Vec<ChatMessage>,
    /// Cap on output tokens. `None`: the model's configured `maxTokens`, else the provider's
    /// default (OpenAI: omitted; Anthropic: 4096, because that API requires the field).
    pub max_tokens: Option<u64>,
}

impl RunRequest {
    /// The text of the last `user` message, if any.
    pub fn last_user_text(&self) -> Option<&str> {
        self.messages.iter().rev().find(|m| m.role == Role::User).map(|m| m.content.as_str())
    }
}

/// Token counts reported by the provider for one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Prompt tokens (OpenAI `prompt_tokens`, Anthropic `input_tokens`).
    pub input_tokens: u64,
    /// Generated tokens (OpenAI `completion_tokens`, Anthropic `output_tokens`).
    pub output_tokens: u64,
}

/// The result of a successful run. `text` is authoritative: it is what gets delivered,
/// whatever deltas were streamed before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunOutput {
    /// The whole reply text (may be empty, or the silent token, see [`crate::is_silent`]).
    pub text: String,
    /// The provider's stop reason as it spelled it (OpenAI `finish_reason` such as `"stop"`
    /// or `"length"`; Anthropic `stop_reason` such as `"end_turn"` or `"max_tokens"`).
    pub stop_reason: Option<String>,
    /// Token usage, when the provider reported it.
    pub usage: Option<Usage>,
    /// The model id that produced the reply (as requested).
    pub model: String,
    /// The provider id (the key under `models.providers`, or `"echo"` for the built-in).
    pub provider: String,
}

/// What [`crate::AgentRunner::run`] streams while a run is in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEvent {
    /// A piece of reply text, in order. Concatenating the deltas since the last
    /// [`RunEvent::Reset`] gives the text streamed so far by the current attempt.
    Delta(String),
    /// The attempt that streamed the deltas before this one failed and a new attempt (a retry
    /// or the next model of the chain) starts: discard the text streamed so far. Sent only
    /// when the failed attempt had streamed at least one delta.
    Reset,
}
