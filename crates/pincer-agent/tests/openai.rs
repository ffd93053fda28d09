//! `openai-completions` against the wire-level fake, plus the runner behaviours (retry,
//! fallback, cancellation, deadline) exercised over real sockets.

mod common;

use common::*;
use pincer_agent::{AgentError, OpenAiProvider, Provider, RunEvent, RunRequest};
use pincer_testkit::{Behaviour, FakeLlm};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn openai(fake: &FakeLlm) -> serde_json::Value {
    json!({"api": "openai-completions", "baseUrl": fake.base_url(), "apiKey": "sk-test",
           "headers": {"X-Extra": "1"}})
}

#[tokio::test]
async fn streaming_reply_with_deltas_in_order() {
    let fake = FakeLlm::start().await;
    let text = "The quick brown fox jumps over the lazy dog, twice over.";
    fake.push(Behaviour::Reply { text: text.into(), stream: true, chunk_size: 3 });
    let r = runner(vec![("oai", openai(&fake))]);
    let mut req = ask("hello");
    req.system_prompt = Some("be brief".into());
    let (out, events) = run_collect(&r, &["oai/gpt-4o-mini"], req, CancellationToken::new(), MINUTE).await;
    let out = out.unwrap();
    assert_eq!(out.text, text);
    assert_eq!(out.stop_reason.as_deref(), Some("stop"));
    assert_eq!((out.provider.as_str(), out.model.as_str()), ("oai", "gpt-4o-mini"));
    let deltas: Vec<&str> = events
        .iter()
        .map(|e| match e {
            RunEvent::Delta(d) => d.as_str(),
            RunEvent::Reset => panic!("unexpected reset"),
        })
        .collect();
    assert_eq!(deltas.len(), text.chars().count().div_ceil(3));
    assert_eq!(deltas.concat(), text);

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let r0 = &reqs[0];
    assert_eq!(r0.path, "/v1/chat/completions");
    assert_eq!(r0.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(r0.header("x-extra"), Some("1"));
    assert_eq!(r0.header("content-type"), Some("application/json"));
    assert_eq!(
        r0.body,
        json!({"model": "gpt-4o-mini", "stream": true, "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello"}]})
    );
}

#[tokio::test]
async fn default_behaviour_echoes_and_usage_is_read_when_sent() {
    let fake = FakeLlm::start().await;
    let r = runner(vec![("oai", openai(&fake))]);
    let (out, events) = run_collect(&r, &["oai/m"], ask("ping"), CancellationToken::new(), MINUTE).await;
    let out = out.unwrap();
    assert_eq!(out.text, "fake: ping");
    assert_eq!(streamed_text(&events), "fake: ping");
}

#[tokio::test]
async fn non_streaming_json_reply_is_accepted() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::reply_json("whole answer"));
    let r = runner(vec![("oai", openai(&fake))]);
    let (out, events) = run_collect(&r, &["oai/m"], ask("q"), CancellationToken::new(), MINUTE).await;
    let out = out.unwrap();
    assert_eq!(out.text, "whole answer");
    assert_eq!(out.stop_reason.as_deref(), Some("stop"));
    let usage = out.usage.unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens), (1, 2));
    assert_eq!(events, vec![RunEvent::Delta("whole answer".into())]);
}

#[tokio::test]
async fn max_tokens_comes_from_the_model_config() {
    let fake = FakeLlm::start().await;
    let mut cfg = openai(&fake);
    cfg["models"] = json!([{"id": "m", "maxTokens": 321}]);
    let r = runner(vec![("oai", cfg)]);
    let (out, _) = run_collect(&r, &["oai/m"], ask("q"), CancellationToken::new(), MINUTE).await;
    out.unwrap();
    assert_eq!(fake.requests()[0].body["max_tokens"], 321);
}

#[tokio::test]
async fn model_ids_with_slashes_split_at_the_first() {
    let fake = FakeLlm::start().await;
    let r = runner(vec![("router", openai(&fake))]);
    let (out, _) = run_collect(&r, &["router/meta/llama-3.1-8b"], ask("q"), CancellationToken::new(), MINUTE).await;
    assert_eq!(out.unwrap().model, "meta/llama-3.1-8b");
    assert_eq!(fake.requests()[0].body["model"], "meta/llama-3.1-8b");
}

#[tokio::test]
async fn status_429_carries_retry_after() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::status_retry_after(429, "7"));
    let p = OpenAiProvider::new("oai", &provider(openai(&fake)), http()).unwrap();
    let req = RunRequest { model: "m".into(), ..ask("q") };
    let (out, _) = provider_collect(&p, req, CancellationToken::new()).await;
    match out.unwrap_err() {
        AgentError::Http { status: 429, retry_after_ms: Some(7000), body_snippet } => {
            assert!(body_snippet.contains("rate_limit"), "{body_snippet}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn status_429_with_retry_after_is_retried_then_succeeds() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::status_retry_after(429, "0"));
    fake.push(Behaviour::reply("second time lucky"));
    let r = runner(vec![("oai", openai(&fake))]);
    let (out, _) = run_collect(&r, &["oai/m"], ask("q"), CancellationToken::new(), MINUTE).await;
    assert_eq!(out.unwrap().text, "second time lucky");
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn retry_after_over_sixty_seconds_falls_over_at_once() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::status_retry_after(429, "120"));
    fake.push(Behaviour::reply("from b"));
    let r = runner(vec![("oai", openai(&fake))]);
    let started = Instant::now();
    let (out, _) =
        run_collect(&r, &["oai/a", "oai/b"], ask("q"), CancellationToken::new(), Duration::from_secs(600)).await;
    let out = out.unwrap();
    assert_eq!((out.text.as_str(), out.model.as_str()), ("from b", "b"));
    assert!(started.elapsed() < Duration::from_secs(30));
    let models: Vec<_> = fake.requests().iter().map(|r| r.body["model"].clone()).collect();
    assert_eq!(models, [json!("a"), json!("b")]);
}

#[tokio::test]
async fn persistent_500_falls_back_to_the_second_model() {
    let fake = FakeLlm::start().await;
    fake.push_all([Behaviour::status(500), Behaviour::status(502), Behaviour::status(503)]);
    fake.push(Behaviour::reply("fallback answer"));
    let r = runner(vec![("oai", openai(&fake))]);
    let (out, _) = run_collect(&r, &["oai/primary", "oai/backup"], ask("q"), CancellationToken::new(), MINUTE).await;
    let out = out.unwrap();
    assert_eq!((out.text.as_str(), out.model.as_str()), ("fallback answer", "backup"));
    let models: Vec<_> = fake.requests().iter().map(|r| r.body["model"].clone()).collect();
    assert_eq!(models, [json!("primary"), json!("primary"), json!("primary"), json!("backup")]);
}

#[tokio::test]
async fn non_retryable_4xx_falls_back_without_retrying() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::status(401));
    let r = runner(vec![("oai", openai(&fake))]);
    let (out, _) = run_collect(&r, &["oai/a", "echo"], ask("hi"), CancellationToken::new(), MINUTE).await;
    assert_eq!(out.unwrap().text, "echo: hi");
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn last_error_is_returned_when_every_model_fails() {
    let fake = FakeLlm::start().await;
    fake.set_default(Some(Behaviour::status(400)));
    let r = runner(vec![("oai", openai(&fake))]);
    let (out, _) = run_collect(&r, &["oai/a", "oai/b"], ask("q"), CancellationToken::new(), MINUTE).await;
    assert!(matches!(out, Err(AgentError::Http { status: 400, .. })), "{out:?}");
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn truncated_stream_is_malformed_and_partial_deltas_are_reset() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::Truncated { partial_text: "half an ans".into() });
    let r = runner(vec![("oai", openai(&fake))]);
    let (out, events) = run_collect(&r, &["oai/a"], ask("q"), CancellationToken::new(), MINUTE).await;
    assert_eq!(out, Err(AgentError::malformed("truncated stream")));
    assert_eq!(streamed_text(&events), "half an ans");

    // With a fallback, the consumer is told to drop the partial text first.
    fake.push(Behaviour::Truncated { partial_text: "half".into() });
    fake.push(Behaviour::reply("whole"));
    let (out, events) = run_collect(&r, &["oai/a", "oai/b"], ask("q"), CancellationToken::new(), MINUTE).await;
    assert_eq!(out.unwrap().text, "whole");
    assert!(events.contains(&RunEvent::Reset));
    assert_eq!(streamed_text(&events), "whole");
}

#[tokio::test]
async fn error_body_in_a_200_is_an_error() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::ErrorBody200 { message: "model exploded".into() });
    let r = runner(vec![("oai", openai(&fake))]);
    let (out, _) = run_collect(&r, &["oai/a"], ask("q"), CancellationToken::new(), MINUTE).await;
    match out {
        Err(AgentError::Malformed { detail }) => {
            assert!(detail.contains("model exploded"), "{detail}")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(fake.request_count(), 1, "malformed is not retried");
}

#[tokio::test]
async fn bad_json_is_malformed() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::BadJson);
    let r = runner(vec![("oai", openai(&fake))]);
    let (out, _) = run_collect(&r, &["oai/a"], ask("q"), CancellationToken::new(), MINUTE).await;
    assert!(matches!(out, Err(AgentError::Malformed { .. })), "{out:?}");
}

#[tokio::test]
async fn cancel_during_hang_returns_cancelled_promptly() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::Hang);
    let r = runner(vec![("oai", openai(&fake))]);
    let cancel = CancellationToken::new();
    let canceller = async {
        fake.wait_for_requests(1).await;
        cancel.cancel();
        Instant::now()
    };
    let ((out, _), cancelled_at) =
        tokio::join!(run_collect(&r, &["oai/a", "echo"], ask("q"), cancel.clone(), MINUTE), canceller);
    assert_eq!(out, Err(AgentError::Cancelled), "cancel does not fall back");
    assert!(cancelled_at.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn cancel_stops_a_provider_mid_stream() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::SlowStream { text: "x".repeat(1000), gap: Duration::from_millis(20) });
    let p = OpenAiProvider::new("oai", &provider(openai(&fake)), http()).unwrap();
    let cancel = CancellationToken::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let req = RunRequest { model: "m".into(), ..ask("q") };
    let run = p.run(req, tx, cancel.clone());
    let canceller = async {
        // The first delta proves the stream is flowing.
        let first = rx.recv().await;
        cancel.cancel();
        (first, Instant::now())
    };
    let (out, (first, at)) = tokio::join!(run, canceller);
    assert_eq!(first.as_deref(), Some("x"));
    assert_eq!(out, Err(AgentError::Cancelled));
    assert!(at.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn deadline_gives_timeout() {
    let fake = FakeLlm::start().await;
    fake.set_default(Some(Behaviour::Hang));
    let r = runner(vec![("oai", openai(&fake))]);
    let started = Instant::now();
    let (out, _) =
        run_collect(&r, &["oai/a", "oai/b"], ask("q"), CancellationToken::new(), Duration::from_millis(300)).await;
    assert_eq!(out, Err(AgentError::Timeout));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
    assert_eq!(fake.request_count(), 1, "the hang ate the whole budget");
}

#[tokio::test]
async fn connection_refused_is_a_retryable_transport_error() {
    let fake = FakeLlm::start().await;
    let base = fake.base_url();
    fake.stop().await;
    let p =
        OpenAiProvider::new("oai", &provider(json!({"api": "openai-completions", "baseUrl": base})), http()).unwrap();
    let (out, _) = provider_collect(&p, RunRequest { model: "m".into(), ..ask("q") }, CancellationToken::new()).await;
    let err = out.unwrap_err();
    assert!(matches!(err, AgentError::Transport(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn strict_fake_rejects_a_request_without_model() {
    // The provider sends whatever model the request names; an empty one is a 400.
    let fake = FakeLlm::start().await;
    let p = OpenAiProvider::new("oai", &provider(openai(&fake)), http()).unwrap();
    let (out, _) = provider_collect(&p, ask("q"), CancellationToken::new()).await;
    assert!(matches!(out, Err(AgentError::Http { status: 400, .. })), "{out:?}");
}

#[tokio::test]
async fn unknown_provider_and_bad_refs_fall_through_to_the_next_model() {
    let r = runner(vec![(
        "broken",
        json!({"api": "openai-completions", "baseUrl": "http://127.0.0.1:9", "headers": {"bad header": "x"}}),
    )]);
    assert_eq!(r.problems().len(), 1);
    let (out, _) =
        run_collect(&r, &["ghost/m", "not-a-ref", "broken/m", "echo"], ask("q"), CancellationToken::new(), MINUTE)
            .await;
    assert_eq!(out.unwrap().text, "echo: q");
    let (out, _) = run_collect(&r, &["ghost/m"], ask("q"), CancellationToken::new(), MINUTE).await;
    assert!(matches!(out, Err(AgentError::Config { .. })), "{out:?}");
    let status = r.describe(&["broken/m".to_string()]);
    assert!(!status.echo_only);
    assert_eq!(status.problems.len(), 1);
}
