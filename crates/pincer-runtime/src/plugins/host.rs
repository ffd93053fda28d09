//! The plugin host of one runtime: which instance of each plugin is published, which
//! replacements are initializing, and the method table built from them.
//!
//! Generations. Every apply of the `plugins` config is a plugin generation. A plugin whose
//! instance fingerprint (directory, manifest text, config, timeouts) is unchanged keeps its
//! instance and process. A changed plugin gets a new instance, which initializes in the
//! background while the old one keeps serving; when the new one is ready (or its first
//! attempt failed, in which case it takes over the old one's method names and answers
//! `UNAVAILABLE` while it retries) the table is republished with it, atomically, and only
//! then is the old instance stopped, letting its calls in flight finish. A removed or
//! disabled plugin is taken out of the table first and stopped after. At shutdown the table
//! is left as it is: late calls get `UNAVAILABLE`, never `unknown method`.

use super::manifest::{check_config, disabled_reason, discover, plugin_config, timeouts, Problem, Roots};
use super::slot::{ManagerContext, Slot, SlotEvent, SlotSpec, SlotState};
use super::{PluginsView, Services};
use crate::methods::MethodTable;
use crate::supervisor::Supervisor;
use arc_swap::ArcSwap;
use pincer_core::config::PluginsConfig;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long calls in flight get to finish when the gateway stops or restarts.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// What a reload did to one plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginChange {
    /// Plugin id.
    pub id: String,
    /// `kept`, `started`, `restarting` (a new generation is initializing), `stopped`.
    pub action: &'static str,
    /// Generation of the instance that is starting, for `started` and `restarting`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// A plugin that was found but is not run.
#[derive(Clone, Debug)]
pub struct Inactive {
    /// Plugin id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Version.
    pub version: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Directory.
    pub dir: std::path::PathBuf,
    /// `load-path` or `state-dir`.
    pub origin: &'static str,
    /// Why it does not run.
    pub reason: String,
    /// True when that is an error (invalid config), false when it is switched off.
    pub error: bool,
}

struct State {
    published: BTreeMap<String, Arc<Slot>>,
    pending: BTreeMap<String, Arc<Slot>>,
    /// Instances being stopped (listed from before the table without them is published).
    retiring: Vec<Arc<Slot>>,
    /// Their stop tasks.
    retire_tasks: Vec<JoinHandle<()>>,
    inactive: Vec<Inactive>,
    problems: Vec<Problem>,
    generation: u64,
    table_generation: u64,
    shut_down: bool,
}

/// Shared by the host handle and the instances' managers.
pub struct Shared {
    sup: Supervisor,
    services: Arc<dyn Services>,
    version: String,
    roots: Roots,
    enabled: bool,
    table: ArcSwap<MethodTable>,
    state: Mutex<State>,
    changed: tokio::sync::watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The plugin host. Cheap to clone.
#[derive(Clone)]
pub struct PluginHost {
    shared: Arc<Shared>,
}

impl PluginHost {
    /// A host with no plugins yet; the table holds the core methods. `enabled: false` (the
    /// CLI's in-process fallback, benchmarks) never starts a plugin.
    pub fn new(sup: Supervisor, services: Arc<dyn Services>, version: String, roots: Roots, enabled: bool) -> Self {
        PluginHost {
            shared: Arc::new(Shared {
                sup,
                services,
                version,
                roots,
                enabled,
                table: ArcSwap::from_pointee(MethodTable::core(1)),
                state: Mutex::new(State {
                    published: BTreeMap::new(),
                    pending: BTreeMap::new(),
                    retiring: Vec::new(),
                    retire_tasks: Vec::new(),
                    inactive: Vec::new(),
                    problems: Vec::new(),
                    generation: 0,
                    table_generation: 1,
                    shut_down: false,
                }),
                changed: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    /// The current method table (core + plugin methods), read at dispatch time.
    pub fn table(&self) -> Arc<MethodTable> {
        self.shared.table.load_full()
    }

    /// Bring the plugins in line with `cfg` (a new plugin generation): start added and
    /// changed plugins, stop removed ones, keep unchanged ones. Returns at once; instances
    /// initialize in the background.
    pub fn apply(&self, cfg: &PluginsConfig) -> Vec<PluginChange> {
        if !self.shared.enabled {
            return Vec::new();
        }
        let discovery = discover(&self.shared.roots, cfg);
        let mut st = lock(&self.shared.state);
        if st.shut_down {
            return Vec::new();
        }
        st.generation += 1;
        let generation = st.generation;
        let mut desired: BTreeMap<String, SlotSpec> = BTreeMap::new();
        let mut inactive = Vec::new();
        for f in discovery.found {
            let m = &f.manifest;
            let info = |reason: String, error: bool| Inactive {
                id: m.id.clone(),
                name: m.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| m.id.clone()),
                version: m.version.clone(),
                description: m.description.clone(),
                dir: f.dir.clone(),
                origin: f.origin.as_str(),
                reason,
                error,
            };
            if let Some(reason) = disabled_reason(cfg, &m.id) {
                inactive.push(info(reason, false));
                continue;
            }
            let config = plugin_config(cfg, &m.id);
            let errors = check_config(&f, &config);
            if !errors.is_empty() {
                let msg = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
                inactive.push(info(format!("invalid config: {msg}"), true));
                continue;
            }
            let (invoke_timeout, initialize_timeout) = timeouts(cfg, &m.id);
            desired.insert(m.id.clone(), SlotSpec { found: f, config, invoke_timeout, initialize_timeout });
        }
        let mut changes = Vec::new();
        let mut retire = Vec::new();
        let mut start = Vec::new();
        let gone: Vec<String> =
            st.published.keys().chain(st.pending.keys()).filter(|id| !desired.contains_key(*id)).cloned().collect();
        for id in gone {
            let a = st.published.remove(&id);
            let b = st.pending.remove(&id);
            if a.is_some() {
                changes.push(PluginChange { id: id.clone(), action: "stopped", generation: None });
            }
            retire.extend(a.into_iter().chain(b));
        }
        for (id, spec) in desired {
            let fp = spec.fingerprint();
            let published_same = st.published.get(&id).is_some_and(|s| s.fingerprint() == fp);
            let pending_same = st.pending.get(&id).is_some_and(|s| s.fingerprint() == fp);
            if published_same {
                // Changed and changed back before the replacement was ready.
                retire.extend(st.pending.remove(&id));
                changes.push(PluginChange { id, action: "kept", generation: None });
            } else if pending_same {
                changes.push(PluginChange { id, action: "kept", generation: None });
            } else if st.published.contains_key(&id) {
                retire.extend(st.pending.remove(&id));
                let slot = Slot::new(spec, generation);
                st.pending.insert(id.clone(), slot.clone());
                start.push(slot);
                changes.push(PluginChange { id, action: "restarting", generation: Some(generation) });
            } else {
                let slot = Slot::new(spec, generation);
                st.published.insert(id.clone(), slot.clone());
                start.push(slot);
                changes.push(PluginChange { id, action: "started", generation: Some(generation) });
            }
        }
        st.inactive = inactive;
        st.problems = discovery.problems;
        for p in &st.problems {
            tracing::warn!(path = %p.path.display(), "plugin problem: {}", p.message);
        }
        for i in st.inactive.iter().filter(|i| i.error) {
            tracing::error!(plugin = %i.id, "plugin not started: {}", i.reason);
        }
        st.retiring.extend(retire.iter().cloned());
        self.shared.publish(&mut st);
        // Only now, with the table that no longer names them published, are they stopped.
        for s in retire {
            self.shared.spawn_retire(&mut st, s);
        }
        drop(st);
        let ctx = self.shared.manager_context();
        for s in start {
            s.start(ctx.clone());
        }
        for c in changes.iter().filter(|c| c.action != "kept") {
            tracing::info!(plugin = %c.id, action = c.action, generation = ?c.generation, "plugin reloaded");
        }
        changes
    }

    /// Wait until every plugin in `ids` has finished its first attempt (ready or failed), at
    /// most `limit`. Returns whether all did.
    pub async fn wait_settled(&self, ids: &[String], limit: Duration) -> bool {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let unsettled = {
                let st = lock(&self.shared.state);
                ids.iter().any(|id| {
                    st.published.get(id).is_some_and(|s| !s.first_attempt_done() && s.state() == SlotState::Starting)
                })
            };
            if !unsettled {
                return true;
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return false;
            }
        }
    }

    /// Ids of the plugins whose published instance is ready.
    pub fn ready_ids(&self) -> Vec<String> {
        let st = lock(&self.shared.state);
        st.published.iter().filter(|(_, s)| s.state() == SlotState::Ready).map(|(id, _)| id.clone()).collect()
    }

    /// Stop every instance (calls in flight get [`SHUTDOWN_DRAIN`], also on instances that
    /// were already retiring) and wait for them. The table is left as it is.
    pub async fn shutdown(&self) {
        let (slots, retiring) = {
            let mut st = lock(&self.shared.state);
            st.shut_down = true;
            let slots: Vec<Arc<Slot>> = st.published.values().chain(st.pending.values()).cloned().collect();
            for s in &st.retiring {
                s.hurry();
            }
            (slots, std::mem::take(&mut st.retire_tasks))
        };
        futures_util::future::join_all(slots.iter().map(|s| s.stop(SHUTDOWN_DRAIN))).await;
        for h in retiring {
            let _ = h.await;
        }
    }
}

impl Shared {
    fn manager_context(self: &Arc<Self>) -> ManagerContext {
        ManagerContext {
            sup: self.sup.clone(),
            services: self.services.clone(),
            version: self.version.clone(),
            host: Arc::downgrade(self),
        }
    }

    /// Build and publish a new table from the state (under the state lock).
    fn publish(&self, st: &mut State) {
        st.table_generation += 1;
        let view = PluginsView {
            generation: st.generation,
            published: st.published.clone(),
            pending: st.pending.clone(),
            retiring: st.retiring.clone(),
            inactive: st.inactive.clone(),
            problems: st.problems.clone(),
        };
        let (table, clashes) = MethodTable::compose(st.table_generation, Arc::new(view));
        for (plugin, method, owner) in clashes {
            tracing::error!(plugin = %plugin, method = %method, "method {method} of plugin {plugin} collides with {owner}; not registered");
        }
        self.table.store(Arc::new(table));
        self.changed.send_modify(|n| *n += 1);
    }

    /// Stop `slot` (already in `st.retiring`, and no longer in the published table) in the
    /// background, letting its calls in flight finish within its invoke timeout.
    fn spawn_retire(self: &Arc<Self>, st: &mut State, slot: Arc<Slot>) {
        let drain = slot.spec().invoke_timeout;
        let shared = Arc::downgrade(self);
        let h = self.sup.spawn("plugin-retire", async move {
            slot.stop(drain).await;
            if let Some(shared) = shared.upgrade() {
                let mut st = lock(&shared.state);
                st.retiring.retain(|s| !Arc::ptr_eq(s, &slot));
                if !st.shut_down {
                    shared.publish(&mut st);
                }
            }
        });
        st.retire_tasks.retain(|h| !h.is_finished());
        st.retire_tasks.push(h);
    }

    /// A manager reports: promote a ready (or failed) replacement, republish a ready
    /// instance's methods, or just wake status waiters.
    pub(crate) fn on_slot_event(self: &Arc<Self>, slot: &Arc<Slot>, ev: SlotEvent) {
        let mut st = lock(&self.state);
        let id = slot.id().to_string();
        let is_pending = st.pending.get(&id).is_some_and(|s| Arc::ptr_eq(s, slot));
        let is_published = st.published.get(&id).is_some_and(|s| Arc::ptr_eq(s, slot));
        if st.shut_down {
            drop(st);
            self.changed.send_modify(|n| *n += 1);
            return;
        }
        match ev {
            SlotEvent::Ready | SlotEvent::FirstFailure if is_pending => {
                st.pending.remove(&id);
                let old = st.published.insert(id.clone(), slot.clone());
                if let (SlotEvent::FirstFailure, Some(old)) = (ev, &old) {
                    // Keep the method names registered: they answer UNAVAILABLE while the
                    // new instance retries, rather than vanishing.
                    slot.inherit(old);
                }
                st.retiring.extend(old.clone());
                self.publish(&mut st);
                if let Some(old) = old {
                    tracing::info!(plugin = %id, old = old.generation(), new = slot.generation(), "plugin generation published; retiring the old one");
                    self.spawn_retire(&mut st, old);
                }
            }
            SlotEvent::Ready if is_published => self.publish(&mut st),
            _ => {
                drop(st);
                self.changed.send_modify(|n| *n += 1);
            }
        }
    }
}
