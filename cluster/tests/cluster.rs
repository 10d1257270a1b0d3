//! The cluster against real brokers: redis-server and nats-server started here on ephemeral
//! ports, two or three in-process nodes wired as the binary wires them, real WebSocket
//! clients. Each scenario runs on both backends.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use ringcast_engine::EngineError;
use ringcast_protocol::ChannelName;
use serde_json::json;

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod redis_backend {
            $( #[test] fn $name() { super::$name(super::Kind::Redis) } )*
        }
        mod nats_backend {
            $( #[test] fn $name() { super::$name(super::Kind::Nats) } )*
        }
    };
}

on_both_backends!(
    events_cross_nodes_in_order_once,
    client_events_cross_nodes_without_echo,
    presence_and_counts_are_cluster_wide,
    lifecycle_hooks_fire_once_on_the_leader,
    graceful_stop_drops_the_share_at_once,
    terminate_and_server_to_user_reach_every_node,
    broker_restart_rejects_then_recovers,
    silent_node_expires_and_junk_is_ignored,
    management_records_cross_nodes_and_gaps_ask_for_state,
);

fn events_cross_nodes_in_order_once(kind: Kind) {
    let broker = Broker::start(kind);
    let n1 = Node::start("n1", &broker.url(), 10_000);
    let n2 = Node::start("n2", &broker.url(), 10_000);
    let mut a = n1.connect();
    a.subscribe("orders");
    // The count of n1's subscriber reached n2: from here n2's events reach n1.
    eventually("n2 to count n1's subscriber", || n2.count("orders") == 1);
    for i in 0..50 {
        n2.publish("orders", "ev", &i.to_string());
    }
    for i in 0..50 {
        let m = a.recv_not_count();
        assert_eq!(
            (m["event"].as_str(), m["data"].as_str()),
            (Some("ev"), Some(&*i.to_string()))
        );
    }
    a.assert_nothing_pending();
    // `except` names a socket of another node by its full id.
    let p = ringcast_engine::Publish {
        app: 0,
        channels: vec![ChannelName::parse("orders").unwrap()],
        event: "skipped".into(),
        data: "x".into(),
        except: ringcast_protocol::SocketId::parse(&a.socket_id),
    };
    block_on(n2.handle().publish(p)).unwrap();
    n2.publish("orders", "after", "y");
    assert_eq!(a.recv_not_count()["event"], "after");
    // Exactly one broker publish per event from n2, none from n1 (no subscriber asked it).
    let m = &n2.link.metrics;
    assert!(ringcast_engine::ClusterMetrics::get(&m.published) >= 52);
    assert_eq!(
        ringcast_engine::ClusterMetrics::get(&n1.link.metrics.bad_messages),
        0
    );
}

fn client_events_cross_nodes_without_echo(kind: Kind) {
    let broker = Broker::start(kind);
    let n1 = Node::start("n1", &broker.url(), 10_000);
    let n2 = Node::start("n2", &broker.url(), 10_000);
    let mut a = n1.connect();
    let mut b = n2.connect();
    a.subscribe_private("private-chat");
    b.subscribe_private("private-chat");
    eventually("both nodes to count both", || {
        n1.count("private-chat") == 2 && n2.count("private-chat") == 2
    });
    b.send(json!({"event": "client-hi", "channel": "private-chat", "data": {"n": 1}}));
    let m = a.recv_not_count();
    assert_eq!(m["event"], "client-hi");
    a.send(json!({"event": "client-back", "channel": "private-chat", "data": {"n": 2}}));
    assert_eq!(b.recv_not_count()["event"], "client-back");
    // Neither sender got its own event back.
    a.assert_nothing_pending();
    b.assert_nothing_pending();
}

fn presence_and_counts_are_cluster_wide(kind: Kind) {
    let broker = Broker::start(kind);
    let n1 = Node::start("n1", &broker.url(), 10_000);
    let n2 = Node::start("n2", &broker.url(), 10_000);
    let ch = "presence-room";
    let mut a = n1.connect();
    let s = a.subscribe_presence(ch, "u1");
    assert_eq!(data_of(&s)["presence"]["count"], 1);
    eventually("n2 to know u1", || n2.users(ch) == ["u1"]);
    let mut b = n2.connect();
    let s = b.subscribe_presence(ch, "u2");
    // The newcomer's snapshot has the members of every node.
    let snap = data_of(&s);
    assert_eq!(snap["presence"]["count"], 2, "{snap}");
    let m = a.recv_event("pusher_internal:member_added");
    assert_eq!(data_of(&m)["user_id"], "u2");
    // u1 again, on the other node: no member_added anywhere.
    let mut c = n2.connect();
    c.subscribe_presence(ch, "u1");
    eventually("3 subscriptions counted on both", || {
        n1.count(ch) == 3 && n2.count(ch) == 3
    });
    a.assert_nothing_pending();
    b.assert_nothing_pending();
    for n in [&n1, &n2] {
        assert_eq!(n.users(ch), ["u1", "u2"]);
    }
    // u1 leaves one of its two connections: still a member.
    c.close();
    eventually("2 subscriptions on both", || {
        n1.count(ch) == 2 && n2.count(ch) == 2
    });
    b.assert_nothing_pending();
    // u2 leaves: member_removed once.
    b.close();
    let m = a.recv_event("pusher_internal:member_removed");
    assert_eq!(data_of(&m)["user_id"], "u2");
    eventually("u2 gone everywhere", || {
        n1.users(ch) == ["u1"] && n2.users(ch) == ["u1"]
    });
    a.assert_nothing_pending();
    // The channel lists of both nodes.
    let list = block_on(n2.handle().channels(0, None)).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].subscription_count, list[0].user_count),
        (1, Some(1))
    );
    a.close();
    eventually("the channel vacated everywhere", || {
        block_on(n2.handle().channels(0, None)).unwrap().is_empty()
            && block_on(n1.handle().channels(0, None)).unwrap().is_empty()
    });
}

fn lifecycle_hooks_fire_once_on_the_leader(kind: Kind) {
    let broker = Broker::start(kind);
    let log = Arc::new(Mutex::new(Vec::new()));
    let node = |id: &str| {
        Node::start_observed(
            id,
            &broker.url(),
            10_000,
            "ringcast",
            APP_TOML,
            Some(Arc::new(Recorder {
                node: id.into(),
                log: log.clone(),
            })),
        )
    };
    let n1 = node("n1");
    let n2 = node("n2");
    eventually("n1 to be the only leader", || {
        n1.link.is_leader() && !n2.link.is_leader()
    });
    let ch = "presence-hooks";
    let mut a = n2.connect();
    a.subscribe_presence(ch, "u9");
    let mut b = n1.connect();
    b.subscribe_presence(ch, "u9");
    eventually("both counted everywhere", || {
        n1.count(ch) == 2 && n2.count(ch) == 2
    });
    a.close();
    b.close();
    eventually("vacated seen", || {
        log.lock().unwrap().iter().any(|l| l.contains("vacated"))
    });
    // Once per cluster transition, all from the leader.
    eventually("the channel gone on both", || {
        n1.count(ch) == 0 && n2.count(ch) == 0
    });
    let got = log.lock().unwrap().clone();
    assert_eq!(
        got,
        vec![
            format!("n1 occupied {ch}"),
            format!("n1 member_added {ch} u9"),
            format!("n1 member_removed {ch} u9"),
            format!("n1 vacated {ch}"),
        ]
    );
}

fn graceful_stop_drops_the_share_at_once(kind: Kind) {
    let broker = Broker::start(kind);
    // A lease far above every wait here: only Bye can explain what follows.
    let n1 = Node::start("n1", &broker.url(), 600_000);
    let n2 = Node::start("n2", &broker.url(), 600_000);
    let ch = "presence-stop";
    let mut a = n1.connect();
    a.subscribe_presence(ch, "u1");
    let mut b = n2.connect();
    b.subscribe_presence(ch, "u2");
    let m = a.recv_event("pusher_internal:member_added");
    assert_eq!(data_of(&m)["user_id"], "u2");
    eventually("n1 counts 2", || n1.count(ch) == 2);
    n2.stop();
    assert_eq!(b.recv_close(), Some(4200));
    let m = a.recv_event("pusher_internal:member_removed");
    assert_eq!(data_of(&m)["user_id"], "u2");
    eventually("n1 counts 1", || n1.count(ch) == 1);
    assert_eq!(n1.users(ch), ["u1"]);
}

fn terminate_and_server_to_user_reach_every_node(kind: Kind) {
    let broker = Broker::start(kind);
    let n1 = Node::start("n1", &broker.url(), 10_000);
    let n2 = Node::start("n2", &broker.url(), 10_000);
    let mut a = n1.connect();
    a.signin("u7");
    let mut b = n2.connect();
    b.signin("u7");
    let ch = "#server-to-user-u7";
    eventually("both sign-ins counted on both", || {
        n1.count(ch) == 2 && n2.count(ch) == 2
    });
    n1.publish(ch, "note", "hello");
    assert_eq!(a.recv_not_count()["event"], "note");
    assert_eq!(b.recv_not_count()["event"], "note");
    let n = block_on(n1.handle().terminate_user(0, "u7", 4009)).unwrap();
    assert_eq!(n, 1, "one local connection closed on n1");
    assert_eq!(a.recv_close(), Some(4009));
    assert_eq!(b.recv_close(), Some(4009));
}

fn broker_restart_rejects_then_recovers(kind: Kind) {
    let mut broker = Broker::start(kind);
    let n1 = Node::start("n1", &broker.url(), 10_000);
    let n2 = Node::start("n2", &broker.url(), 10_000);
    let ch = "presence-restart";
    let mut a = n1.connect();
    a.subscribe_presence(ch, "u1");
    eventually("n2 to know u1", || n2.users(ch) == ["u1"]);
    let mut b = n2.connect();
    b.subscribe_presence(ch, "u2");
    a.recv_event("pusher_internal:member_added");
    eventually("both counted", || n1.count(ch) == 2 && n2.count(ch) == 2);
    broker.stop();
    eventually("both nodes see the broker gone", || {
        !n1.link.is_connected() && !n2.link.is_connected()
    });
    // Never accepted when it cannot reach the cluster.
    let p = ringcast_engine::Publish {
        app: 0,
        channels: vec![ChannelName::parse(ch).unwrap()],
        event: "lost".into(),
        data: "x".into(),
        except: None,
    };
    assert_eq!(
        block_on(n1.handle().publish(p)).unwrap_err(),
        EngineError::ClusterUnavailable
    );
    // Local delivery goes on: a client event between two connections of n1.
    let mut c = n1.connect();
    c.subscribe_presence(ch, "u3");
    a.recv_event("pusher_internal:member_added");
    c.send(json!({"event": "client-local", "channel": ch, "data": {}}));
    assert_eq!(a.recv_not_count()["event"], "client-local");
    let undeliverable = &n1.link.metrics.undeliverable;
    eventually("the undeliverable client event counted", || {
        ringcast_engine::ClusterMetrics::get(undeliverable) >= 1
    });
    // Back, empty: both reconnect and re-assert their shares.
    broker.restart();
    eventually("both reconnected", || {
        n1.link.is_connected() && n2.link.is_connected()
    });
    eventually("counts whole again", || {
        n1.count(ch) == 3 && n2.count(ch) == 3
    });
    eventually("members whole again", || {
        n1.users(ch) == ["u1", "u2", "u3"] && n2.users(ch) == ["u1", "u2", "u3"]
    });
    let m = b.recv_event("pusher_internal:member_added");
    assert_eq!(data_of(&m)["user_id"], "u3");
    n1.publish(ch, "again", "z");
    assert_eq!(b.recv_not_count()["event"], "again");
}

/// Publishes raw payloads on a subject of the broker, as a foreign client would.
fn publish_raw(broker: &Broker, subject: &str, payloads: Vec<bytes::Bytes>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match broker.kind {
            Kind::Redis => {
                use fred::prelude::*;
                let c = Builder::from_config(Config::from_url(&broker.url()).unwrap())
                    .build()
                    .unwrap();
                c.init().await.unwrap();
                for p in payloads {
                    let _: () = c.publish(subject, p).await.unwrap();
                }
                c.quit().await.unwrap();
            }
            Kind::Nats => {
                let c = async_nats::connect(broker.url()).await.unwrap();
                for p in payloads {
                    c.publish(subject.to_owned(), p).await.unwrap();
                }
                c.flush().await.unwrap();
            }
        }
    });
}

/// A node that goes silent (no Bye, as after `kill -9`) is dropped after its lease: its member
/// is removed (member_removed to the survivors' subscribers) and its count with it. Junk on the
/// control subject is counted and ignored.
fn silent_node_expires_and_junk_is_ignored(kind: Kind) {
    use ringcast_cluster::wire::{encode_control, Control, ShareEntry};
    let broker = Broker::start(kind);
    let n1 = Node::start("n1", &broker.url(), 1_000);
    let ch = "presence-ghost";
    let mut a = n1.connect();
    a.subscribe_presence(ch, "u1");
    let ctl = match kind {
        Kind::Redis => "ringcast:ctl",
        Kind::Nats => "ringcast.ctl",
    };
    // A fake node announces itself with a member, then never speaks again.
    publish_raw(
        &broker,
        ctl,
        vec![
            bytes::Bytes::from_static(b""),
            bytes::Bytes::from_static(b"{\"event\":\"x\"}"),
            bytes::Bytes::from_static(b"RC\x01\x04\xff\xff\xff\xff"),
            encode_control(&Control::Hello {
                node: "ghost".into(),
                started_at: 1,
            }),
            encode_control(&Control::Snapshot {
                node: "ghost".into(),
                started_at: 1,
                seq: 0,
                part: 0,
                parts: 1,
                channels: vec![ShareEntry {
                    app_id: APP_ID.into(),
                    channel: ch.into(),
                    count: 1,
                    members: vec![("ghost-user".into(), "{}".into())],
                }],
            }),
        ],
    );
    let m = a.recv_event("pusher_internal:member_added");
    assert_eq!(data_of(&m)["user_id"], "ghost-user");
    assert_eq!(n1.count(ch), 2);
    assert_eq!(n1.users(ch), ["ghost-user", "u1"]);
    let bad = &n1.link.metrics.bad_messages;
    assert!(ringcast_engine::ClusterMetrics::get(bad) >= 3);
    // Silence for a lease: the ghost is dead.
    let m = a.recv_event("pusher_internal:member_removed");
    assert_eq!(data_of(&m)["user_id"], "ghost-user");
    assert_eq!(n1.count(ch), 1);
    assert_eq!(n1.users(ch), ["u1"]);
    assert!(ringcast_engine::ClusterMetrics::get(&n1.link.metrics.nodes_expired) >= 1);
}

/// A management plane stand-in: records what the bridge hands it; its state is one part
/// naming the node and how many snapshots it has made.
struct FakeMgmt {
    id: &'static str,
    applied: Mutex<Vec<(String, String)>>,
    snapshots: Mutex<u32>,
}

impl ringcast_cluster::ManagementPeer for FakeMgmt {
    fn apply(&self, from: &str, records: bytes::Bytes) {
        let r = String::from_utf8_lossy(&records).into_owned();
        self.applied.lock().unwrap().push((from.to_owned(), r));
    }
    fn snapshot(&self, _max: usize, reply: Box<dyn FnOnce(Vec<bytes::Bytes>) + Send>) {
        let n = {
            let mut s = self.snapshots.lock().unwrap();
            *s += 1;
            *s
        };
        reply(vec![bytes::Bytes::from(format!(
            "state-of-{}-{n}",
            self.id
        ))]);
    }
}

impl FakeMgmt {
    fn has(&self, from: &str, prefix: &str) -> bool {
        self.applied
            .lock()
            .unwrap()
            .iter()
            .any(|(f, r)| f == from && r.starts_with(prefix))
    }
}

/// The bridge carries management records: a node coming up gets the others' state and sends
/// its own; a local change reaches the other node; a peer's message gap, seen in a later
/// `Mgmt` or in its heartbeat, asks that peer for its state; a `MgmtSync` for this node is
/// answered with a snapshot.
fn management_records_cross_nodes_and_gaps_ask_for_state(kind: Kind) {
    use ringcast_cluster::wire::{encode_control, Control};
    let broker = Broker::start(kind);
    let fake = |id| {
        Arc::new(FakeMgmt {
            id,
            applied: Mutex::new(Vec::new()),
            snapshots: Mutex::new(0),
        })
    };
    let (m1, m2) = (fake("n1"), fake("n2"));
    let (out1, port1) = ringcast_cluster::management::channel(m1.clone());
    let (_out2, port2) = ringcast_cluster::management::channel(m2.clone());
    let n1 = Node::start_managed("n1", &broker.url(), 1_000, port1);
    let _n2 = Node::start_managed("n2", &broker.url(), 1_000, port2);
    // n2 came up: it asked for everyone's state (n1 answered) and sent its own.
    eventually("n1's state at n2", || m2.has("n1", "state-of-n1-"));
    eventually("n2's state at n1", || m1.has("n2", "state-of-n2-"));
    // A local change of n1 reaches n2.
    assert!(out1.send(bytes::Bytes::from_static(b"change-1")));
    eventually("the change at n2", || m2.has("n1", "change-1"));

    let ctl = match kind {
        Kind::Redis => "ringcast:ctl",
        Kind::Nats => "ringcast.ctl",
    };
    let gaps = || ringcast_engine::ClusterMetrics::get(&n1.link.metrics.sequence_gaps);
    let snapshots = || *m1.snapshots.lock().unwrap();
    let before = snapshots();
    // A ghost's MgmtSync for n1 is answered with a snapshot; its records are applied, and the
    // jump from 1 to 5 is a gap.
    publish_raw(
        &broker,
        ctl,
        vec![
            encode_control(&Control::MgmtSync {
                node: "ghost".into(),
                target: "n1".into(),
            }),
            encode_control(&Control::Mgmt {
                node: "ghost".into(),
                seq: 1,
                records: bytes::Bytes::from_static(b"ghost-1"),
            }),
            encode_control(&Control::Mgmt {
                node: "ghost".into(),
                seq: 5,
                records: bytes::Bytes::from_static(b"ghost-5"),
            }),
        ],
    );
    eventually("the ghost's records at n1", || {
        m1.has("ghost", "ghost-1") && m1.has("ghost", "ghost-5")
    });
    eventually("n1 answering the ghost's MgmtSync", || snapshots() > before);
    eventually("the gap counted", || gaps() >= 1);
    // A heartbeat naming a later message than the last one seen: that message was lost.
    let g = gaps();
    publish_raw(
        &broker,
        ctl,
        vec![encode_control(&Control::Heartbeat {
            node: "ghost".into(),
            started_at: 0,
            seq: 0,
            mgmt_seq: 6,
        })],
    );
    eventually("the heartbeat's gap counted", || gaps() > g);
}
