//! The management plane: apps, keys and API tokens changed at runtime, persisted in an
//! embedded store, applied to every core by swapping the engine's apps table.
//!
//! ```text
//!  HTTP /api/... (engine core or api thread)          ringcast-mgmt thread (owns the store)
//!    token check: lock-free load of the token list      job: validate the whole new app set
//!    -> Job over a channel, await a oneshot  ───────►        -> SQLite write (durable)
//!                                                            -> EngineHandle::set_apps (swap +
//!                                                               close broadcast)
//!                                                            -> ChangeListener
//!                                                            -> replication record to the
//!                                                               cluster bridge (if clustered)
//!    answer 2xx  ◄───────────────────────────────────────  reply
//! ```
//!
//! In a cluster every write is also a versioned record the bridge publishes; the other nodes
//! apply it through [`Management::apply_replicated`] (last writer wins, `replication.rs`).
//!
//! A core never touches SQLite and never waits on a lock: it only sends a job and awaits the
//! reply like any other I/O. Apps from the config file and apps from the store live side by
//! side; where their ids or keys meet, the config file wins (docs/management.md).

pub mod api;
pub mod dashboard;
pub mod error;
pub mod model;
pub mod replication;
pub mod store;
pub mod token;
pub mod usage;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_channel::oneshot;
use ringcast_engine::{validate_apps, AppConfig, EngineHandle};

use self::error::MgmtError;
use self::model::ManagedApp;
use self::replication::{Hlc, Kind, Record, Version};
use self::store::{Store, StoreError, Write};
use self::token::{Scope, TokenRecord};
use self::usage::Usage;
use crate::api::Clock;

/// Where the management plane keeps its state, and the bootstrap token.
#[derive(Debug, Clone)]
pub struct ManagementConfig {
    pub data_dir: PathBuf,
    /// The first admin token (`rc_` + 64 hex digits) from the config file or
    /// `RINGCAST_ADMIN_TOKEN`. Kept in memory only (hashed); it has every scope.
    pub admin_token: Option<String>,
}

/// What changed, for the [`ChangeListener`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    AppUpserted { id: String },
    AppDeleted { id: String },
    TokensChanged,
    ConfigReloaded,
}

/// Told about every applied change, after it is durable and live on this node. This is the
/// seam for a cluster: a broker-backed listener publishes the change and the other nodes call
/// [`Management::resync`] (docs/management.md, "In a cluster").
pub trait ChangeListener: Send + Sync + 'static {
    fn changed(&self, change: &Change, apps_version: u64);
}

type Job = Box<dyn FnOnce(&mut State) + Send>;
type ApiCalls = Box<dyn Fn() -> Vec<u64> + Send + Sync>;
type Replicate = Box<dyn Fn(Vec<u8>) + Send + Sync>;
/// Where a snapshot's encoded parts go.
pub type SnapshotReply = Box<dyn FnOnce(Vec<Vec<u8>>) + Send>;

/// The state owned by the management thread.
pub(crate) struct State {
    store: Store,
    apps: BTreeMap<String, ManagedApp>,
    config_apps: Vec<AppConfig>,
    tokens: Vec<TokenRecord>,
    /// The in-memory bootstrap token (not stored), if one was given.
    bootstrap: Option<TokenRecord>,
    /// The version of every app and token record this node holds, and tombstones (`true`).
    versions: HashMap<(Kind, String), (Version, bool)>,
    hlc: Hlc,
    shared: Arc<Inner>,
}

pub(crate) struct Inner {
    engine: EngineHandle,
    /// Token records (hashes): read lock-free by every request.
    tokens: ArcSwap<Vec<TokenRecord>>,
    listener: OnceLock<Arc<dyn ChangeListener>>,
    webhooks: OnceLock<Arc<crate::webhook::Webhooks>>,
    /// REST requests per app index (the API's counters), for usage.
    api_calls: OnceLock<ApiCalls>,
    pub(crate) usage: Mutex<Usage>,
    clock: Clock,
    /// This node's id in the cluster (versions name it); empty when not clustered.
    node_id: OnceLock<String>,
    /// Publishes an encoded record batch to the other nodes (the cluster bridge).
    replicate: OnceLock<Replicate>,
}

/// The management service. Cheap to share (`Arc`).
pub struct Management {
    inner: Arc<Inner>,
    /// Jobs for the management thread; taken out (no lock) at shutdown.
    tx: arc_swap::ArcSwapOption<mpsc::Sender<Job>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    store_path: PathBuf,
}

/// The outcome of [`Management::start`].
pub struct Started {
    pub management: Arc<Management>,
    /// A token generated at first start: print it once, it is stored only hashed.
    pub generated_admin_token: Option<String>,
}

impl Management {
    /// Opens the store (a corrupt or unreadable one is an error), sets up the bootstrap token,
    /// publishes the stored apps next to the config apps, and starts the management thread.
    /// Runs on the caller's thread (start-up, never an engine core).
    pub fn start(
        engine: EngineHandle,
        config: ManagementConfig,
        clock: Clock,
    ) -> Result<Started, StoreError> {
        let (store, contents) = Store::open(&config.data_dir)?;
        let store_path = store.path().to_owned();
        let now = clock();
        let config_apps: Vec<AppConfig> = engine
            .apps()
            .into_iter()
            .map(|(_, a)| (*a).clone())
            .collect();
        let bootstrap = match &config.admin_token {
            Some(t) => Some(
                token::record_for(
                    t,
                    "bootstrap (config or RINGCAST_ADMIN_TOKEN)".into(),
                    Scope::ALL.to_vec(),
                    None,
                    None,
                    now,
                )
                .ok_or_else(|| {
                    StoreError(
                        "the admin token must be rc_ followed by 64 hex digits (generate one \
                         with: echo rc_$(openssl rand -hex 32))"
                            .into(),
                    )
                })?,
            ),
            None => None,
        };
        let mut hlc = Hlc::default();
        let mut versions = HashMap::new();
        for (kind, id, v, deleted) in contents.versions {
            hlc.observe(v.clock);
            versions.insert((kind, id), (v, deleted));
        }
        let mut tokens = contents.tokens;
        let mut generated = None;
        if bootstrap.is_none() && tokens.is_empty() {
            let t = token::generate(
                "admin (generated at first start)".into(),
                Scope::ALL.to_vec(),
                None,
                None,
                now,
            )
            .map_err(|e| StoreError(e.message))?;
            let v = Version {
                clock: hlc.next(now.saturating_mul(1000)),
                node: String::new(),
            };
            store.write(&[(Write::PutToken(&t.record), &v)])?;
            versions.insert((Kind::Token, t.record.id.clone()), (v, false));
            tokens.push(t.record);
            generated = Some(t.token);
        }
        let inner = Arc::new(Inner {
            engine,
            tokens: ArcSwap::from_pointee(Vec::new()),
            listener: OnceLock::new(),
            webhooks: OnceLock::new(),
            api_calls: OnceLock::new(),
            usage: Mutex::new(Usage::load(contents.usage)),
            clock,
            node_id: OnceLock::new(),
            replicate: OnceLock::new(),
        });
        let mut state = State {
            store,
            apps: contents
                .apps
                .into_iter()
                .map(|a| (a.id.clone(), a))
                .collect(),
            config_apps,
            tokens,
            bootstrap,
            versions,
            hlc,
            shared: inner.clone(),
        };
        state.publish_tokens();
        state
            .publish(None)
            .map_err(|e| StoreError(format!("stored apps cannot be applied: {}", e.message)))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("ringcast-mgmt".into())
            .spawn(move || run(state, rx))
            .map_err(|e| StoreError(format!("cannot start the management thread: {e}")))?;
        Ok(Started {
            management: Arc::new(Management {
                inner,
                tx: arc_swap::ArcSwapOption::from_pointee(tx),
                thread: Mutex::new(Some(thread)),
                store_path,
            }),
            generated_admin_token: generated,
        })
    }

    pub fn store_path(&self) -> &std::path::Path {
        &self.store_path
    }

    /// Installs the change listener (the cluster seam). Once.
    pub fn set_listener(&self, l: Arc<dyn ChangeListener>) {
        let _ = self.inner.listener.set(l);
    }

    /// Joins a cluster: `node_id` names this node in record versions, and `publish` hands
    /// each local change (an encoded record batch) to the cluster bridge. Once, before the
    /// API serves.
    pub fn attach_cluster(
        &self,
        node_id: String,
        publish: impl Fn(Vec<u8>) + Send + Sync + 'static,
    ) {
        let _ = self.inner.node_id.set(node_id);
        let _ = self.inner.replicate.set(Box::new(publish));
    }

    /// Records another node published: applied on the management thread (this returns at
    /// once; the bridge thread never waits).
    pub fn apply_replicated(&self, from: String, records: Vec<u8>) {
        self.submit(move |st| st.apply_replicated(&from, &records));
    }

    /// This node's whole management state (every app and token record with its version,
    /// tombstones included) in encoded parts of about `max_bytes`; `reply` runs on the
    /// management thread. Returns at once.
    pub fn replication_snapshot(&self, max_bytes: usize, reply: SnapshotReply) {
        self.submit(move |st| reply(st.replication_snapshot(max_bytes)));
    }

    /// Queues `f` for the management thread without waiting; false when stopped.
    fn submit(&self, f: impl FnOnce(&mut State) + Send + 'static) -> bool {
        match &*self.tx.load() {
            Some(tx) => tx.send(Box::new(f)).is_ok(),
            None => false,
        }
    }

    /// Lets the management plane keep webhook signing secrets current and start the senders
    /// of its apps' webhook targets (now, for the stored apps, and on every change).
    pub fn attach_webhooks(&self, w: Arc<crate::webhook::Webhooks>) {
        if self.inner.webhooks.set(w).is_ok() {
            let _ = self.call_blocking(|st| {
                let engine = st.shared.engine.clone();
                let all: Vec<AppConfig> = engine
                    .apps()
                    .into_iter()
                    .map(|(_, a)| (*a).clone())
                    .collect();
                st.sync_webhooks(&all);
            });
        }
    }

    /// Where usage finds the API's per-app request counters (indexed by app index).
    pub fn set_api_calls_source(&self, f: impl Fn() -> Vec<u64> + Send + Sync + 'static) {
        let _ = self.inner.api_calls.set(Box::new(f));
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    pub(crate) fn engine(&self) -> &EngineHandle {
        &self.inner.engine
    }

    pub(crate) fn now(&self) -> u64 {
        (self.inner.clock)()
    }

    /// Verifies a Bearer `rc_` token (lock-free; runs on any thread).
    pub(crate) fn verify(&self, token: &str) -> Result<TokenRecord, MgmtError> {
        let list = self.inner.tokens.load();
        token::verify(&list, token, self.now()).cloned()
    }

    /// Runs `f` on the management thread and awaits its answer.
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> T + Send + 'static,
    ) -> Result<T, MgmtError> {
        let (reply, rx) = oneshot::channel();
        if !self.submit(move |st| {
            let _ = reply.send(f(st));
        }) {
            return Err(stopped());
        }
        rx.await.map_err(|_| stopped())
    }

    /// Runs `f` on the management thread and waits (blocking: for the signal thread).
    pub(crate) fn call_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> T + Send + 'static,
    ) -> Result<T, MgmtError> {
        let (reply, rx) = mpsc::channel();
        if !self.submit(move |st| {
            let _ = reply.send(f(st));
        }) {
            return Err(stopped());
        }
        rx.recv().map_err(|_| stopped())
    }

    /// SIGHUP: replaces the config-file apps (already parsed and resolved by the caller) and
    /// re-applies everything. On error nothing changes.
    pub fn reload_config_apps(&self, apps: Vec<AppConfig>) -> Result<u64, MgmtError> {
        self.call_blocking(move |st| {
            let old = std::mem::replace(&mut st.config_apps, apps);
            match st.publish(Some(Change::ConfigReloaded)) {
                Ok(v) => Ok(v),
                Err(e) => {
                    st.config_apps = old;
                    Err(e)
                }
            }
        })?
    }

    /// Re-reads the store and re-applies it (what a cluster peer does on a change notice).
    pub fn resync(&self) -> Result<u64, MgmtError> {
        self.call_blocking(|st| st.resync())?
    }

    /// Stops the management thread (pending jobs finish first).
    pub fn shutdown(&self) {
        self.tx.store(None);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

fn run(mut state: State, rx: mpsc::Receiver<Job>) {
    let flush_every = Duration::from_secs(usage::FLUSH_SECS);
    let mut flushed = std::time::Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(job) => job(&mut state),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        state.sample_usage();
        if flushed.elapsed() >= flush_every {
            state.flush_usage();
            flushed = std::time::Instant::now();
        }
    }
    // Shutdown: the last second's counts, then everything not yet written.
    state.sample_usage();
    state.flush_usage();
}

impl State {
    pub(crate) fn now(&self) -> u64 {
        (self.shared.clock)()
    }

    pub(crate) fn app(&self, id: &str) -> Option<&ManagedApp> {
        self.apps.get(id)
    }

    pub(crate) fn is_config_app(&self, id: &str) -> bool {
        self.config_apps.iter().any(|a| a.id == id)
    }

    pub(crate) fn managed_apps(&self) -> impl Iterator<Item = &ManagedApp> {
        self.apps.values()
    }

    pub(crate) fn tokens(&self) -> &[TokenRecord] {
        &self.tokens
    }

    /// The full app set: config apps, then stored apps whose id and keys do not meet a config
    /// app (the config file wins; the hidden ones are logged).
    fn desired(
        &self,
        candidate: &BTreeMap<String, ManagedApp>,
    ) -> Result<Vec<AppConfig>, MgmtError> {
        let mut all = self.config_apps.clone();
        for a in candidate.values() {
            let cfg = a.to_config()?;
            let clash = self.config_apps.iter().any(|c| {
                c.id == cfg.id || cfg.credentials().any(|(k, _)| c.secrets_for(k).is_some())
            });
            if clash {
                tracing::warn!(app = %a.id, "stored app hidden: the config file has an app with its id or key");
                continue;
            }
            all.push(cfg);
        }
        Ok(all)
    }

    /// Applies `self.apps` + the config apps to the engine, then tells the listener.
    fn publish(&mut self, change: Option<Change>) -> Result<u64, MgmtError> {
        let all = self.desired(&self.apps)?;
        let update = self
            .shared
            .engine
            .set_apps(all.clone())
            .map_err(|e| MgmtError::conflict(e.0))?;
        self.sync_webhooks(&all);
        if let (Some(c), Some(l)) = (change, self.shared.listener.get()) {
            l.changed(&c, update.version);
        }
        Ok(update.version)
    }

    /// Validates, stores (durably) and applies a new or changed app. Nothing is applied when
    /// any step before the store write fails.
    pub(crate) fn upsert_app(&mut self, app: ManagedApp) -> Result<u64, MgmtError> {
        let mut candidate = self.apps.clone();
        candidate.insert(app.id.clone(), app.clone());
        let all = self.desired(&candidate)?;
        validate_apps(&all).map_err(|e| MgmtError::conflict(e.0))?;
        let v = self.next_version();
        self.store
            .write(&[(Write::PutApp(&app), &v)])
            .map_err(MgmtError::store)?;
        let id = app.id.clone();
        self.versions
            .insert((Kind::App, id.clone()), (v.clone(), false));
        self.apps = candidate;
        let applied = self.publish(Some(Change::AppUpserted { id: id.clone() }));
        self.replicate(Record {
            kind: Kind::App,
            id,
            version: v,
            app: Some(app),
            token: None,
        });
        applied
    }

    pub(crate) fn delete_app(&mut self, id: &str) -> Result<u64, MgmtError> {
        if !self.apps.contains_key(id) {
            return Err(MgmtError::not_found(format!("no app {id:?} in the store")));
        }
        let v = self.next_version();
        self.store
            .write(&[(Write::DeleteApp(id), &v)])
            .map_err(MgmtError::store)?;
        self.versions
            .insert((Kind::App, id.to_owned()), (v.clone(), true));
        self.apps.remove(id);
        let applied = self.publish(Some(Change::AppDeleted { id: id.into() }));
        self.replicate(Record {
            kind: Kind::App,
            id: id.to_owned(),
            version: v,
            app: None,
            token: None,
        });
        applied
    }

    pub(crate) fn add_token(&mut self, t: TokenRecord) -> Result<(), MgmtError> {
        let v = self.next_version();
        self.store
            .write(&[(Write::PutToken(&t), &v)])
            .map_err(MgmtError::store)?;
        self.versions
            .insert((Kind::Token, t.id.clone()), (v.clone(), false));
        self.tokens.push(t.clone());
        self.publish_tokens();
        self.notify(Change::TokensChanged);
        self.replicate(Record {
            kind: Kind::Token,
            id: t.id.clone(),
            version: v,
            app: None,
            token: Some(t),
        });
        Ok(())
    }

    pub(crate) fn revoke_token(&mut self, id: &str) -> Result<(), MgmtError> {
        if !self.tokens.iter().any(|t| t.id == id) {
            return Err(MgmtError::not_found(format!("no token {id:?}")));
        }
        let v = self.next_version();
        self.store
            .write(&[(Write::DeleteToken(id), &v)])
            .map_err(MgmtError::store)?;
        self.versions
            .insert((Kind::Token, id.to_owned()), (v.clone(), true));
        self.tokens.retain(|t| t.id != id);
        self.publish_tokens();
        self.notify(Change::TokensChanged);
        self.replicate(Record {
            kind: Kind::Token,
            id: id.to_owned(),
            version: v,
            app: None,
            token: None,
        });
        Ok(())
    }

    /// The version of a new local write.
    fn next_version(&mut self) -> Version {
        Version {
            clock: self.hlc.next(self.now().saturating_mul(1000)),
            node: self.shared.node_id.get().cloned().unwrap_or_default(),
        }
    }

    /// Hands a local change to the cluster bridge (nothing when not clustered).
    fn replicate(&self, r: Record) {
        if let Some(publish) = self.shared.replicate.get() {
            publish(replication::encode(&[r]));
        }
    }

    /// Applies records from another node: each one only if its version beats the one held
    /// here (last writer wins; equal or older ones are repeats or lost races). What wins is
    /// written to the store in one transaction, then the apps table is swapped once (which
    /// closes the connections of revoked keys and deleted or disabled apps here too) and the
    /// token list replaced. A record this node cannot apply (its app would clash with another
    /// stored app's key) is logged and left out, its version not taken, so a later snapshot
    /// retries it.
    fn apply_replicated(&mut self, from: &str, bytes: &[u8]) {
        let records = match replication::decode(bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(node = %from, "management: ignored replicated records: {e}");
                return;
            }
        };
        let mut winners = Vec::new();
        for r in records {
            self.hlc.observe(r.version.clock);
            let newer = self
                .versions
                .get(&(r.kind, r.id.clone()))
                .is_none_or(|(held, _)| r.version > *held);
            if newer {
                winners.push(r);
            }
        }
        if winners.is_empty() {
            return;
        }
        // The app set after the winners; a winner that makes it invalid is left out.
        let with = |apps: &mut BTreeMap<String, ManagedApp>, r: &Record| match (&r.kind, &r.app) {
            (Kind::App, Some(a)) => {
                apps.insert(a.id.clone(), a.clone());
            }
            (Kind::App, None) => {
                apps.remove(&r.id);
            }
            _ => {}
        };
        let valid = |st: &State, apps: &BTreeMap<String, ManagedApp>| {
            st.desired(apps)
                .and_then(|all| validate_apps(&all).map_err(|e| MgmtError::conflict(e.0)))
        };
        let mut candidate = self.apps.clone();
        for r in &winners {
            with(&mut candidate, r);
        }
        if valid(self, &candidate).is_err() {
            candidate = self.apps.clone();
            winners.retain(|r| {
                let mut next = candidate.clone();
                with(&mut next, r);
                match valid(self, &next) {
                    Ok(_) => {
                        candidate = next;
                        true
                    }
                    Err(e) => {
                        tracing::warn!(node = %from, id = %r.id, "management: a replicated app cannot be applied here: {e}");
                        false
                    }
                }
            });
        }
        let writes: Vec<(Write<'_>, &Version)> = winners
            .iter()
            .map(|r| {
                let w = match (r.kind, &r.app, &r.token) {
                    (Kind::App, Some(a), _) => Write::PutApp(a),
                    (Kind::App, None, _) => Write::DeleteApp(&r.id),
                    (Kind::Token, _, Some(t)) => Write::PutToken(t),
                    (Kind::Token, _, None) => Write::DeleteToken(&r.id),
                };
                (w, &r.version)
            })
            .collect();
        if let Err(e) = self.store.write(&writes) {
            // Nothing applied: a later snapshot exchange retries.
            tracing::error!(node = %from, "management: cannot store replicated records: {e}");
            return;
        }
        let mut apps_changed = false;
        let mut tokens_changed = false;
        for r in winners {
            let deleted = r.is_tombstone();
            match r.kind {
                Kind::App => apps_changed = true,
                Kind::Token => {
                    tokens_changed = true;
                    self.tokens.retain(|t| t.id != r.id);
                    if let Some(t) = r.token {
                        self.tokens.push(t);
                    }
                }
            }
            self.versions.insert((r.kind, r.id), (r.version, deleted));
        }
        if apps_changed {
            self.apps = candidate;
            if let Err(e) = self.publish(None) {
                tracing::error!(node = %from, "management: replicated apps cannot be applied: {e}");
            }
        }
        if tokens_changed {
            self.publish_tokens();
        }
    }

    /// Every record this node holds, with its version, tombstones included, encoded in parts.
    fn replication_snapshot(&self, max_bytes: usize) -> Vec<Vec<u8>> {
        let version = |k: Kind, id: &str| {
            self.versions
                .get(&(k, id.to_owned()))
                .map(|(v, _)| v.clone())
                .unwrap_or_default()
        };
        let mut records: Vec<Record> = Vec::new();
        for a in self.apps.values() {
            records.push(Record {
                kind: Kind::App,
                id: a.id.clone(),
                version: version(Kind::App, &a.id),
                app: Some(a.clone()),
                token: None,
            });
        }
        for t in &self.tokens {
            records.push(Record {
                kind: Kind::Token,
                id: t.id.clone(),
                version: version(Kind::Token, &t.id),
                app: None,
                token: Some(t.clone()),
            });
        }
        for ((kind, id), (v, deleted)) in &self.versions {
            if *deleted {
                records.push(Record {
                    kind: *kind,
                    id: id.clone(),
                    version: v.clone(),
                    app: None,
                    token: None,
                });
            }
        }
        replication::encode_parts(&records, max_bytes)
    }

    /// The webhook senders follow the served apps: signing secrets of every app, and the
    /// targets of the API's apps (the config file's targets are fixed at start).
    pub(crate) fn sync_webhooks(&self, all: &[AppConfig]) {
        if let Some(w) = self.shared.webhooks.get() {
            w.update_signing(all);
            let managed: Vec<AppConfig> = all
                .iter()
                .filter(|a| self.apps.contains_key(&a.id) && !self.is_config_app(&a.id))
                .cloned()
                .collect();
            w.sync_managed(&managed);
        }
    }

    fn notify(&self, c: Change) {
        if let Some(l) = self.shared.listener.get() {
            l.changed(&c, self.shared.engine.apps_version());
        }
    }

    fn publish_tokens(&self) {
        let mut all = self.tokens.clone();
        all.extend(self.bootstrap.clone());
        self.shared.tokens.store(Arc::new(all));
    }

    fn resync(&mut self) -> Result<u64, MgmtError> {
        let dir = self
            .store
            .path()
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
        let (store, contents) = Store::open(&dir).map_err(MgmtError::store)?;
        self.store = store;
        self.apps = contents
            .apps
            .into_iter()
            .map(|a| (a.id.clone(), a))
            .collect();
        self.tokens = contents.tokens;
        self.versions = contents
            .versions
            .into_iter()
            .map(|(k, id, v, deleted)| {
                self.hlc.observe(v.clock);
                ((k, id), (v, deleted))
            })
            .collect();
        self.publish_tokens();
        self.publish(None)
    }

    /// Writes the usage rows that changed since the last flush (on failure they stay marked
    /// and the next flush retries).
    fn flush_usage(&self) {
        let oldest = usage::day_of(self.now()).saturating_sub(usage::DAYS_KEPT as u64);
        let rows = self
            .shared
            .usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_dirty();
        if let Err(e) = self.store.put_usage(&rows, oldest) {
            tracing::warn!("management: cannot write usage: {e}");
            self.shared
                .usage
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .mark_dirty(&rows);
        }
    }

    fn sample_usage(&self) {
        let day = usage::day_of(self.now());
        let api_calls = self.shared.api_calls.get().map(|f| f()).unwrap_or_default();
        let hooks = self
            .shared
            .webhooks
            .get()
            .map(|w| w.per_app_outcomes())
            .unwrap_or_default();
        let mut u = self.shared.usage.lock().unwrap_or_else(|e| e.into_inner());
        for a in self.shared.engine.app_usage() {
            u.sample_connections(&a.id, day, a.connections);
            let (delivered, failed) = hooks
                .iter()
                .find(|(id, _, _)| *id == a.id)
                .map_or((0, 0), |(_, d, f)| (*d, *f));
            u.sample_counters(
                &a.id,
                day,
                usage::Counters {
                    api_calls: api_calls.get(a.idx as usize).copied().unwrap_or(0),
                    messages_in: a.messages_in,
                    messages_out: a.messages_out,
                    webhook_deliveries: delivered,
                    webhook_failures: failed,
                },
            );
        }
    }
}

impl Drop for Management {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Defaults of the `[management]` table.
pub mod defaults {
    /// Where the store lives when neither `--data-dir` nor `[management] data_dir` is given:
    /// relative to the working directory.
    pub const DATA_DIR: &str = "ringcast-data";
    /// The environment variable that may hold the bootstrap admin token.
    pub const ADMIN_TOKEN_ENV: &str = "RINGCAST_ADMIN_TOKEN";
}

/// The `[management]` table as read.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManagementConfig {
    /// false: no `/api`, no `/dashboard`, no store.
    pub enabled: Option<bool>,
    pub data_dir: Option<PathBuf>,
    pub admin_token: Option<String>,
}

impl RawManagementConfig {
    pub fn from_table(t: Option<toml::Table>) -> Result<RawManagementConfig, String> {
        match t {
            None => Ok(RawManagementConfig::default()),
            Some(t) => t
                .try_into()
                .map_err(|e| format!("invalid [management] table: {e}")),
        }
    }

    /// Resolves with the command line (`--data-dir`) and the environment
    /// (`RINGCAST_ADMIN_TOKEN`) taking precedence. `None` when management is disabled.
    pub fn resolve(
        self,
        cli_data_dir: Option<PathBuf>,
        env_token: Option<String>,
    ) -> Option<ManagementConfig> {
        if self.enabled == Some(false) {
            return None;
        }
        Some(ManagementConfig {
            data_dir: cli_data_dir
                .or(self.data_dir)
                .unwrap_or_else(|| PathBuf::from(defaults::DATA_DIR)),
            admin_token: env_token.filter(|t| !t.is_empty()).or(self.admin_token),
        })
    }
}

/// The answer once the management thread has ended.
fn stopped() -> MgmtError {
    MgmtError::new(503, "stopped", "the management plane is stopped")
}
