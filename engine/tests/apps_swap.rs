//! Runtime app changes (`EngineHandle::set_apps`): the apps table is swapped on every core at
//! once; new apps accept at once, disabled/deleted apps and revoked keys close their
//! connections with the documented codes, and indexes stay stable.

mod common;

use common::*;
use ringcast_engine::{AppConfig, AppKey, Publish};
use ringcast_protocol::ChannelName;
use serde_json::json;

fn app(id: &str, key: &str, secret: &str) -> AppConfig {
    AppConfig {
        id: id.into(),
        key: key.into(),
        secrets: vec![secret.into()],
        ..AppConfig::embedded_default()
    }
}

fn default_app() -> AppConfig {
    AppConfig::embedded_default()
}

#[test]
fn a_new_app_accepts_connections_and_publishes_at_once_on_every_core() {
    let s = Server::start(2, "");
    let h = s.handle();
    assert!(Client::open(s.addr, "/app/k2?protocol=7").1.unwrap()["event"] == "pusher:error");
    let up = h
        .set_apps(vec![default_app(), app("2", "k2", "s2")])
        .unwrap();
    assert_eq!(up.added, vec!["2".to_string()]);
    let (idx, cfg) = h.app_by_key("k2").expect("new app by key");
    assert_eq!(idx, 1);
    assert_eq!(cfg.id, "2");
    // Several connections: with 2 workers they land on both cores.
    let mut clients: Vec<Client> = (0..6).map(|_| Client::connect(s.addr, "k2")).collect();
    for c in &mut clients {
        c.subscribe("news");
    }
    block_on(h.publish(Publish {
        app: idx,
        channels: vec![ChannelName::parse("news").unwrap()],
        event: "e".into(),
        data: "d".into(),
        except: None,
    }))
    .unwrap();
    for c in &mut clients {
        assert_eq!(c.recv_event("e")["data"], "d");
    }
}

#[test]
fn disabling_closes_with_4003_and_deleting_with_4001_and_indexes_stay() {
    let s = Server::start(2, "");
    let h = s.handle();
    h.set_apps(vec![
        default_app(),
        app("2", "k2", "s2"),
        app("3", "k3", "s3"),
    ])
    .unwrap();
    let mut c2 = Client::connect(s.addr, "k2");
    let mut c3 = Client::connect(s.addr, "k3");
    let mut c1 = Client::connect(s.addr, "app-key");
    let disabled = AppConfig {
        enabled: false,
        ..app("2", "k2", "s2")
    };
    h.set_apps(vec![default_app(), disabled.clone(), app("3", "k3", "s3")])
        .unwrap();
    assert_eq!(c2.recv_close(), Some(4003));
    let (_, first) = Client::open(s.addr, "/app/k2?protocol=7");
    assert_eq!(first.unwrap()["data"]["code"], 4003);
    // Delete app 3: closed with 4001, its key is unknown from then on, the slot stays.
    let up = h.set_apps(vec![default_app(), disabled]).unwrap();
    assert_eq!(up.removed, vec!["3".to_string()]);
    assert_eq!(c3.recv_close(), Some(4001));
    assert!(h.app_by_id("3").is_none());
    let (_, first) = Client::open(s.addr, "/app/k3?protocol=7");
    assert_eq!(first.unwrap()["data"]["code"], 4001);
    // A publish to the deleted slot is refused; a re-created app gets a new slot.
    let r = block_on(h.publish(Publish {
        app: 2,
        channels: vec![ChannelName::parse("x").unwrap()],
        event: "e".into(),
        data: "d".into(),
        except: None,
    }));
    assert_eq!(r, Err(ringcast_engine::EngineError::UnknownApp));
    h.set_apps(vec![default_app(), app("3", "k3", "s3")])
        .unwrap();
    assert_eq!(h.app_by_id("3").unwrap().0, 3);
    assert_eq!(h.app_by_id("app-id").unwrap().0, 0);
    // The untouched app's connection never noticed.
    c1.assert_nothing_pending();
}

#[test]
fn a_second_key_signs_for_its_connections_and_revoking_it_closes_only_them() {
    let s = Server::start(2, "");
    let h = s.handle();
    let two_keys = AppConfig {
        extra_keys: vec![AppKey {
            key: "k-extra".into(),
            secret: "s-extra".into(),
        }],
        ..default_app()
    };
    h.set_apps(vec![two_keys]).unwrap();
    let mut primary = Client::connect(s.addr, "app-key");
    let mut extra = Client::connect(s.addr, "k-extra");
    // A private channel signed with the extra key's secret is accepted on its connection...
    let auth =
        ringcast_protocol::channel_auth("k-extra", "s-extra", &extra.socket_id, "private-a", None);
    extra
        .send(json!({"event": "pusher:subscribe", "data": {"auth": auth, "channel": "private-a"}}));
    extra.recv_event("pusher_internal:subscription_succeeded");
    // ...and one signed with the primary secret is not.
    let wrong = ringcast_protocol::channel_auth(
        "k-extra",
        "app-secret",
        &extra.socket_id,
        "private-b",
        None,
    );
    extra.send(
        json!({"event": "pusher:subscribe", "data": {"auth": wrong, "channel": "private-b"}}),
    );
    assert_eq!(
        extra.recv_event("pusher:subscription_error")["data"]["status"],
        401
    );
    // Revoke the extra key: its connection closes with 4001, the primary's does not.
    h.set_apps(vec![default_app()]).unwrap();
    assert_eq!(extra.recv_close(), Some(4001));
    primary.assert_nothing_pending();
    let (_, first) = Client::open(s.addr, "/app/k-extra?protocol=7");
    assert_eq!(first.unwrap()["data"]["code"], 4001);
}

#[test]
fn invalid_sets_are_refused_and_change_nothing() {
    let s = Server::start(1, "");
    let h = s.handle();
    let v = h.apps_version();
    assert!(h
        .set_apps(vec![default_app(), app("2", "app-key", "s")])
        .is_err());
    assert!(h
        .set_apps(vec![default_app(), app("app-id", "k9", "s")])
        .is_err());
    assert!(h.set_apps(vec![app("2", "", "s")]).is_err());
    assert_eq!(h.apps_version(), v);
    assert_eq!(h.apps().len(), 1);
}
