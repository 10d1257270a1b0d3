//! The management API over real HTTP on loopback: every endpoint and scope, revocation taking
//! effect at once, persistence across a restart, concurrent updates, bad input. The server is
//! an in-process engine + control plane + management plane on a temp data dir.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use ringcast_control_plane::mgmt::{Management, ManagementConfig};
use ringcast_control_plane::{ApiConfig, ControlPlane};
use ringcast_engine::{Engine, HttpService, RawConfig, RunningEngine};
use serde_json::{json, Value};

const ADMIN: &str = "rc_00000000000000aa0000000000000000000000000000000000000000000000aa";

struct Mgmt {
    running: Option<RunningEngine>,
    addr: std::net::SocketAddr,
    mgmt: Arc<Management>,
    clock: Arc<AtomicU64>,
    dir: PathBuf,
}

/// A temp data dir, removed when the test ends.
struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for TmpDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

fn tmp_dir(name: &str) -> TmpDir {
    let d = std::env::temp_dir().join(format!(
        "ringcast-mgmt-{name}-{}-{}",
        std::process::id(),
        now()
    ));
    let _ = std::fs::remove_dir_all(&d);
    TmpDir(d)
}

impl Mgmt {
    fn start(dir: &Path) -> Mgmt {
        let mut raw = RawConfig::from_toml(TWO_APPS).unwrap();
        raw.listen = Some("127.0.0.1:0".into());
        raw.workers = Some(2);
        let config = raw.resolve(2).unwrap();
        let webhooks = ringcast_control_plane::webhook::Webhooks::start(&config.apps);
        let engine = Engine::bind(config, Some(webhooks.observer())).expect("bind");
        let addr = engine.local_addr();
        let clock = Arc::new(AtomicU64::new(now()));
        let c = clock.clone();
        let cp = ControlPlane::new(engine.handle(), ApiConfig::default());
        cp.attach_webhooks(webhooks);
        let started = Management::start(
            engine.handle(),
            ManagementConfig {
                data_dir: dir.to_owned(),
                admin_token: Some(ADMIN.into()),
            },
            Arc::new(move || c.load(Ordering::Relaxed)),
        )
        .expect("management starts");
        assert!(started.generated_admin_token.is_none());
        cp.attach_management(started.management.clone());
        let http: Arc<dyn HttpService> = Arc::new(cp);
        let running = engine.start(Some(http)).expect("start");
        Mgmt {
            running: Some(running),
            addr,
            mgmt: started.management,
            clock,
            dir: dir.to_owned(),
        }
    }

    fn req(&self, token: Option<&str>, method: &str, path: &str, body: Option<Value>) -> Resp {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        http(self.addr, method, path, &headers, body.as_bytes())
    }

    fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        self.req(Some(ADMIN), method, path, body)
    }

    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = self.admin(method, path, body);
        assert!(
            (200..300).contains(&r.status),
            "{method} {path}: {} {}",
            r.status,
            r.text()
        );
        r.json()
    }

    fn token(&self, scopes: &[&str], app: Option<&str>) -> String {
        let mut b = json!({"name": "t", "scopes": scopes});
        if let Some(a) = app {
            b["app"] = json!(a);
        }
        let v = self.ok("POST", "/api/tokens", Some(b));
        v["token"].as_str().unwrap().to_owned()
    }

    fn create_app(&self, body: Value) -> (String, String, String) {
        let v = self.ok("POST", "/api/apps", Some(body));
        (
            v["id"].as_str().unwrap().to_owned(),
            v["keys"][0]["key"].as_str().unwrap().to_owned(),
            v["keys"][0]["secret"].as_str().unwrap().to_owned(),
        )
    }

    fn signed_as(&self, id: &str, key: &str, secret: &str, body: &str) -> Resp {
        let path = format!("/apps/{id}/events");
        let q = sign(key, secret, "POST", &path, &[], body.as_bytes(), now());
        http(
            self.addr,
            "POST",
            &format!("{path}?{q}"),
            &[],
            body.as_bytes(),
        )
    }

    /// Polls a GET (bounded) until `f` holds for its JSON.
    fn eventually_ok(&self, path: &str, f: impl Fn(&Value) -> bool) {
        let until = std::time::Instant::now() + WAIT;
        loop {
            let v = self.ok("GET", path, None);
            if f(&v) {
                return;
            }
            assert!(
                std::time::Instant::now() < until,
                "timed out: {path} is {v}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    fn stop(mut self) -> PathBuf {
        if let Some(r) = self.running.take() {
            r.shutdown_and_join();
        }
        self.mgmt.shutdown();
        self.dir.clone()
    }
}

impl Drop for Mgmt {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown_and_join();
        }
        self.mgmt.shutdown();
    }
}

fn event_body(channel: &str) -> String {
    json!({"name": "ev", "channels": [channel], "data": "hello"}).to_string()
}

#[test]
fn missing_or_bad_token_is_401_and_missing_scope_403_with_json_errors() {
    let tmp = tmp_dir("scopes");
    let s = Mgmt::start(&tmp);
    let (app, _, _) = s.create_app(json!({"id": "scoped"}));
    // Every endpoint with the scope it needs.
    let endpoints: Vec<(&str, String, Option<Value>, &str)> = vec![
        ("GET", "/api/apps".into(), None, "apps:read"),
        ("GET", format!("/api/apps/{app}"), None, "apps:read"),
        ("GET", format!("/api/apps/{app}/usage"), None, "apps:read"),
        (
            "GET",
            format!("/api/apps/{app}/channels"),
            None,
            "apps:read",
        ),
        ("GET", format!("/api/apps/{app}/history"), None, "apps:read"),
        (
            "GET",
            format!("/api/apps/{app}/webhooks"),
            None,
            "apps:read",
        ),
        ("GET", "/api/stats".into(), None, "apps:read"),
        ("POST", "/api/apps".into(), Some(json!({})), "apps:write"),
        (
            "PUT",
            format!("/api/apps/{app}"),
            Some(json!({"name": "n"})),
            "apps:write",
        ),
        (
            "POST",
            format!("/api/apps/{app}/webhooks/redeliver"),
            Some(json!({"id": "x"})),
            "apps:write",
        ),
        (
            "POST",
            format!("/api/apps/{app}/keys"),
            None,
            "secrets:manage",
        ),
        (
            "POST",
            format!("/api/apps/{app}/webhooks/secret"),
            None,
            "secrets:manage",
        ),
        (
            "POST",
            format!("/api/apps/{app}/debug/trigger"),
            Some(json!({"channel": "c"})),
            "events:trigger",
        ),
        ("GET", "/api/tokens".into(), None, "tokens:manage"),
        (
            "POST",
            "/api/tokens".into(),
            Some(json!({"scopes": ["tokens:manage"]})),
            "tokens:manage",
        ),
    ];
    let all = [
        "apps:read",
        "apps:write",
        "events:trigger",
        "secrets:manage",
        "tokens:manage",
    ];
    let tokens: Vec<(String, &str)> = all.iter().map(|sc| (s.token(&[sc], None), *sc)).collect();
    for (method, path, body, scope) in &endpoints {
        let r = s.req(None, method, path, body.clone());
        r.expect_error(401, "unauthorized");
        let r = s.req(Some("rc_nope"), method, path, body.clone());
        r.expect_error(401, "unauthorized");
        let r = s.req(Some("app-secret"), method, path, body.clone());
        r.expect_error(401, "unauthorized");
        for (tok, sc) in &tokens {
            let r = s.req(Some(tok), method, path, body.clone());
            if sc == scope {
                assert!(
                    r.status < 400 || r.status == 404,
                    "{method} {path} with {sc}: {} {}",
                    r.status,
                    r.text()
                );
            } else {
                r.expect_error(403, "forbidden");
            }
        }
    }
    // DELETE endpoints last (they change state).
    let (victim, _, _) = s.create_app(json!({}));
    let key = s.ok("POST", &format!("/api/apps/{victim}/keys"), None)["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let by_scope = |sc: &str| &tokens.iter().find(|(_, x)| *x == sc).unwrap().0;
    s.req(
        Some(by_scope("apps:write")),
        "DELETE",
        &format!("/api/apps/{victim}/keys/{key}"),
        None,
    )
    .expect_error(403, "forbidden");
    let r = s.req(
        Some(by_scope("secrets:manage")),
        "DELETE",
        &format!("/api/apps/{victim}/keys/{key}"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    s.req(
        Some(by_scope("apps:read")),
        "DELETE",
        &format!("/api/apps/{victim}"),
        None,
    )
    .expect_error(403, "forbidden");
    assert_eq!(
        s.req(
            Some(by_scope("apps:write")),
            "DELETE",
            &format!("/api/apps/{victim}"),
            None
        )
        .status,
        200
    );
    let tid = s.ok("GET", "/api/tokens", None)["tokens"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.req(
        Some(by_scope("apps:write")),
        "DELETE",
        &format!("/api/tokens/{tid}"),
        None,
    )
    .expect_error(403, "forbidden");
    assert_eq!(
        s.req(
            Some(by_scope("tokens:manage")),
            "DELETE",
            &format!("/api/tokens/{tid}"),
            None
        )
        .status,
        200
    );
}

#[test]
fn a_created_app_accepts_connections_and_signed_triggers_at_once() {
    let tmp = tmp_dir("create");
    let s = Mgmt::start(&tmp);
    let (id, key, secret) = s.create_app(json!({"name": "chat", "client_events": true}));
    assert!(
        id.bytes().all(|b| b.is_ascii_digit()),
        "generated ids are numeric: {id}"
    );
    let mut c = Client::connect(s.addr, &key);
    c.subscribe("news");
    let r = s.signed_as(&id, &key, &secret, &event_body("news"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.recv_event("ev")["data"], "hello");
    // The debug console's trigger reaches the same subscriber.
    let v = s.ok(
        "POST",
        &format!("/api/apps/{id}/debug/trigger"),
        Some(json!({"channel": "news", "event": "dbg", "data": {"x": 1}})),
    );
    assert_eq!(v["subscription_count"], 1);
    assert_eq!(c.recv_event("dbg")["data"], "{\"x\":1}");
    // Usage and stats see the connection.
    let u = s.ok("GET", &format!("/api/apps/{id}/usage"), None);
    assert_eq!(u["connections"], 1);
    assert!(u["messages_out_total"].as_u64().unwrap() >= 2, "{u}");
    let st = s.ok("GET", "/api/stats", None);
    assert!(st["apps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["id"] == id.as_str() && a["connections"] == 1));
    // A channel list with presence members.
    let ch = s.ok("GET", &format!("/api/apps/{id}/channels"), None);
    assert_eq!(ch["channels"][0]["name"], "news");
    assert_eq!(ch["channels"][0]["subscription_count"], 1);
}

#[test]
fn disabling_deleting_and_lowering_limits_apply_at_once() {
    let tmp = tmp_dir("disable");
    let s = Mgmt::start(&tmp);
    let (id, key, secret) = s.create_app(json!({"id": "d1"}));
    let mut c = Client::connect(s.addr, &key);
    s.ok("PUT", "/api/apps/d1", Some(json!({"enabled": false})));
    assert_eq!(c.recv_close(), Some(4003));
    s.signed_as(&id, &key, &secret, &event_body("x"))
        .expect_error(403, "app_disabled");
    s.ok(
        "PUT",
        "/api/apps/d1",
        Some(json!({"enabled": true, "max_event_bytes": 3})),
    );
    // The lowered limit applies to the next request.
    let r = s.signed_as(&id, &key, &secret, &event_body("x"));
    assert_eq!(r.status, 413, "{}", r.text());
    let mut c = Client::connect(s.addr, &key);
    s.ok("DELETE", "/api/apps/d1", None);
    assert_eq!(c.recv_close(), Some(4001));
    s.admin("GET", "/api/apps/d1", None)
        .expect_error(404, "not_found");
    s.signed_as(&id, &key, &secret, &event_body("x"))
        .expect_error(404, "unknown_app");
}

#[test]
fn revoking_a_key_closes_its_connections_and_stops_its_signatures_at_once() {
    let tmp = tmp_dir("revoke");
    let s = Mgmt::start(&tmp);
    let (id, k1, s1) = s.create_app(json!({}));
    let v = s.ok("POST", &format!("/api/apps/{id}/keys"), None);
    let (k2, s2) = (
        v["key"].as_str().unwrap().to_owned(),
        v["secret"].as_str().unwrap().to_owned(),
    );
    let mut c1 = Client::connect(s.addr, &k1);
    let mut c2 = Client::connect(s.addr, &k2);
    assert_eq!(s.signed_as(&id, &k2, &s2, &event_body("a")).status, 200);
    s.ok("DELETE", &format!("/api/apps/{id}/keys/{k2}"), None);
    assert_eq!(c2.recv_close(), Some(4001));
    assert_eq!(s.signed_as(&id, &k2, &s2, &event_body("a")).status, 401);
    assert_eq!(s.signed_as(&id, &k1, &s1, &event_body("a")).status, 200);
    c1.subscribe("still-here");
    // The last key cannot be revoked.
    s.admin("DELETE", &format!("/api/apps/{id}/keys/{k1}"), None)
        .expect_error(409, "conflict");
}

#[test]
fn secrets_are_shown_only_with_secrets_manage() {
    let tmp = tmp_dir("secrets");
    let s = Mgmt::start(&tmp);
    let (id, _, secret) = s.create_app(json!({}));
    let reader = s.token(&["apps:read"], None);
    let v = s
        .req(Some(&reader), "GET", &format!("/api/apps/{id}"), None)
        .json();
    assert!(v["keys"][0]["key"].is_string());
    assert!(v["keys"][0].get("secret").is_none(), "{v}");
    let list = s.req(Some(&reader), "GET", "/api/apps", None).text();
    assert!(
        !list.contains(&secret) && !list.contains("app-secret"),
        "{list}"
    );
    let writer = s.token(&["apps:write"], None);
    let created = s.req(Some(&writer), "POST", "/api/apps", Some(json!({})));
    assert_eq!(created.status, 201);
    assert!(created.json()["keys"][0].get("secret").is_none());
    let admin = s.ok("GET", &format!("/api/apps/{id}"), None);
    assert_eq!(admin["keys"][0]["secret"], secret.as_str());
}

#[test]
fn tokens_expire_are_revoked_at_once_and_app_restrictions_hold() {
    let tmp = tmp_dir("tokens");
    let s = Mgmt::start(&tmp);
    let (a, _, _) = s.create_app(json!({"id": "ta"}));
    let (b, _, _) = s.create_app(json!({"id": "tb"}));
    let v = s.ok(
        "POST",
        "/api/tokens",
        Some(json!({"scopes": ["apps:read"], "expires_in_secs": 60})),
    );
    let short = v["token"].as_str().unwrap().to_owned();
    assert_eq!(s.req(Some(&short), "GET", "/api/apps", None).status, 200);
    s.clock.fetch_add(61, Ordering::Relaxed);
    s.req(Some(&short), "GET", "/api/apps", None)
        .expect_error(401, "unauthorized");
    // Listing never shows a token or its hash.
    let list = s.ok("GET", "/api/tokens", None).to_string();
    assert!(!list.contains(&short) && !list.contains("hash"), "{list}");
    // Revocation.
    let t = s.ok(
        "POST",
        "/api/tokens",
        Some(json!({"scopes": ["apps:read"]})),
    );
    let (tok, tid) = (t["token"].as_str().unwrap(), t["id"].as_str().unwrap());
    assert_eq!(s.req(Some(tok), "GET", "/api/apps", None).status, 200);
    s.ok("DELETE", &format!("/api/tokens/{tid}"), None);
    s.req(Some(tok), "GET", "/api/apps", None)
        .expect_error(401, "unauthorized");
    // App restriction.
    let only_a = s.token(&["apps:read", "apps:write", "tokens:manage"], Some(&a));
    let listed = s.req(Some(&only_a), "GET", "/api/apps", None).json();
    let ids: Vec<&str> = listed["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![a.as_str()]);
    s.req(Some(&only_a), "GET", &format!("/api/apps/{b}"), None)
        .expect_error(403, "forbidden");
    s.req(Some(&only_a), "POST", "/api/apps", Some(json!({})))
        .expect_error(403, "forbidden");
    s.req(
        Some(&only_a),
        "POST",
        "/api/tokens",
        Some(json!({"scopes": ["apps:read"], "app": b})),
    )
    .expect_error(403, "forbidden");
    // No escalation: a token cannot grant a scope it lacks.
    s.req(
        Some(&only_a),
        "POST",
        "/api/tokens",
        Some(json!({"scopes": ["secrets:manage"]})),
    )
    .expect_error(403, "forbidden");
}

#[test]
fn an_events_trigger_token_publishes_through_the_app_http_api() {
    let tmp = tmp_dir("bearer");
    let s = Mgmt::start(&tmp);
    let (id, key, _) = s.create_app(json!({}));
    let trigger = s.token(&["events:trigger"], Some(&id));
    let reader = s.token(&["apps:read"], None);
    let mut c = Client::connect(s.addr, &key);
    c.subscribe("bearer-news");
    let path = format!("/apps/{id}/events");
    let body = event_body("bearer-news");
    let r = http(
        s.addr,
        "POST",
        &path,
        &[("Authorization", &format!("Bearer {trigger}"))],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.recv_event("ev")["data"], "hello");
    let r = http(
        s.addr,
        "POST",
        &path,
        &[("Authorization", &format!("Bearer {reader}"))],
        body.as_bytes(),
    );
    r.expect_error(403, "forbidden");
    // Restricted to its app: another app's events endpoint refuses it.
    let r = http(
        s.addr,
        "POST",
        "/apps/app-id/events",
        &[("Authorization", &format!("Bearer {trigger}"))],
        body.as_bytes(),
    );
    r.expect_error(403, "forbidden");
}

#[test]
fn apps_keys_and_tokens_survive_a_restart() {
    let tmp = tmp_dir("restart");
    let s = Mgmt::start(&tmp);
    let (id, key, secret) =
        s.create_app(json!({"id": "keep", "name": "kept", "max_connections": 7}));
    let v = s.ok("POST", "/api/apps/keep/keys", None);
    let k2 = v["key"].as_str().unwrap().to_owned();
    let tok = s.token(&["apps:read"], None);
    let gone = s.ok(
        "POST",
        "/api/tokens",
        Some(json!({"scopes": ["apps:read"]})),
    );
    s.ok(
        "DELETE",
        &format!("/api/tokens/{}", gone["id"].as_str().unwrap()),
        None,
    );
    s.create_app(json!({"id": "deleted"}));
    s.ok("DELETE", "/api/apps/deleted", None);
    let dir = s.stop();

    let s = Mgmt::start(&dir);
    let v = s.req(Some(&tok), "GET", "/api/apps/keep", None).json();
    assert_eq!(v["name"], "kept");
    assert_eq!(v["settings"]["max_connections"], 7);
    assert_eq!(v["keys"].as_array().unwrap().len(), 2);
    s.req(
        Some(gone["token"].as_str().unwrap()),
        "GET",
        "/api/apps",
        None,
    )
    .expect_error(401, "unauthorized");
    s.admin("GET", "/api/apps/deleted", None)
        .expect_error(404, "not_found");
    Client::connect(s.addr, &k2);
    assert_eq!(
        s.signed_as(&id, &key, &secret, &event_body("x")).status,
        200
    );
}

#[test]
fn a_corrupt_store_stops_the_start_with_a_clear_error() {
    let dir = tmp_dir("corrupt");
    std::fs::create_dir_all(&*dir).unwrap();
    std::fs::write(dir.join("ringcast.db"), vec![7u8; 4096]).unwrap();
    let raw = RawConfig::from_toml("").unwrap();
    let engine = Engine::bind(
        {
            let mut r = raw;
            r.listen = Some("127.0.0.1:0".into());
            r.resolve(1).unwrap()
        },
        None,
    )
    .unwrap();
    let err = Management::start(
        engine.handle(),
        ManagementConfig {
            data_dir: dir.to_path_buf(),
            admin_token: None,
        },
        ringcast_control_plane::system_clock(),
    )
    .err()
    .expect("a corrupt store must not start");
    assert!(err.to_string().contains("ringcast.db"), "{err}");
}

#[test]
fn concurrent_updates_from_several_clients_all_apply() {
    let tmp = tmp_dir("concurrent");
    let s = Arc::new(Mgmt::start(&tmp));
    s.create_app(json!({"id": "shared"}));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || {
                // Each client changes its own setting of the same app and creates its own app.
                let field = [
                    "client_events_per_sec",
                    "max_connections",
                    "max_presence_members",
                    "max_user_info_bytes",
                    "cache_ttl_secs",
                    "history_size",
                    "history_max_age_secs",
                    "max_event_bytes",
                ][i];
                s.ok("PATCH", "/api/apps/shared", Some(json!({ field: 100 + i })));
                s.ok("POST", "/api/apps", Some(json!({"id": format!("c{i}")})));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let v = s.ok("GET", "/api/apps/shared", None);
    assert_eq!(v["settings"]["client_events_per_sec"], 100);
    assert_eq!(v["settings"]["max_connections"], 101);
    assert_eq!(v["settings"]["max_event_bytes"], 107);
    let apps = s.ok("GET", "/api/apps", None);
    for i in 0..8 {
        let id = format!("c{i}");
        assert!(apps["apps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == id.as_str()));
    }
}

#[test]
fn bad_input_is_a_4xx_naming_the_field_and_nothing_is_half_applied() {
    let tmp = tmp_dir("bad");
    let s = Mgmt::start(&tmp);
    s.create_app(json!({"id": "b1", "name": "before"}));
    let before = s.ok("GET", "/api/apps/b1", None);
    let cases: Vec<(&str, &str, Value, u16, Option<&str>)> = vec![
        ("POST", "/api/apps", json!({"id": "a b"}), 400, Some("id")),
        ("POST", "/api/apps", json!({"bogus": 1}), 400, Some("bogus")),
        ("POST", "/api/apps", json!({"id": "b1"}), 409, Some("id")),
        (
            "POST",
            "/api/apps",
            json!({"id": "app-id"}),
            409,
            Some("id"),
        ),
        ("POST", "/api/apps", json!({"key": "k"}), 400, Some("key")),
        (
            "PUT",
            "/api/apps/b1",
            json!({"name": "after", "server_auth_channels": ["ok-*", "bad channel!"]}),
            400,
            Some("server_auth_channels[1]"),
        ),
        (
            "PUT",
            "/api/apps/b1",
            json!({"name": "after", "max_connections": "lots"}),
            400,
            Some("max_connections"),
        ),
        (
            "PUT",
            "/api/apps/b1",
            json!({"name": "after", "event_prefix": "x"}),
            400,
            Some("event_prefix"),
        ),
        (
            "PUT",
            "/api/apps/b1",
            json!({"id": "other"}),
            400,
            Some("id"),
        ),
        ("PUT", "/api/apps/app-id", json!({"name": "x"}), 409, None),
        (
            "POST",
            "/api/tokens",
            json!({"scopes": ["apps:read", "root"]}),
            400,
            Some("scopes[1]"),
        ),
        (
            "POST",
            "/api/tokens",
            json!({"scopes": []}),
            400,
            Some("scopes"),
        ),
        (
            "POST",
            "/api/tokens",
            json!({"scopes": ["apps:read"], "expires_in_secs": -5}),
            400,
            Some("expires_in_secs"),
        ),
        (
            "POST",
            "/api/apps/b1/debug/trigger",
            json!({"channel": "bad channel"}),
            400,
            Some("channel"),
        ),
    ];
    for (method, path, body, status, field) in cases {
        let r = s.admin(method, path, Some(body.clone()));
        let v = r.json();
        assert_eq!(r.status, status, "{method} {path} {body}: {v}");
        assert!(v["error"].is_string(), "{v}");
        assert_eq!(v["field"].as_str(), field, "{method} {path} {body}: {v}");
    }
    // A field given twice is refused, naming it (never "the last one wins").
    let r = http(
        s.addr,
        "PUT",
        "/api/apps/b1",
        &[("Authorization", &format!("Bearer {ADMIN}"))],
        br#"{"name": "after", "max_connections": 1, "max_connections": 2}"#,
    );
    assert_eq!(
        (r.status, r.json()["field"].as_str()),
        (400, Some("max_connections"))
    );
    // Malformed JSON, and a body over the limit.
    let r = http(
        s.addr,
        "POST",
        "/api/apps",
        &[("Authorization", &format!("Bearer {ADMIN}"))],
        b"{not json",
    );
    r.expect_error(400, "malformed_json");
    let big = json!({"name": "x".repeat(70 * 1024)}).to_string();
    let r = http(
        s.addr,
        "POST",
        "/api/apps",
        &[("Authorization", &format!("Bearer {ADMIN}"))],
        big.as_bytes(),
    );
    r.expect_error(413, "payload_too_large");
    // Nothing of the refused PUTs was applied (the name was in every one of them).
    assert_eq!(s.ok("GET", "/api/apps/b1", None), before);
    let ids: Vec<String> = s.ok("GET", "/api/apps", None)["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec!["app-id", "small", "off", "b1"]);
}

#[test]
fn config_apps_are_read_only_and_the_listener_hears_changes() {
    struct Rec(std::sync::Mutex<Vec<String>>);
    impl ringcast_control_plane::mgmt::ChangeListener for Rec {
        fn changed(&self, c: &ringcast_control_plane::mgmt::Change, v: u64) {
            self.0.lock().unwrap().push(format!("{c:?}@{v}"));
        }
    }
    let tmp = tmp_dir("listener");
    let s = Mgmt::start(&tmp);
    let rec = Arc::new(Rec(Default::default()));
    s.mgmt.set_listener(rec.clone());
    s.admin("DELETE", "/api/apps/small", None)
        .expect_error(409, "managed_by_config");
    let v = s.ok("GET", "/api/apps/small", None);
    assert_eq!(v["source"], "config");
    s.create_app(json!({"id": "heard"}));
    s.ok("DELETE", "/api/apps/heard", None);
    let log = rec.0.lock().unwrap().clone();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(
        log[0].starts_with("AppUpserted { id: \"heard\" }"),
        "{log:?}"
    );
    assert!(
        log[1].starts_with("AppDeleted { id: \"heard\" }"),
        "{log:?}"
    );
}

/// A webhook receiver on loopback: answers 200 and hands over (headers, body) of each request.
/// One webhook request: lowercased headers and the body.
type Hook = (Vec<(String, String)>, String);

fn webhook_receiver() -> (String, std::sync::mpsc::Receiver<Hook>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut headers = Vec::new();
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = h.trim_end().split_once(':') {
                            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                        }
                    }
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                    if tx
                        .send((headers, String::from_utf8_lossy(&body).into_owned()))
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

#[test]
fn webhook_targets_and_the_webhook_secret_of_an_api_app_apply_at_once() {
    let tmp = tmp_dir("hooks");
    let s = Mgmt::start(&tmp);
    let (url, hooks) = webhook_receiver();
    let (id, key, secret) = s.create_app(json!({
        "webhooks": [{"url": url, "event_types": ["channel_occupied"]}],
    }));
    let header = |h: &[(String, String)], k: &str| {
        h.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let next = || hooks.recv_timeout(WAIT).expect("a webhook within the wait");
    let mut c = Client::connect(s.addr, &key);
    c.subscribe("hooked-1");
    let (h, body) = next();
    assert!(
        body.contains("channel_occupied") && body.contains("hooked-1"),
        "{body}"
    );
    assert_eq!(header(&h, "x-pusher-key"), key);
    assert_eq!(
        header(&h, "x-pusher-signature"),
        ringcast_protocol::webhook_signature(&secret, body.as_bytes())
    );
    // A rotated webhook secret signs the next delivery.
    let v = s.ok("POST", &format!("/api/apps/{id}/webhooks/secret"), None);
    let ws = v["webhook_secret"].as_str().unwrap().to_owned();
    c.subscribe("hooked-2");
    let (h, body) = next();
    assert!(body.contains("hooked-2"), "{body}");
    assert_eq!(
        header(&h, "x-pusher-signature"),
        ringcast_protocol::webhook_signature(&ws, body.as_bytes())
    );
    // The delivery log of the app is served under /api.
    s.eventually_ok(&format!("/api/apps/{id}/webhooks"), |v| {
        v["deliveries"]
            .as_array()
            .is_some_and(|d| d.len() == 2 && d.iter().all(|x| x["status"] == "delivered"))
    });
    // Changed targets: a prefix filter now skips hooked-3 and passes only other-*.
    s.ok(
        "PATCH",
        &format!("/api/apps/{id}"),
        Some(json!({"webhooks": [{"url": url, "event_types": ["channel_occupied"], "channel_prefix": "other-"}]})),
    );
    c.subscribe("hooked-3");
    c.subscribe("other-1");
    let (_, body) = next();
    assert!(
        body.contains("other-1") && !body.contains("hooked-3"),
        "{body}"
    );
}

#[test]
fn every_config_file_setting_is_in_the_model_and_applies() {
    let tmp = tmp_dir("allsettings");
    let s = Mgmt::start(&tmp);
    let (id, key, secret) = s.create_app(json!({
        "id": "full",
        "allowed_origins": ["https://ok.test", "*.ok.test"],
        "api_keys": ["lsk_full_app_key"],
        "rate_limits": {"events": {"per_minute": 60, "burst_per_sec": 1}},
        "activity_history_size": 9,
        "single_connection_per_user": true,
    }));
    let v = s.ok("GET", "/api/apps/full", None);
    let st = &v["settings"];
    assert_eq!(
        st["allowed_origins"],
        json!(["https://ok.test", "*.ok.test"])
    );
    assert_eq!(st["api_keys"], json!(["lsk_full_app_key"]));
    assert_eq!(
        st["rate_limits"],
        json!({"events": {"per_minute": 60, "burst_per_sec": 1}})
    );
    assert_eq!(st["activity_history_size"], 9);
    assert_eq!(st["single_connection_per_user"], true);
    // The rate limit applies at once: one burst token, the second trigger is refused.
    assert_eq!(
        s.signed_as(&id, &key, &secret, &event_body("rl")).status,
        200
    );
    assert_eq!(
        s.signed_as(&id, &key, &secret, &event_body("rl")).status,
        429
    );
    // The LatteStream key is a credential: hidden without secrets:manage, and only
    // secrets:manage may write it.
    let reader = s.token(&["apps:read", "apps:write"], None);
    let seen = s.req(Some(&reader), "GET", "/api/apps/full", None).json();
    assert!(!seen.to_string().contains("lsk_full_app_key"), "{seen}");
    s.req(
        Some(&reader),
        "PUT",
        "/api/apps/full",
        Some(json!({"api_keys": ["lsk_other_key"]})),
    )
    .expect_error(403, "forbidden");
    // Bad values name their field and change nothing.
    for (field, value) in [
        ("allowed_origins", json!(["https://x.test/path"])),
        ("api_keys", json!(["not-an-lsk-key"])),
        ("rate_limits", json!({"nope": {"per_minute": 1}})),
        ("activity_history_size", json!("many")),
        ("single_connection_per_user", json!(3)),
    ] {
        let r = s.admin("PUT", "/api/apps/full", Some(json!({ field: value })));
        assert_eq!(r.status, 400, "{field}: {}", r.text());
        assert_eq!(r.json()["field"], field, "{}", r.text());
    }
    assert_eq!(s.ok("GET", "/api/apps/full", None)["settings"], *st);
    // null resets to the default.
    let v = s.ok(
        "PUT",
        "/api/apps/full",
        Some(json!({"allowed_origins": null, "rate_limits": null})),
    );
    assert_eq!(v["settings"]["allowed_origins"], json!([]));
    assert_eq!(v["settings"]["rate_limits"], json!({}));
    // A duplicate LatteStream key over two apps is refused.
    let r = s.admin(
        "POST",
        "/api/apps",
        Some(json!({"id": "dup", "api_keys": ["lsk_full_app_key"]})),
    );
    assert!(r.status == 409 || r.status == 400, "{}", r.text());
    s.admin("GET", "/api/apps/dup", None)
        .expect_error(404, "not_found");
}

#[test]
fn usage_per_day_survives_a_restart() {
    let tmp = tmp_dir("usage");
    let s = Mgmt::start(&tmp);
    let (id, key, secret) = s.create_app(json!({"id": "counted"}));
    let mut c = Client::connect(s.addr, &key);
    c.subscribe("metered");
    for _ in 0..3 {
        let r = s.signed_as(&id, &key, &secret, &event_body("metered"));
        assert_eq!(r.status, 200, "{}", r.text());
        c.recv_event("ev");
    }
    let path = "/api/apps/counted/usage";
    s.eventually_ok(path, |v| {
        let d = &v["days"][0];
        d["messages_out"].as_u64() >= Some(3)
            && d["api_calls"].as_u64() >= Some(3)
            && d["connections_peak"].as_u64() >= Some(1)
    });
    let before = s.ok("GET", path, None)["days"][0].clone();
    drop(c);
    let dir = s.stop();

    // A new process on the same store: the day's row is there before any new traffic.
    let s = Mgmt::start(&dir);
    let after = s.ok("GET", path, None);
    let day = &after["days"][0];
    assert_eq!(day["day"], before["day"], "{after}");
    for field in [
        "messages_out",
        "api_calls",
        "connections_peak",
        "messages_in",
    ] {
        assert!(
            day[field].as_u64() >= before[field].as_u64(),
            "{field}: {before} then {after}"
        );
    }
    assert!(day["messages_out"].as_u64() >= Some(3), "{after}");
}

/// Collects what a node's management plane publishes for the cluster.
fn replicated(s: &Mgmt, node: &str) -> Arc<std::sync::Mutex<Vec<Vec<u8>>>> {
    let out = Arc::new(std::sync::Mutex::new(Vec::new()));
    let o = out.clone();
    s.mgmt
        .attach_cluster(node.into(), move |r| o.lock().unwrap().push(r));
    out
}

fn take(out: &std::sync::Mutex<Vec<Vec<u8>>>) -> Vec<Vec<u8>> {
    std::mem::take(&mut *out.lock().unwrap())
}

/// Applies records on `to` and waits until its management thread has handled them (the
/// `GET /api/tokens` after them runs on the same thread, in order).
fn deliver(to: &Mgmt, from: &str, batches: &[Vec<u8>]) {
    for b in batches {
        to.mgmt.apply_replicated(from.into(), b.clone());
    }
    to.ok("GET", "/api/tokens", None);
}

#[test]
fn replicated_records_merge_last_writer_wins_with_tombstones() {
    let (ta, tb, tc) = (tmp_dir("repl-a"), tmp_dir("repl-b"), tmp_dir("repl-c"));
    let a = Mgmt::start(&ta);
    let b = Mgmt::start(&tb);
    let out_a = replicated(&a, "a");
    let out_b = replicated(&b, "b");

    // A create reaches B whole: same keys and secrets, a signed trigger verifies on B.
    let (id, key, secret) = a.create_app(json!({"id": "x", "name": "one"}));
    let r1 = take(&out_a);
    assert_eq!(r1.len(), 1);
    deliver(&b, "a", &r1);
    assert_eq!(b.ok("GET", "/api/apps/x", None)["name"], "one");
    assert_eq!(
        b.signed_as(&id, &key, &secret, &event_body("c")).status,
        200
    );
    assert!(
        take(&out_b).is_empty(),
        "applied records are not published again"
    );

    // A delete is a tombstone: the old create replayed late does not bring the app back.
    a.ok("DELETE", "/api/apps/x", None);
    let r2 = take(&out_a);
    deliver(&b, "a", &r2);
    b.admin("GET", "/api/apps/x", None)
        .expect_error(404, "not_found");
    deliver(&b, "a", &r1);
    b.admin("GET", "/api/apps/x", None)
        .expect_error(404, "not_found");
    // The app is gone on B: its REST API answers "unknown app".
    assert_eq!(
        b.signed_as(&id, &key, &secret, &event_body("c")).status,
        404
    );

    // Concurrent updates on A and B, each delivered to the other: one winner everywhere.
    a.create_app(json!({"id": "y", "name": "base"}));
    deliver(&b, "a", &take(&out_a));
    a.ok(
        "PUT",
        "/api/apps/y",
        Some(json!({"name": "from-a", "max_connections": 1})),
    );
    b.ok(
        "PUT",
        "/api/apps/y",
        Some(json!({"name": "from-b", "max_connections": 2})),
    );
    deliver(&a, "b", &take(&out_b));
    deliver(&b, "a", &take(&out_a));
    let ya = a.ok("GET", "/api/apps/y", None);
    let yb = b.ok("GET", "/api/apps/y", None);
    assert_eq!(ya["name"], yb["name"]);
    assert_eq!(ya["settings"], yb["settings"]);
    let winner = ya["name"].as_str().unwrap();
    let limit = if winner == "from-a" { 1 } else { 2 };
    assert_eq!(ya["settings"]["max_connections"], limit, "{ya}");

    // A token created on A verifies on B; revoked on B, it stops on A.
    let tok = a.token(&["apps:read"], None);
    deliver(&b, "a", &take(&out_a));
    assert_eq!(b.req(Some(&tok), "GET", "/api/apps", None).status, 200);
    let tid = b.req(Some(&tok), "GET", "/api/token", None).json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    b.ok("DELETE", &format!("/api/tokens/{tid}"), None);
    deliver(&a, "b", &take(&out_b));
    a.req(Some(&tok), "GET", "/api/apps", None)
        .expect_error(401, "unauthorized");

    // A new node converges from A's snapshot, tombstones included.
    let c = Mgmt::start(&tc);
    let (tx, rx) = std::sync::mpsc::channel();
    a.mgmt.replication_snapshot(
        100,
        Box::new(move |parts| {
            let _ = tx.send(parts);
        }),
    );
    let parts = rx.recv_timeout(WAIT).expect("a snapshot");
    // One app and two tombstones, one record per part at this size.
    assert_eq!(parts.len(), 3);
    deliver(&c, "a", &parts);
    assert_eq!(c.ok("GET", "/api/apps/y", None)["name"], winner);
    deliver(&c, "a", &r1);
    c.admin("GET", "/api/apps/x", None)
        .expect_error(404, "not_found");
    c.req(Some(&tok), "GET", "/api/apps", None)
        .expect_error(401, "unauthorized");

    // Junk is ignored, never applied and never a crash.
    deliver(
        &c,
        "zz",
        &[
            b"not json".to_vec(),
            b"{\"format\":9,\"records\":[]}".to_vec(),
        ],
    );
    assert_eq!(c.ok("GET", "/api/apps/y", None)["name"], winner);
}
