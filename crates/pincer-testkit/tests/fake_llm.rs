//! The fake speaks the real wire formats and is strict where the real APIs are.

use pincer_testkit::{Api, Behaviour, FakeLlm};
use serde_json::{json, Value};

async fn post(url: String, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    let mut rb = reqwest::Client::new().post(url).body(body.to_string());
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, ct, resp.text().await.unwrap())
}

fn data_lines(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn openai_stream_is_the_chunk_format() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::Reply { text: "abcdef".into(), stream: true, chunk_size: 4 });
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#;
    let (status, ct, text) = post(format!("{}/chat/completions", fake.base_url()), &[], body).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/event-stream"));
    assert!(text.ends_with("data: [DONE]\n\n"));
    let chunks = data_lines(&text);
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "abcdef");
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "stop");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 1);
}

#[tokio::test]
async fn openai_default_echo_and_recording() {
    let fake = FakeLlm::start().await;
    let body = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"yo"}]}]}"#;
    let (status, ct, text) =
        post(format!("{}/chat/completions", fake.base_url()), &[("authorization", "Bearer k")], body).await;
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "fake: yo");
    fake.wait_for_requests(1).await;
    let reqs = fake.requests();
    assert_eq!(reqs[0].api, Api::OpenAi);
    assert_eq!(reqs[0].header("Authorization"), Some("Bearer k"));
    assert_eq!(reqs[0].body["model"], "m");
}

#[tokio::test]
async fn openai_rejects_missing_fields_without_consuming_the_queue() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::reply("kept"));
    let url = format!("{}/chat/completions", fake.base_url());
    for body in [r#"{"messages":[]}"#, r#"{"model":"m"}"#, "not json"] {
        let (status, _, text) = post(url.clone(), &[], body).await;
        assert_eq!(status, 400, "{body}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    assert_eq!(fake.pending(), 1);
    assert_eq!(fake.request_count(), 3);
}

#[tokio::test]
async fn anthropic_is_strict_and_streams_the_documented_events() {
    let fake = FakeLlm::start().await;
    let url = format!("{}/v1/messages", fake.anthropic_base_url());
    let ok = r#"{"model":"c","max_tokens":10,"messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let (s, _, t) = post(url.clone(), &[("anthropic-version", "2023-06-01")], ok).await;
    assert_eq!(s, 401);
    assert_eq!(serde_json::from_str::<Value>(&t).unwrap()["error"]["type"], "authentication_error");
    let (s, _, _) = post(url.clone(), &[("x-api-key", "k")], ok).await;
    assert_eq!(s, 400);
    let h = [("x-api-key", "k"), ("anthropic-version", "2023-06-01")];
    let no_max = r#"{"model":"c","messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(post(url.clone(), &h, no_max).await.0, 400);
    let system_role = r#"{"model":"c","max_tokens":5,"messages":[{"role":"system","content":"x"}]}"#;
    assert_eq!(post(url.clone(), &h, system_role).await.0, 400);

    let (s, ct, text) = post(url, &h, ok).await;
    assert_eq!(s, 200);
    assert!(ct.starts_with("text/event-stream"));
    let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let text_out: String = data_lines(&text)
        .iter()
        .filter(|d| d["type"] == "content_block_delta")
        .map(|d| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(text_out, "fake: hi");
}

#[tokio::test]
async fn status_behaviour_sets_retry_after_and_default_body() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::status_retry_after(429, "3"));
    let resp = reqwest::Client::new()
        .post(format!("{}/chat/completions", fake.base_url()))
        .body(r#"{"model":"m","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "3");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_exceeded");
}

#[tokio::test]
async fn stop_ends_a_hanging_request() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::Hang);
    let url = format!("{}/chat/completions", fake.base_url());
    let request = tokio::spawn(post(url, &[], r#"{"model":"m","messages":[]}"#));
    fake.wait_for_requests(1).await;
    fake.stop().await;
    let (status, _, _) = request.await.unwrap();
    assert_eq!(status, 503);
}
