//! History, cache info and the webhook log over the HTTP API.

mod common;

use common::*;
use serde_json::{json, Value};

const HISTORY_APP: &str = r#"
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
client_events = true
history_size = 5
"#;

fn server() -> Server {
    Server::with(Options {
        toml: HISTORY_APP,
        ..Options::default()
    })
}

fn trigger(s: &Server, channel: &str, name: &str, data: &str) {
    let body = json!({"name": name, "channels": [channel], "data": data}).to_string();
    let r = s.signed("POST", "/apps/app-id/events", &[], &body);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn channel_events_are_newest_first_with_sequence_and_limit() {
    let s = server();
    for i in 0..7 {
        trigger(&s, "news", "story", &i.to_string());
    }
    let r = s.signed("GET", "/apps/app-id/channels/news/events", &[], "");
    assert_eq!(r.status, 200, "{}", r.text());
    let evs = r.json()["events"].as_array().unwrap().clone();
    assert_eq!(evs.len(), 5, "history_size = 5");
    let seqs: Vec<u64> = evs.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![7, 6, 5, 4, 3]);
    assert_eq!(evs[0]["data"], "6");
    assert_eq!(evs[0]["event"], "story");
    assert_eq!(evs[0]["channel"], "news");
    assert!(evs[0]["timestamp"].as_str().unwrap().ends_with('Z'));
    let r = s.signed(
        "GET",
        "/apps/app-id/channels/news/events",
        &[("limit", "2")],
        "",
    );
    assert_eq!(r.json()["events"].as_array().unwrap().len(), 2);
    s.signed(
        "GET",
        "/apps/app-id/channels/news/events",
        &[("limit", "0")],
        "",
    )
    .expect_error(400, "bad_request");
    s.signed(
        "GET",
        "/apps/app-id/channels/news/events",
        &[("limit", "501")],
        "",
    )
    .expect_error(400, "bad_request");
    // Unsigned: 401 like the rest of the API.
    let r = http(
        s.api_addr,
        "GET",
        "/apps/app-id/channels/news/events",
        &[],
        b"",
    );
    assert_eq!(r.status, 401);
}

#[test]
fn event_log_and_history_filters_and_paging() {
    let s = server();
    for i in 0..30 {
        trigger(
            &s,
            &format!("ch-{}", i % 3),
            if i % 2 == 0 { "even" } else { "odd" },
            &i.to_string(),
        );
    }
    let log = s.signed("GET", "/apps/app-id/events/log", &[], "").json();
    let evs = log["events"].as_array().unwrap();
    assert_eq!(evs.len(), 15, "5 per channel are kept, 3 channels");
    let times: Vec<u64> = evs.iter().map(|e| e["time_ms"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");

    let h = s
        .signed(
            "GET",
            "/apps/app-id/history",
            &[("channel", "ch-1"), ("limit", "3")],
            "",
        )
        .json();
    assert_eq!(h["count"], 3);
    assert_eq!(h["hasMore"], true);
    assert!(h["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["channel"] == "ch-1"));
    let h = s
        .signed(
            "GET",
            "/apps/app-id/history",
            &[("event", "odd"), ("limit", "500")],
            "",
        )
        .json();
    assert!(h["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["event"] == "odd"));
    assert_eq!(h["hasMore"], false);
    let since = "2000-01-01T00:00:00Z";
    let h = s
        .signed(
            "GET",
            "/apps/app-id/history",
            &[("since", since), ("until", "2999-01-01")],
            "",
        )
        .json();
    assert_eq!(h["count"], 15);
    let h = s
        .signed(
            "GET",
            "/apps/app-id/history",
            &[("until", "2000-01-01T00:00:00+02:00")],
            "",
        )
        .json();
    assert_eq!(h["count"], 0);
    s.signed("GET", "/apps/app-id/history", &[("since", "yesterday")], "")
        .expect_error(400, "bad_request");
    s.signed("GET", "/apps/app-id/history", &[("limit", "1000")], "")
        .expect_error(400, "bad_request");
}

#[test]
fn history_is_off_by_default_and_cache_info_reports_the_last_event() {
    let s = Server::start();
    trigger(&s, "cache-quotes", "q", "1.5");
    let r = s
        .signed("GET", "/apps/app-id/channels/cache-quotes/events", &[], "")
        .json();
    assert_eq!(r["events"], json!([]));
    let info = s
        .signed(
            "GET",
            "/apps/app-id/channels/cache-quotes",
            &[("info", "cache")],
            "",
        )
        .json();
    let cache: &Value = &info["cache"];
    assert_eq!(cache["data"], "1.5", "{info}");
    assert!(cache["ttl"].as_u64().unwrap() > 0);
}

#[test]
fn webhook_log_without_webhooks_is_empty_and_redeliver_is_404() {
    let s = server();
    let r = s.signed("GET", "/apps/app-id/webhooks", &[], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"deliveries": []}));
    s.signed(
        "POST",
        "/apps/app-id/webhooks/redeliver",
        &[],
        "{\"id\":\"x\"}",
    )
    .expect_error(404, "not_found");
    s.signed("POST", "/apps/app-id/webhooks/redeliver", &[], "{}")
        .expect_error(400, "bad_request");
}

#[test]
fn health_answers_503_once_shutdown_begins() {
    let s = Server::with(Options {
        separate_api_listener: true,
        ..Options::default()
    });
    assert_eq!(http(s.api_addr, "GET", "/health", &[], b"").status, 200);
    s.handle().shutdown();
    let r = http(s.api_addr, "GET", "/health", &[], b"");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["shutting_down"], true);
}
