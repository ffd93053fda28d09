//! The control plane: one port serving the OpenClaw-compatible WebSocket protocol (at `/` and
//! `/ws`), HTTP probes (`/healthz`, `/readyz`), Prometheus `/metrics`, the OpenAI-compatible
//! `/v1/chat/completions` + `/v1/models`, and the web chat page at `/`.
//!
//! Every request reads the *current* gateway handle and method table; a restart swaps the
//! handle and nothing keeps a stale copy (DESIGN.md bug 4).

mod dispatch;
pub(crate) mod frame;
mod http;
mod limiter;
mod ws;

use crate::daemon::ControlInput;
use arc_swap::ArcSwap;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use pincer_core::config::{AuthMode, GatewayConfig};
use pincer_runtime::GatewayHandle;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Protocol version spoken (reference §2: `PROTOCOL_VERSION = 4`).
pub const PROTOCOL_VERSION: u64 = 4;

/// Shared control-plane state. Cheap to clone.
#[derive(Clone)]
pub struct ControlState {
    inner: Arc<ControlInner>,
}

struct ControlInner {
    gateway: ArcSwap<GatewayHandle>,
    gateway_cfg: ArcSwap<GatewayConfig>,
    /// Cancelled when the current runtime generation goes away (restart or stop): WebSocket
    /// connections then close with 1012 "service restart".
    generation: ArcSwap<CancellationToken>,
    auth: AuthMode,
    token: String,
    control: mpsc::Sender<ControlInput>,
    conn_ids: AtomicU64,
    /// True while a runtime is up (false during an in-process restart and at stop).
    ready: tokio::sync::watch::Sender<bool>,
    /// Failed authentications per client address.
    auth_limiter: limiter::AuthLimiter,
}

impl ControlState {
    /// Build the state for a started gateway.
    pub fn new(
        gateway: GatewayHandle,
        auth: AuthMode,
        token: String,
        control: mpsc::Sender<ControlInput>,
        gw: GatewayConfig,
    ) -> Self {
        ControlState {
            inner: Arc::new(ControlInner {
                gateway: ArcSwap::from_pointee(gateway),
                gateway_cfg: ArcSwap::from_pointee(gw),
                generation: ArcSwap::from_pointee(CancellationToken::new()),
                auth,
                token,
                control,
                conn_ids: AtomicU64::new(1),
                ready: tokio::sync::watch::Sender::new(true),
                auth_limiter: limiter::AuthLimiter::default(),
            }),
        }
    }

    /// The current gateway handle.
    pub fn gateway(&self) -> Arc<GatewayHandle> {
        self.inner.gateway.load_full()
    }

    /// Publish the gateway section of a reloaded config (HTTP endpoint toggles, UI).
    pub fn set_gateway_config(&self, gw: GatewayConfig) {
        self.inner.gateway_cfg.store(Arc::new(gw));
    }

    /// Mark not-ready and close current WebSocket connections with 1012 before a restart.
    pub fn restarting(&self) {
        self.inner.ready.send_replace(false);
        self.gateway().events().emit(
            "shutdown",
            serde_json::json!({"reason": "gateway restarting", "restartExpectedMs": 1500}),
            pincer_runtime::events::EventScope::All,
        );
        let old = self.inner.generation.swap(Arc::new(CancellationToken::new()));
        old.cancel();
    }

    /// Like [`ControlState::restarting`], for a final stop.
    pub fn restarting_for_stop(&self) {
        self.inner.ready.send_replace(false);
        self.inner.generation.load().cancel();
    }

    /// Swap in a freshly built runtime.
    pub fn replace_gateway(&self, gateway: GatewayHandle, gw: GatewayConfig) {
        self.inner.gateway.store(Arc::new(gateway));
        self.inner.gateway_cfg.store(Arc::new(gw));
        self.inner.ready.send_replace(true);
    }

    /// True while a runtime is up.
    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// Wait until a runtime is up, at most `limit`; returns whether it is.
    pub async fn wait_ready(&self, limit: std::time::Duration) -> bool {
        let mut rx = self.inner.ready.subscribe();
        let ready = matches!(tokio::time::timeout(limit, rx.wait_for(|r| *r)).await, Ok(Ok(_)));
        ready
    }

    fn next_conn_id(&self) -> String {
        format!("conn-{}", self.inner.conn_ids.fetch_add(1, Ordering::Relaxed))
    }

    /// Authenticate a client from `ip` presenting `token`: refused without a token check while
    /// the address is locked out after repeated failures, then a constant-time comparison.
    /// Errors: [`AuthFailure`].
    pub fn authorize(&self, ip: Option<std::net::IpAddr>, presented: Option<&str>) -> Result<(), AuthFailure> {
        let now = std::time::Instant::now();
        if let Some(ip) = ip {
            self.inner.auth_limiter.check(ip, now).map_err(AuthFailure::RateLimited)?;
        }
        if self.token_ok(presented) {
            if let Some(ip) = ip {
                self.inner.auth_limiter.success(ip);
            }
            return Ok(());
        }
        if let Some(ip) = ip {
            self.inner.auth_limiter.failure(ip, now);
            tracing::warn!(%ip, "control plane: authentication failed");
        }
        Err(if presented.is_none() { AuthFailure::Missing } else { AuthFailure::Mismatch })
    }

    /// Constant-time token check (`subtle`). Always true in `auth.mode: none`.
    pub fn token_ok(&self, presented: Option<&str>) -> bool {
        use subtle::ConstantTimeEq;
        match self.inner.auth {
            AuthMode::None => true,
            AuthMode::Token => presented.is_some_and(|p| p.as_bytes().ct_eq(self.inner.token.as_bytes()).into()),
        }
    }
}

/// Why [`ControlState::authorize`] refused a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No token was presented.
    Missing,
    /// The token is wrong.
    Mismatch,
    /// Too many failures from this address; retry after the duration.
    RateLimited(std::time::Duration),
}

impl AuthFailure {
    /// The `details.code` of the error (OpenClaw's auth failure codes, plus
    /// `AUTH_RATE_LIMITED`).
    pub fn code(self) -> &'static str {
        match self {
            AuthFailure::Missing => "AUTH_TOKEN_MISSING",
            AuthFailure::Mismatch => "AUTH_TOKEN_MISMATCH",
            AuthFailure::RateLimited(_) => "AUTH_RATE_LIMITED",
        }
    }
}

/// Build the router.
pub fn router(state: ControlState) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/ws", get(ws_only))
        .route("/healthz", get(http::healthz))
        .route("/health", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/ready", get(http::readyz))
        .route("/metrics", get(http::metrics))
        .route("/v1/models", get(http::models))
        .route("/v1/chat/completions", post(http::chat_completions))
        .with_state(state)
}

/// Serve until `cancel`.
pub async fn serve(listener: tokio::net::TcpListener, state: ControlState, cancel: CancellationToken) {
    let app = router(state);
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { cancel.cancelled().await }).await {
        tracing::error!(error = %e, "control plane server failed");
    }
}

async fn root(
    State(state): State<ControlState>,
    ip: http::ClientIp,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    match upgrade {
        Ok(up) => ws::upgrade(state, up, ip.0),
        Err(_) if state.inner.gateway_cfg.load().control_ui.enabled => Html(WEBCHAT_HTML).into_response(),
        Err(_) => (axum::http::StatusCode::NOT_FOUND, "web chat is disabled (gateway.controlUi.enabled: false)")
            .into_response(),
    }
}

async fn ws_only(State(state): State<ControlState>, ip: http::ClientIp, upgrade: WebSocketUpgrade) -> Response {
    ws::upgrade(state, upgrade, ip.0)
}

/// The web chat page (a single self-contained HTML file speaking the WS protocol).
pub const WEBCHAT_HTML: &str = include_str!("../../assets/webchat.html");
