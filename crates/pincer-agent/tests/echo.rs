//! The built-in echo agent and the silent token.

mod common;

use common::*;
use pincer_agent::{is_silent, AgentRunner, EchoProvider, Provider, RunEvent, SILENT_TOKEN};
use std::collections::BTreeMap;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn echo_provider_replies_with_the_last_user_message() {
    let p = EchoProvider::new("echo");
    let mut req = ask("first");
    req.messages.push(pincer_agent::ChatMessage::assistant("echo: first"));
    req.messages.push(pincer_agent::ChatMessage::user("second"));
    let (out, deltas) = provider_collect(&p, req, CancellationToken::new()).await;
    let out = out.unwrap();
    assert_eq!(out.text, "echo: second");
    assert_eq!(deltas, ["echo: second"]);
    assert_eq!(p.api(), pincer_core::config::ProviderApi::Echo);
}

#[tokio::test]
async fn echo_via_runner_empty_chain_bare_ref_and_configured_provider() {
    let providers: BTreeMap<_, _> = [("parrot".to_string(), provider(serde_json::json!({"api": "echo"})))].into();
    let r = AgentRunner::new(&providers, http());
    for chain in [&[][..], &["echo"][..], &["echo/anything"][..], &["parrot/x"][..]] {
        let (out, events) = run_collect(&r, chain, ask("hey"), CancellationToken::new(), MINUTE).await;
        assert_eq!(out.unwrap().text, "echo: hey", "{chain:?}");
        assert_eq!(events, vec![RunEvent::Delta("echo: hey".into())], "{chain:?}");
    }
    assert!(r.describe(&[]).echo_only);
    assert!(r.describe(&["parrot/x".to_string()]).echo_only);
}

#[tokio::test]
async fn cancelled_before_start() {
    let r = AgentRunner::new(&BTreeMap::new(), http());
    let cancel = CancellationToken::new();
    cancel.cancel();
    let (out, _) = run_collect(&r, &[], ask("x"), cancel, MINUTE).await;
    assert_eq!(out, Err(pincer_agent::AgentError::Cancelled));
}

#[test]
fn silent_token() {
    assert_eq!(SILENT_TOKEN, "NO_REPLY");
    assert!(is_silent("NO_REPLY"));
    assert!(is_silent(" no_reply. "));
    assert!(is_silent("**NO_REPLY**"));
    assert!(!is_silent("NO_REPLY, but here is why"));
    assert!(!is_silent("Sure! NO_REPLY"));
    assert!(!is_silent(""));
}
