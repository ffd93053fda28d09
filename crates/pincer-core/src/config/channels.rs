//! Typed `channels.<name>` sections. Each channel adapter adds its section here and a field on
//! [`ChannelsConfig`](super::ChannelsConfig); the loader learns the name from the schema.
//!
//! Account resolution follows OpenClaw: `channels.<ch>.accounts.<id>` values override the base
//! keys, which are inherited; with no `accounts` map the base section is the `default` account.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Default per-request timeout of the webhook channel, in seconds.
pub const WEBHOOK_DEFAULT_TIMEOUT_SECONDS: u64 = 30;
/// Default `textChunkLimit` (chars).
pub const DEFAULT_TEXT_CHUNK_LIMIT: usize = 4000;

/// `channels.webhook`: a pincer extension that POSTs each reply as JSON to `url` (see
/// `pincer_channels::webhook` for the request shape).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookChannelConfig {
    /// Channel switch (default true when the section exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Destination URL (http or https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Extra request headers (e.g. `Authorization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Per-request timeout in seconds. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Max chars per message; longer replies are split. Default 4000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_chunk_limit: Option<usize>,
    /// Named accounts overriding the base keys.
    #[serde(default)]
    pub accounts: BTreeMap<String, WebhookAccountConfig>,
}

/// `channels.webhook.accounts.<id>`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookAccountConfig {
    /// Account switch (inherits the channel's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Overrides `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Merged over the channel's `headers`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Overrides `timeoutSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Overrides `textChunkLimit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_chunk_limit: Option<usize>,
}

/// A webhook account with every value resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedWebhookAccount {
    /// Account id.
    pub account_id: String,
    /// Destination URL.
    pub url: String,
    /// Headers (account over channel).
    pub headers: BTreeMap<String, String>,
    /// Request timeout in ms.
    pub timeout_ms: u64,
    /// Chunk limit in chars.
    pub text_chunk_limit: usize,
}

impl WebhookChannelConfig {
    /// The enabled accounts that have a URL. With no `accounts` map, the base section is the
    /// `default` account.
    pub fn resolved_accounts(&self) -> Vec<ResolvedWebhookAccount> {
        if self.enabled == Some(false) {
            return Vec::new();
        }
        let base = WebhookAccountConfig::default();
        let accounts: Vec<(&str, &WebhookAccountConfig)> = if self.accounts.is_empty() {
            vec![("default", &base)]
        } else {
            self.accounts.iter().map(|(k, v)| (k.as_str(), v)).collect()
        };
        accounts
            .into_iter()
            .filter(|(_, a)| a.enabled != Some(false))
            .filter_map(|(id, a)| {
                let url = a.url.clone().or_else(|| self.url.clone())?;
                let mut headers = self.headers.clone();
                headers.extend(a.headers.clone());
                Some(ResolvedWebhookAccount {
                    account_id: id.to_string(),
                    url,
                    headers,
                    timeout_ms: a.timeout_seconds.or(self.timeout_seconds).unwrap_or(WEBHOOK_DEFAULT_TIMEOUT_SECONDS)
                        * 1000,
                    text_chunk_limit: a.text_chunk_limit.or(self.text_chunk_limit).unwrap_or(DEFAULT_TEXT_CHUNK_LIMIT),
                })
            })
            .collect()
    }
}
