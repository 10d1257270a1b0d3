//! `GET /stats` (no auth): connection and channel totals plus per-app connection counts, read
//! from the engine's per-core counters (no query to the cores).

use ringcast_engine::Stats;
use serde_json::{json, Value};

/// The `/stats` body:
/// `{"connections": N, "channels": N, "apps": [{"app_id": "...", "connections": N}]}`.
pub fn render(s: &Stats) -> Value {
    json!({
        "connections": s.connections,
        "channels": s.channels,
        "apps": s.per_app.iter().map(|(id, n)| json!({"app_id": id, "connections": n})).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape() {
        let s = Stats {
            connections: 5,
            channels: 2,
            per_app: vec![("a".into(), 4), ("b".into(), 1)],
        };
        assert_eq!(
            render(&s),
            json!({"connections": 5, "channels": 2, "apps": [
                {"app_id": "a", "connections": 4}, {"app_id": "b", "connections": 1}]})
        );
    }
}
