//! `anthropic-messages` against the wire-level fake (which enforces the API's required
//! headers and fields).

mod common;

use common::*;
use pincer_agent::{AgentError, AnthropicProvider, ChatMessage, RunEvent, RunRequest, Usage};
use pincer_testkit::{Behaviour, FakeLlm};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn anthropic(fake: &FakeLlm) -> serde_json::Value {
    json!({"api": "anthropic-messages", "baseUrl": fake.anthropic_base_url(), "apiKey": "sk-ant-test"})
}

#[tokio::test]
async fn streaming_reply() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::Reply { text: "Hello from Claude".into(), stream: true, chunk_size: 5 });
    let r = runner(vec![("ant", anthropic(&fake))]);
    let mut req = ask("hi there");
    req.system_prompt = Some("You are terse.".into());
    req.messages.insert(0, ChatMessage::assistant("earlier"));
    req.messages.insert(0, ChatMessage::user("first"));
    req.messages.insert(0, ChatMessage::system("Also polite."));
    let (out, events) = run_collect(&r, &["ant/claude-sonnet-4-5"], req, CancellationToken::new(), MINUTE).await;
    let out = out.unwrap();
    assert_eq!(out.text, "Hello from Claude");
    assert_eq!(out.stop_reason.as_deref(), Some("end_turn"));
    assert_eq!(out.usage, Some(Usage { input_tokens: 9, output_tokens: 3 }));
    assert_eq!(
        events,
        ["Hello", " from", " Clau", "de"].iter().map(|s| RunEvent::Delta(s.to_string())).collect::<Vec<_>>()
    );

    let reqs = fake.requests();
    let r0 = &reqs[0];
    assert_eq!(r0.path, "/v1/messages");
    assert_eq!(r0.header("x-api-key"), Some("sk-ant-test"));
    assert_eq!(r0.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r0.header("content-type"), Some("application/json"));
    assert_eq!(
        r0.body,
        json!({"model": "claude-sonnet-4-5", "max_tokens": 4096, "stream": true,
               "system": "You are terse.\n\nAlso polite.",
               "messages": [{"role": "user", "content": "first"},
                            {"role": "assistant", "content": "earlier"},
                            {"role": "user", "content": "hi there"}]})
    );
}

#[tokio::test]
async fn base_url_ending_in_v1_is_not_doubled() {
    let fake = FakeLlm::start().await;
    let cfg =
        json!({"api": "anthropic-messages", "baseUrl": format!("{}/v1/", fake.anthropic_base_url()), "apiKey": "k"});
    let r = runner(vec![("ant", cfg)]);
    let (out, _) = run_collect(&r, &["ant/c"], ask("yo"), CancellationToken::new(), MINUTE).await;
    assert_eq!(out.unwrap().text, "fake: yo");
    assert_eq!(fake.requests()[0].path, "/v1/messages");
}

#[tokio::test]
async fn non_streaming_message_is_accepted() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::reply_json("in one piece"));
    let r = runner(vec![("ant", anthropic(&fake))]);
    let (out, events) = run_collect(&r, &["ant/c"], ask("q"), CancellationToken::new(), MINUTE).await;
    assert_eq!(out.unwrap().text, "in one piece");
    assert_eq!(events, vec![RunEvent::Delta("in one piece".into())]);
}

#[tokio::test]
async fn missing_api_key_is_a_401_and_not_retried() {
    let fake = FakeLlm::start().await;
    let cfg = json!({"api": "anthropic-messages", "baseUrl": fake.anthropic_base_url()});
    let r = runner(vec![("ant", cfg)]);
    let (out, _) = run_collect(&r, &["ant/c"], ask("q"), CancellationToken::new(), MINUTE).await;
    match out {
        Err(AgentError::Http { status: 401, body_snippet, .. }) => {
            assert!(body_snippet.contains("authentication_error"), "{body_snippet}")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn truncated_stream_is_malformed() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::Truncated { partial_text: "cut sh".into() });
    let r = runner(vec![("ant", anthropic(&fake))]);
    let (out, events) = run_collect(&r, &["ant/c"], ask("q"), CancellationToken::new(), MINUTE).await;
    assert_eq!(out, Err(AgentError::malformed("truncated stream")));
    assert_eq!(streamed_text(&events), "cut sh");
}

#[tokio::test]
async fn overloaded_529_is_retried() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::status(529));
    fake.push(Behaviour::reply("recovered"));
    let r = runner(vec![("ant", anthropic(&fake))]);
    let (out, _) = run_collect(&r, &["ant/c"], ask("q"), CancellationToken::new(), MINUTE).await;
    assert_eq!(out.unwrap().text, "recovered");
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn error_event_in_a_200_stream_is_an_error() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::ErrorBody200 { message: "Internal server error".into() });
    let p = AnthropicProvider::new("ant", &provider(anthropic(&fake)), http()).unwrap();
    let req = RunRequest { model: "c".into(), ..ask("q") };
    let (out, _) = provider_collect(&p, req, CancellationToken::new()).await;
    match out {
        // `api_error` is documented as HTTP 500, hence retryable.
        Err(e @ AgentError::Http { status: 500, .. }) => {
            assert!(e.to_string().contains("Internal server error"), "{e}");
            assert!(e.is_retryable());
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn bad_json_is_malformed() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::BadJson);
    let r = runner(vec![("ant", anthropic(&fake))]);
    let (out, _) = run_collect(&r, &["ant/c"], ask("q"), CancellationToken::new(), MINUTE).await;
    assert!(matches!(out, Err(AgentError::Malformed { .. })), "{out:?}");
}
