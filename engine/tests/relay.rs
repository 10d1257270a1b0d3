//! The `relay` event-prefix dialect: the same protocol with `relay:` instead of `pusher:` and
//! `pusher_internal:`, per app.

mod common;

use std::net::TcpStream;

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

const RELAY_APP: &str = "[[apps]]\nid='r'\nkey='relay-key'\nsecret='relay-secret'\nclient_events=true\nevent_prefix='relay'\n[[apps]]\nid='p'\nkey='app-key'\nsecret='app-secret'\n";

fn recv(ws: &mut tungstenite::WebSocket<TcpStream>) -> Value {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            m => panic!("{m:?}"),
        }
    }
}

fn send(ws: &mut tungstenite::WebSocket<TcpStream>, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

#[test]
fn relay_app_speaks_relay_prefix_and_pusher_app_is_unchanged() {
    let s = Server::start(2, RELAY_APP);
    let (mut ws, first) = Client::open(s.addr, "/app/relay-key?protocol=7");
    let first = first.unwrap();
    assert_eq!(first["event"], "relay:connection_established");
    let socket_id = data_of(&first)["socket_id"].as_str().unwrap().to_string();

    send(&mut ws, json!({"event": "relay:ping", "data": {}}));
    assert_eq!(recv(&mut ws), json!({"event": "relay:pong", "data": {}}));

    send(
        &mut ws,
        json!({"event": "relay:subscribe", "data": {"channel": "room"}}),
    );
    let ok = recv(&mut ws);
    assert_eq!(ok["event"], "relay:subscription_succeeded");
    assert_eq!(ok["data"], "{}");

    // A pusher-prefixed control event is not this app's dialect: an error, in relay form.
    send(
        &mut ws,
        json!({"event": "pusher:subscribe", "data": {"channel": "x"}}),
    );
    assert_eq!(recv(&mut ws)["event"], "relay:error");

    // Presence: relay:member_added to the other member.
    let cd = json!({"user_id": "1"}).to_string();
    let auth = ringcast_protocol::channel_auth(
        "relay-key",
        "relay-secret",
        &socket_id,
        "presence-r",
        Some(&cd),
    );
    send(
        &mut ws,
        json!({"event": "relay:subscribe", "data": {"channel": "presence-r", "auth": auth, "channel_data": cd}}),
    );
    assert_eq!(recv(&mut ws)["event"], "relay:subscription_succeeded");
    let (mut ws2, first2) = Client::open(s.addr, "/app/relay-key?protocol=7");
    let sid2 = data_of(&first2.unwrap())["socket_id"]
        .as_str()
        .unwrap()
        .to_string();
    let cd2 = json!({"user_id": "2"}).to_string();
    let auth2 = ringcast_protocol::channel_auth(
        "relay-key",
        "relay-secret",
        &sid2,
        "presence-r",
        Some(&cd2),
    );
    send(
        &mut ws2,
        json!({"event": "relay:subscribe", "data": {"channel": "presence-r", "auth": auth2, "channel_data": cd2}}),
    );
    assert_eq!(recv(&mut ws2)["event"], "relay:subscription_succeeded");
    let added = recv(&mut ws);
    assert_eq!(added["event"], "relay:member_added");
    assert_eq!(data_of(&added)["user_id"], "2");

    // Client events are not prefixed: they relay as-is.
    send(
        &mut ws2,
        json!({"event": "client-x", "channel": "presence-r", "data": {"a": 1}}),
    );
    let ce = recv(&mut ws);
    assert_eq!(ce["event"], "client-x");
    assert_eq!(ce["user_id"], "2");

    // The other app on the same server still speaks pusher.
    let mut c = s.connect();
    assert_eq!(
        c.subscribe("room")["event"],
        "pusher_internal:subscription_succeeded"
    );
}
