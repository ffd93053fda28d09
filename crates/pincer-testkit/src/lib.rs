//! pincer-testkit: wire-level fakes for the tests of the whole workspace. Test-only
//! (`publish = false`); nothing here runs in the gateway.
//!
//! - [`FakeLlm`]: a loopback server speaking the OpenAI Chat Completions and Anthropic
//!   Messages wire formats, with a scriptable queue of [`Behaviour`]s and a record of every
//!   request.
//! - [`FakeWebhook`]: a strict receiver for the `webhook` delivery channel.
//! - [`FakeDiscord`]: a strict fake of Discord's HTTP API and Gateway (v10) for the Discord
//!   channel adapter, enforcing one live gateway session per bot token.
//! - [`FakeMattermost`]: a strict fake of Mattermost's HTTP API v4 and WebSocket for the
//!   Mattermost channel adapter, counting simultaneous sockets per bot token. Its other types
//!   live in [`mattermost`].

pub mod discord;
pub mod fake_llm;
pub mod mattermost;
pub mod webhook;

pub use discord::{
    BotStats, ChannelSpec, CloseBy, CloseEvent, FakeDiscord, GatewayFrame, MessageSpec, RestRequest, Violation,
    WaitTimeout,
};
pub use fake_llm::{Api, Behaviour, FakeLlm, RecordedRequest};
pub use mattermost::FakeMattermost;
pub use webhook::{Delivery, FakeWebhook, WebhookBehaviour};
