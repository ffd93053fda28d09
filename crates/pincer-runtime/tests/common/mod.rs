//! Shared harness for the runtime integration tests: a real SQLite file in a temp state dir,
//! the fake LLM ([`FakeLlm`]) and the fake webhook receiver ([`FakeWebhook`]) on loopback, and
//! a [`Gateway`] built from a [`Config`] written in code.
//!
//! Synchronisation is on observable events (a run's watch channel through `wait_run`, the
//! fake's request counter, the webhook's delivery list, the event bus), every wait bounded by
//! [`WAIT`] so a failure cannot hang the suite.
#![allow(dead_code)]

use pincer_core::config::{Config, ModelSelection, ProviderApi, ProviderConfig, WebhookChannelConfig};
use pincer_core::{AccountId, ChannelId, DeliveryTarget};
use pincer_runtime::events::GatewayEvent;
use pincer_runtime::runs::RunInfo;
use pincer_runtime::supervisor::StopOutcome;
use pincer_runtime::{Gateway, GatewayHandle, GatewayOptions, SubmitTurn, Submitted};
use pincer_store::{OutboxRow, Role, Store};
use pincer_testkit::{Behaviour, Delivery, FakeLlm, FakeWebhook};
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::sync::broadcast;

/// Upper bound for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(20);

/// Ingress name used for submitted turns (the dedupe/outcome ledger's channel).
pub const INGRESS: &str = "api";

/// The model ref every test agent uses.
pub const MODEL: &str = "fake/m1";

/// A config whose default agent talks to `fake` (`openai-completions`) and whose `webhook`
/// channel posts to `hook`.
pub fn base_config(fake: &FakeLlm, hook: &FakeWebhook) -> Config {
    let mut config = Config::default();
    config.models.providers.insert(
        "fake".into(),
        ProviderConfig {
            api: ProviderApi::OpenaiCompletions,
            base_url: Some(fake.base_url()),
            api_key: None,
            headers: Default::default(),
            timeout_seconds: None,
            models: Vec::new(),
            command: Vec::new(),
        },
    );
    config.agents.defaults.model = Some(ModelSelection::Ref(MODEL.into()));
    config.channels.webhook = Some(WebhookChannelConfig { url: Some(hook.url()), ..Default::default() });
    config
}

/// The `webhook` channel's default account, addressed to `to`.
pub fn webhook_target(to: &str) -> DeliveryTarget {
    DeliveryTarget {
        channel: ChannelId::new("webhook"),
        account: AccountId::default(),
        to: to.to_string(),
        thread_id: None,
        reply_to_id: None,
    }
}

async fn start_gateway(state_dir: &Path, config: Config, deliver: bool) -> Gateway {
    let store = Arc::new(Store::open(state_dir).expect("open store"));
    Gateway::start(GatewayOptions {
        state_dir: state_dir.to_path_buf(),
        config_path: None,
        config,
        config_hash: "test".into(),
        warnings: Vec::new(),
        store,
        version: "test".into(),
        deliver,
        channels: Some(Default::default()),
    })
    .await
    .expect("gateway starts")
}

/// One gateway on a temp state dir with its fakes.
pub struct Harness {
    /// The fake model server.
    pub fake: FakeLlm,
    /// The fake webhook receiver.
    pub hook: FakeWebhook,
    /// The config the gateway was started with.
    pub config: Config,
    /// Handle to the running gateway.
    pub gw: GatewayHandle,
    gateway: Gateway,
    deliver: bool,
    dir: TempDir,
    /// Behaviours pushed to the fake so far (see [`Harness::wait_requests`]).
    pushed: AtomicUsize,
}

impl Harness {
    /// Start with the delivery worker running, after `tweak`ing the base config.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> Harness {
        Self::start_with(true, tweak).await
    }

    /// Start, choosing whether the delivery worker runs.
    pub async fn start_with(deliver: bool, tweak: impl FnOnce(&mut Config)) -> Harness {
        let fake = FakeLlm::start().await;
        let hook = FakeWebhook::start().await;
        let mut config = base_config(&fake, &hook);
        tweak(&mut config);
        let dir = tempfile::tempdir().expect("tempdir");
        let gateway = start_gateway(dir.path(), config.clone(), deliver).await;
        let gw = gateway.handle();
        Harness { fake, hook, config, gw, gateway, deliver, dir, pushed: AtomicUsize::new(0) }
    }

    /// Stop the gateway (deadline `deadline`), drop every handle on its store, then start a
    /// new gateway on the same state dir and store file, with the same config and fakes.
    pub async fn restart(self, deadline: Duration) -> (StopOutcome, Harness) {
        let Harness { fake, hook, config, gw, gateway, deliver, dir, pushed } = self;
        drop(gw);
        let stopped = gateway.shutdown(deadline).await;
        let gateway = start_gateway(dir.path(), config.clone(), deliver).await;
        let gw = gateway.handle();
        (stopped, Harness { fake, hook, config, gw, gateway, deliver, dir, pushed })
    }

    /// Stop the gateway; every test ends with this and expects a clean stop.
    pub async fn stop(self) {
        let Harness { gw, gateway, .. } = self;
        drop(gw);
        assert_eq!(gateway.shutdown(Duration::from_secs(10)).await, StopOutcome::Clean, "gateway did not stop cleanly");
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        self.gw.store()
    }

    /// Submit a session-only turn (`chat.send` without delivery) to `session`.
    pub async fn submit(&self, session: &str, text: &str) -> Submitted {
        self.submit_turn(SubmitTurn {
            session_key: Some(session.into()),
            message: text.into(),
            ingress: INGRESS.into(),
            ..Default::default()
        })
        .await
    }

    /// Submit a turn whose reply goes to the webhook channel, addressed to `to`.
    pub async fn submit_to(&self, session: &str, text: &str, to: &str) -> Submitted {
        self.submit_turn(SubmitTurn {
            session_key: Some(session.into()),
            message: text.into(),
            ingress: INGRESS.into(),
            deliver: Some(webhook_target(to)),
            ..Default::default()
        })
        .await
    }

    /// Submit any turn; it must be accepted as new.
    pub async fn submit_turn(&self, turn: SubmitTurn) -> Submitted {
        let text = turn.message.clone();
        let s = self.gw.submit(turn).await.unwrap_or_else(|e| panic!("submit {text:?} refused: {e}"));
        assert!(!s.duplicate, "submit {text:?} was taken for a duplicate: {s:?}");
        s
    }

    /// Wait until a registered run is terminal; panics when it is unknown or still running
    /// after [`WAIT`].
    pub async fn wait_run(&self, run_id: &str) -> RunInfo {
        let info =
            self.gw.wait_run(run_id, WAIT).await.unwrap_or_else(|| panic!("run {run_id} is not in the run registry"));
        assert!(
            info.status.is_terminal(),
            "run {run_id} not terminal after {WAIT:?}: {info:?}; the fake LLM got {} requests",
            self.fake.request_count()
        );
        info
    }

    /// Script the fake's answer to a future request (in order).
    pub fn push(&self, behaviour: Behaviour) {
        self.pushed.fetch_add(1, Ordering::SeqCst);
        self.fake.push(behaviour);
    }

    /// Wait until the fake LLM has received `n` requests and those requests have taken their
    /// scripted behaviours.
    ///
    /// The second half works around a race in `FakeLlm`: it publishes the request count
    /// (waking `wait_for_requests`) before the handler pops the request's behaviour, so a
    /// test that reacts at once can get its next request to the fake first, and that request
    /// takes the behaviour meant for the earlier one. The queue length has no change
    /// notification, so it is polled (bounded by [`WAIT`]).
    pub async fn wait_requests(&self, n: usize) {
        let left = self.pushed.load(Ordering::SeqCst).saturating_sub(n);
        let wait = async {
            self.fake.wait_for_requests(n).await;
            while self.fake.pending() > left {
                tokio::task::yield_now().await;
            }
        };
        if tokio::time::timeout(WAIT, wait).await.is_err() {
            panic!(
                "fake LLM got {} requests with {} scripted behaviours left; waited for {n} requests and {left} left",
                self.fake.request_count(),
                self.fake.pending()
            );
        }
    }

    /// The `(role, content)` pairs of the fake's request number `i` (0-based), system prompt
    /// excluded: what the model saw.
    pub fn request_messages(&self, i: usize) -> Vec<(String, String)> {
        let reqs = self.fake.requests();
        let req = reqs.get(i).unwrap_or_else(|| panic!("no request #{i}: the fake got {}", reqs.len()));
        req.body["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("request #{i} has no messages: {}", req.body))
            .iter()
            .filter(|m| m["role"] != "system")
            .map(|m| (m["role"].as_str().unwrap_or("").to_string(), m["content"].as_str().unwrap_or("").to_string()))
            .collect()
    }

    /// A session's whole transcript as `(role, text, run id)`, in seq order.
    pub fn transcript(&self, session_key: &str) -> Vec<(Role, String, Option<String>)> {
        self.store()
            .transcript(session_key, 1000)
            .expect("read transcript")
            .into_iter()
            .map(|e| (e.role, e.text, e.run_id))
            .collect()
    }

    /// The ledger outcome (`replied`, `silent`, `failed`; `None` while open) of a message,
    /// panicking when the message is not in the ledger at all.
    pub fn ledger(&self, channel: &str, message_id: &str) -> (Option<String>, Option<String>) {
        let o = self
            .store()
            .inbound_outcome(channel, AccountId::DEFAULT, message_id)
            .expect("read ledger")
            .unwrap_or_else(|| panic!("{channel}/{message_id} is not in the inbound ledger"));
        (o.outcome, o.reason)
    }

    /// The ledger outcome of a submitted turn.
    pub fn outcome(&self, run_id: &str) -> Option<String> {
        self.ledger(INGRESS, run_id).0
    }

    /// Every outbox row, oldest first.
    pub fn outbox(&self) -> Vec<OutboxRow> {
        let mut rows = self.store().list_outbox(None, 1000).expect("list outbox");
        rows.reverse();
        rows
    }

    /// Wait until the webhook received `n` deliveries.
    pub async fn deliveries(&self, n: usize) -> Vec<Delivery> {
        match tokio::time::timeout(WAIT, self.hook.wait_for(n)).await {
            Ok(d) => d,
            Err(_) => panic!("webhook got {:?}, waited for {n} deliveries", self.hook.deliveries()),
        }
    }
}

/// `(role, content)` pairs for comparing with [`Harness::request_messages`].
pub fn msgs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(r, c)| (r.to_string(), c.to_string())).collect()
}

/// Wait on the event bus for the terminal `chat` event of `run_id` and return its state
/// (`final`, `silent`, `error`, `aborted`). For turns that are not in the run registry
/// (channel turns from `ingest`). Subscribe before the turn is accepted.
pub async fn wait_chat_end(rx: &mut broadcast::Receiver<Arc<GatewayEvent>>, run_id: &str) -> String {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(ev) if ev.event == "chat" && ev.payload["runId"] == run_id => {
                    let state = ev.payload["state"].as_str().unwrap_or("").to_string();
                    if state != "delta" {
                        return state;
                    }
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("event bus closed"),
            }
        }
    };
    tokio::time::timeout(WAIT, wait).await.unwrap_or_else(|_| panic!("no terminal chat event for {run_id}"))
}

/// A JSON string field, for short assertions.
pub fn s<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or("")
}
