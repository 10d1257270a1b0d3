//! Pusher protocol 7 messages: client message parsing (simd-json) and server message encoding.
//!
//! Every server message exists twice: a function returning the JSON text as `String`, and a
//! `*_frame` twin returning a complete WebSocket text frame. Both size the output exactly first
//! and then write it, so each performs a single allocation.

use std::fmt;

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::json::{Count, Nested, Out};
use crate::socket_id::SocketId;
use crate::ws::text_frame_with_capacity;

/// Event-name prefixes: `pusher:`/`pusher_internal:` or `relay:` for both.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dialect {
    /// `pusher:` and `pusher_internal:` (Pusher protocol 7, what pusher-js speaks).
    Pusher,
    /// `relay:` for both public and internal events.
    Relay,
}

impl Dialect {
    /// Prefix of public protocol events (`"pusher:"` / `"relay:"`).
    pub fn prefix(self) -> &'static str {
        match self {
            Dialect::Pusher => "pusher:",
            Dialect::Relay => "relay:",
        }
    }

    /// Prefix of internal protocol events (`"pusher_internal:"` / `"relay:"`).
    pub fn internal_prefix(self) -> &'static str {
        match self {
            Dialect::Pusher => "pusher_internal:",
            Dialect::Relay => "relay:",
        }
    }
}

/// A parsed client-to-server message. Its strings borrow from the message text wherever the
/// JSON has no escapes (the message is never copied as a whole).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ClientMessage<'a> {
    /// `pusher:subscribe`. `auth` is as sent (pusher-js sends `""` for public channels).
    Subscribe {
        /// Channel name (not yet validated).
        channel: Cow<'a, str>,
        /// `auth` as sent (`None` if absent or null).
        auth: Option<Cow<'a, str>>,
        /// Presence `channel_data` string exactly as sent (hash this, never a re-serialisation).
        channel_data: Option<Cow<'a, str>>,
    },
    /// `pusher:unsubscribe`.
    Unsubscribe {
        /// Channel name.
        channel: Cow<'a, str>,
    },
    /// `pusher:ping`.
    Ping,
    /// `pusher:pong`.
    Pong,
    /// `pusher:signin`.
    Signin {
        /// `<key>:<signature>`.
        auth: Cow<'a, str>,
        /// The `user_data` string exactly as sent.
        user_data: Cow<'a, str>,
    },
    /// `client-*` event. `data` is the JSON text of the data value exactly as the client sent it
    /// (the value's span in the message, borrowed: an object stays its JSON text, a string stays
    /// a quoted JSON string literal). Absent data -> `None`.
    ClientEvent {
        /// Event name (starts with `client-`).
        event: Cow<'a, str>,
        /// Channel name (not yet validated).
        channel: Cow<'a, str>,
        /// Raw JSON text of `data`, `None` if absent.
        data: Option<Cow<'a, str>>,
    },
    /// Any other event name (unknown `pusher:*` or a non-client event): reply `pusher:error`
    /// with code `null`.
    Unknown {
        /// The event name as sent.
        event: Cow<'a, str>,
    },
}

/// Why a client message could not be parsed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum MessageError {
    /// Not valid JSON (or not a JSON object).
    Json(String),
    /// A required field is absent.
    MissingField(&'static str),
    /// A field has the wrong type.
    BadField(&'static str),
    /// A field the server reads appears more than once in one object.
    DuplicateField(&'static str),
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::Json(e) => write!(f, "Invalid JSON: {e}"),
            MessageError::MissingField(name) => write!(f, "Missing field '{name}'"),
            MessageError::BadField(name) => write!(f, "Invalid value for field '{name}'"),
            MessageError::DuplicateField(name) => write!(f, "Duplicate field '{name}'"),
        }
    }
}

impl std::error::Error for MessageError {}

/// A JSON string, borrowed from the input when it has no escapes.
#[derive(serde::Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

/// The members of one JSON object that the server reads (`wanted`), as raw JSON text borrowed
/// from the input; every other member is checked to be valid JSON and skipped. The one rule for
/// duplicate keys: a wanted key that appears twice is an error (`DuplicateField`), so no two
/// readers can disagree about which occurrence counts. Keys are compared unescaped.
struct Members<'a> {
    wanted: &'static [&'static str],
    values: [Option<&'a RawValue>; 4],
    duplicate: Option<&'static str>,
}

struct MembersSeed(&'static [&'static str]);

impl<'de> serde::de::DeserializeSeed<'de> for MembersSeed {
    type Value = Members<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Members<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for MembersSeed {
    type Value = Members<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Members<'de>, A::Error> {
        let mut out = Members {
            wanted: self.0,
            values: [None; 4],
            duplicate: None,
        };
        while let Some(Str(k)) = m.next_key::<Str<'de>>()? {
            match self.0.iter().position(|w| *w == k) {
                Some(i) => {
                    let v: &'de RawValue = m.next_value()?;
                    if out.values[i].is_some() && out.duplicate.is_none() {
                        out.duplicate = Some(self.0[i]);
                    }
                    out.values[i] = Some(v);
                }
                None => {
                    m.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

impl<'a> Members<'a> {
    fn parse(text: &'a str, wanted: &'static [&'static str]) -> Result<Members<'a>, String> {
        debug_assert!(wanted.len() <= 4);
        use serde::de::DeserializeSeed;
        let mut de = serde_json::Deserializer::from_str(text);
        let m = MembersSeed(wanted)
            .deserialize(&mut de)
            .map_err(|e| e.to_string())?;
        de.end().map_err(|e| e.to_string())?;
        Ok(m)
    }

    fn check(self) -> Result<Self, MessageError> {
        match self.duplicate {
            Some(k) => Err(MessageError::DuplicateField(k)),
            None => Ok(self),
        }
    }

    fn raw(&self, key: &'static str) -> Option<&'a RawValue> {
        let i = self.wanted.iter().position(|w| *w == key)?;
        self.values[i]
    }

    /// `Ok(None)` if absent or `null`, `Ok(Some)` if a string, `BadField` otherwise.
    fn opt_str(&self, key: &'static str) -> Result<Option<Cow<'a, str>>, MessageError> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) if v.get() == "null" => Ok(None),
            Some(v) => serde_json::from_str::<Str<'a>>(v.get())
                .map(|s| Some(s.0))
                .map_err(|_| MessageError::BadField(key)),
        }
    }

    fn req_str(&self, key: &'static str) -> Result<Cow<'a, str>, MessageError> {
        self.opt_str(key)?.ok_or(MessageError::MissingField(key))
    }
}

const TOP: &[&str] = &["event", "channel", "data"];
const SUBSCRIBE: &[&str] = &["channel", "auth", "channel_data"];
const UNSUBSCRIBE: &[&str] = &["channel"];
const SIGNIN: &[&str] = &["auth", "user_data"];

/// Reads `data` (an object, or a JSON string encoding one) with `f`. The string form is
/// rare (the object form is what pusher-js sends) and needs its own decoded text, so its
/// result is made owned.
fn with_data_object<'a>(
    root: &Members<'a>,
    wanted: &'static [&'static str],
    f: impl for<'b> Fn(&Members<'b>) -> Result<ClientMessage<'b>, MessageError>,
) -> Result<ClientMessage<'a>, MessageError> {
    let data = root.raw("data").ok_or(MessageError::MissingField("data"))?;
    let text = data.get();
    if text.starts_with('{') {
        let m = Members::parse(text, wanted).map_err(|_| MessageError::BadField("data"))?;
        return f(&m.check()?);
    }
    let inner =
        serde_json::from_str::<Str<'_>>(text).map_err(|_| MessageError::BadField("data"))?;
    let inner = inner.0;
    if !inner.trim_start().starts_with('{') {
        return Err(MessageError::BadField("data"));
    }
    let m = Members::parse(&inner, wanted).map_err(|_| MessageError::BadField("data"))?;
    Ok(f(&m.check()?)?.into_owned())
}

impl ClientMessage<'_> {
    /// The same message owning its strings.
    pub fn into_owned(self) -> ClientMessage<'static> {
        fn o(c: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(c.into_owned())
        }
        match self {
            ClientMessage::Subscribe {
                channel,
                auth,
                channel_data,
            } => ClientMessage::Subscribe {
                channel: o(channel),
                auth: auth.map(o),
                channel_data: channel_data.map(o),
            },
            ClientMessage::Unsubscribe { channel } => ClientMessage::Unsubscribe {
                channel: o(channel),
            },
            ClientMessage::Ping => ClientMessage::Ping,
            ClientMessage::Pong => ClientMessage::Pong,
            ClientMessage::Signin { auth, user_data } => ClientMessage::Signin {
                auth: o(auth),
                user_data: o(user_data),
            },
            ClientMessage::ClientEvent {
                event,
                channel,
                data,
            } => ClientMessage::ClientEvent {
                event: o(event),
                channel: o(channel),
                data: data.map(o),
            },
            ClientMessage::Unknown { event } => ClientMessage::Unknown { event: o(event) },
        }
    }
}

/// Parses one client text message: one JSON reading (serde_json, borrowing), one rule for
/// duplicate keys (a field the server reads may appear once; see [`MessageError::DuplicateField`]),
/// and every field, the raw `data` span of client events included, taken from that reading.
/// The message is not copied: strings borrow from `text` unless they contain escapes.
///
/// `data` of `subscribe`/`unsubscribe`/`signin` may be an object or a JSON-encoded string of one.
/// The dialect decides the accepted prefix (`"pusher:subscribe"` vs `"relay:subscribe"`).
pub fn parse_client_message(
    dialect: Dialect,
    text: &[u8],
) -> Result<ClientMessage<'_>, MessageError> {
    let text = std::str::from_utf8(text).map_err(|e| MessageError::Json(e.to_string()))?;
    let root = Members::parse(text, TOP)
        .map_err(MessageError::Json)?
        .check()?;
    let event = root.req_str("event")?;
    if event.starts_with("client-") {
        let channel = root.req_str("channel")?;
        let data = root.raw("data").map(|v| Cow::Borrowed(v.get()));
        return Ok(ClientMessage::ClientEvent {
            event,
            channel,
            data,
        });
    }
    let Some(name) = event.strip_prefix(dialect.prefix()) else {
        return Ok(ClientMessage::Unknown { event });
    };
    match name {
        "subscribe" => with_data_object(&root, SUBSCRIBE, |d| {
            Ok(ClientMessage::Subscribe {
                channel: d.req_str("channel")?,
                auth: d.opt_str("auth")?,
                channel_data: d.opt_str("channel_data")?,
            })
        }),
        "unsubscribe" => with_data_object(&root, UNSUBSCRIBE, |d| {
            Ok(ClientMessage::Unsubscribe {
                channel: d.req_str("channel")?,
            })
        }),
        "ping" => Ok(ClientMessage::Ping),
        "pong" => Ok(ClientMessage::Pong),
        "signin" => with_data_object(&root, SIGNIN, |d| {
            Ok(ClientMessage::Signin {
                auth: d.req_str("auth")?,
                user_data: d.req_str("user_data")?,
            })
        }),
        _ => Ok(ClientMessage::Unknown { event }),
    }
}

// ---------------------------------------------------------------------------------------------
// Server messages

/// Presence state sent to a new presence subscriber: unique users including the subscriber.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PresenceSnapshot<'a> {
    /// `(user_id, user_info raw JSON text, "null" if none)`, in the order to emit.
    pub members: Vec<(&'a str, &'a str)>,
}

fn into_string(v: Vec<u8>) -> String {
    // Every writer only appends &str pieces, so the buffer is valid UTF-8.
    match String::from_utf8(v) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Renders with `$f(out, args..)` into an exactly sized `String`.
macro_rules! render_string {
    ($f:ident ( $($a:expr),* )) => {{
        let mut c = Count(0);
        $f(&mut c, $($a),*);
        let mut v = Vec::with_capacity(c.0);
        $f(&mut v, $($a),*);
        debug_assert_eq!(v.len(), c.0, "size pass and write pass disagree");
        into_string(v)
    }};
}

/// Renders with `$f(out, args..)` into an exactly sized WebSocket text frame.
macro_rules! render_frame {
    ($f:ident ( $($a:expr),* )) => {{
        let mut c = Count(0);
        $f(&mut c, $($a),*);
        text_frame_with_capacity(c.0, |v| {
            let start = v.len();
            $f(v, $($a),*);
            debug_assert_eq!(v.len() - start, c.0, "size pass and write pass disagree");
        })
    }};
}

/// `{"event":"<prefix><name>"`
fn head<O: Out>(o: &mut O, prefix: &str, name: &str) {
    o.raw("{\"event\":\"");
    o.raw(prefix);
    o.raw(name);
    o.raw("\"");
}

/// `,"channel":"<channel>"`
fn chan<O: Out>(o: &mut O, channel: &str) {
    o.raw(",\"channel\":");
    o.lit(channel);
}

fn w_connection_established<O: Out>(o: &mut O, d: Dialect, id: &SocketId, timeout: u32) {
    head(o, d.prefix(), "connection_established");
    o.raw(",\"data\":\"");
    {
        let mut n = Nested(&mut *o);
        n.raw("{\"socket_id\":\"");
        n.num(id.hi);
        n.raw(".");
        n.num(id.lo);
        n.raw("\",\"activity_timeout\":");
        n.num(u64::from(timeout));
        n.raw("}");
    }
    o.raw("\"}");
}

fn w_error<O: Out>(o: &mut O, d: Dialect, code: Option<u16>, message: &str) {
    head(o, d.prefix(), "error");
    o.raw(",\"data\":{\"code\":");
    match code {
        Some(c) => o.num(u64::from(c)),
        None => o.raw("null"),
    }
    o.raw(",\"message\":");
    o.lit(message);
    o.raw("}}");
}

fn w_empty<O: Out>(o: &mut O, d: Dialect, name: &str) {
    head(o, d.prefix(), name);
    o.raw(",\"data\":{}}");
}

fn w_subscription_succeeded<O: Out>(
    o: &mut O,
    d: Dialect,
    channel: &str,
    presence: Option<&PresenceSnapshot<'_>>,
) {
    head(o, d.internal_prefix(), "subscription_succeeded");
    chan(o, channel);
    o.raw(",\"data\":\"");
    {
        let mut n = Nested(&mut *o);
        match presence {
            None => n.raw("{}"),
            Some(p) => {
                n.raw("{\"presence\":{\"ids\":[");
                for (i, (id, _)) in p.members.iter().enumerate() {
                    if i > 0 {
                        n.raw(",");
                    }
                    n.lit(id);
                }
                n.raw("],\"hash\":{");
                for (i, (id, info)) in p.members.iter().enumerate() {
                    if i > 0 {
                        n.raw(",");
                    }
                    n.lit(id);
                    n.raw(":");
                    n.raw(info);
                }
                n.raw("},\"count\":");
                n.num(p.members.len() as u64);
                n.raw("}}");
            }
        }
    }
    o.raw("\"}");
}

fn w_member_added<O: Out>(o: &mut O, d: Dialect, channel: &str, user_id: &str, info: &str) {
    head(o, d.internal_prefix(), "member_added");
    chan(o, channel);
    o.raw(",\"data\":\"");
    {
        let mut n = Nested(&mut *o);
        n.raw("{\"user_id\":");
        n.lit(user_id);
        n.raw(",\"user_info\":");
        n.raw(info);
        n.raw("}");
    }
    o.raw("\"}");
}

fn w_member_removed<O: Out>(o: &mut O, d: Dialect, channel: &str, user_id: &str) {
    head(o, d.internal_prefix(), "member_removed");
    chan(o, channel);
    o.raw(",\"data\":\"");
    {
        let mut n = Nested(&mut *o);
        n.raw("{\"user_id\":");
        n.lit(user_id);
        n.raw("}");
    }
    o.raw("\"}");
}

fn w_subscription_error<O: Out>(
    o: &mut O,
    d: Dialect,
    channel: &str,
    kind: &str,
    error: &str,
    status: u16,
) {
    head(o, d.prefix(), "subscription_error");
    chan(o, channel);
    o.raw(",\"data\":{\"type\":");
    o.lit(kind);
    o.raw(",\"error\":");
    o.lit(error);
    o.raw(",\"status\":");
    o.num(u64::from(status));
    o.raw("}}");
}

fn w_signin_success<O: Out>(o: &mut O, d: Dialect, user_data: &str) {
    head(o, d.prefix(), "signin_success");
    o.raw(",\"data\":{\"user_data\":");
    o.lit(user_data);
    o.raw("}}");
}

fn w_subscription_count<O: Out>(o: &mut O, d: Dialect, channel: &str, count: u64) {
    head(o, d.internal_prefix(), "subscription_count");
    chan(o, channel);
    o.raw(",\"data\":\"");
    {
        let mut n = Nested(&mut *o);
        n.raw("{\"subscription_count\":");
        n.num(count);
        n.raw("}");
    }
    o.raw("\"}");
}

fn w_cache_miss<O: Out>(o: &mut O, d: Dialect, channel: &str) {
    head(o, d.prefix(), "cache_miss");
    chan(o, channel);
    o.raw("}");
}

fn w_watchlist_events<O: Out>(o: &mut O, d: Dialect, events: &[(&str, &[&str])]) {
    head(o, d.internal_prefix(), "watchlist_events");
    o.raw(",\"data\":{\"events\":[");
    for (i, (name, ids)) in events.iter().enumerate() {
        if i > 0 {
            o.raw(",");
        }
        o.raw("{\"name\":");
        o.lit(name);
        o.raw(",\"user_ids\":[");
        for (j, id) in ids.iter().enumerate() {
            if j > 0 {
                o.raw(",");
            }
            o.lit(id);
        }
        o.raw("]}");
    }
    o.raw("]}}");
}

fn w_event<O: Out>(o: &mut O, event: &str, channel: &str, data: &str, user_id: Option<&str>) {
    o.raw("{\"event\":");
    o.lit(event);
    chan(o, channel);
    o.raw(",\"data\":");
    o.lit(data);
    if let Some(u) = user_id {
        o.raw(",\"user_id\":");
        o.lit(u);
    }
    o.raw("}");
}

fn w_client_event<O: Out>(
    o: &mut O,
    event: &str,
    channel: &str,
    data_json: Option<&str>,
    user_id: Option<&str>,
) {
    o.raw("{\"event\":");
    o.lit(event);
    chan(o, channel);
    if let Some(data) = data_json {
        o.raw(",\"data\":");
        o.raw(data);
    }
    if let Some(u) = user_id {
        o.raw(",\"user_id\":");
        o.lit(u);
    }
    o.raw("}");
}

/// `{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\",\"activity_timeout\":120}"}`
/// (`data` is a JSON string).
pub fn connection_established(d: Dialect, socket_id: &SocketId, activity_timeout: u32) -> String {
    render_string!(w_connection_established(d, socket_id, activity_timeout))
}
/// Frame twin of [`connection_established`].
pub fn connection_established_frame(
    d: Dialect,
    socket_id: &SocketId,
    activity_timeout: u32,
) -> Bytes {
    render_frame!(w_connection_established(d, socket_id, activity_timeout))
}

/// `{"event":"pusher:error","data":{"code":4001,"message":"..."}}` (`code` may be `null`).
pub fn error(d: Dialect, code: Option<u16>, message: &str) -> String {
    render_string!(w_error(d, code, message))
}
/// Frame twin of [`error`].
pub fn error_frame(d: Dialect, code: Option<u16>, message: &str) -> Bytes {
    render_frame!(w_error(d, code, message))
}

/// `{"event":"pusher:ping","data":{}}`
pub fn ping(d: Dialect) -> String {
    render_string!(w_empty(d, "ping"))
}
/// Frame twin of [`ping`].
pub fn ping_frame(d: Dialect) -> Bytes {
    render_frame!(w_empty(d, "ping"))
}

/// `{"event":"pusher:pong","data":{}}`
pub fn pong(d: Dialect) -> String {
    render_string!(w_empty(d, "pong"))
}
/// Frame twin of [`pong`].
pub fn pong_frame(d: Dialect) -> Bytes {
    render_frame!(w_empty(d, "pong"))
}

/// `{"event":"pusher_internal:subscription_succeeded","channel":"c","data":"{}"}`; with a presence
/// snapshot `data` is the JSON string of `{"presence":{"ids":[..],"hash":{..},"count":N}}`
/// (`user_info` texts are inserted verbatim).
pub fn subscription_succeeded(
    d: Dialect,
    channel: &str,
    presence: Option<&PresenceSnapshot<'_>>,
) -> String {
    render_string!(w_subscription_succeeded(d, channel, presence))
}
/// Frame twin of [`subscription_succeeded`].
pub fn subscription_succeeded_frame(
    d: Dialect,
    channel: &str,
    presence: Option<&PresenceSnapshot<'_>>,
) -> Bytes {
    render_frame!(w_subscription_succeeded(d, channel, presence))
}

/// `{"event":"pusher_internal:member_added","channel":"c","data":"{\"user_id\":\"2\",\"user_info\":{..}}"}`
/// (`user_info_json` inserted verbatim).
pub fn member_added(d: Dialect, channel: &str, user_id: &str, user_info_json: &str) -> String {
    render_string!(w_member_added(d, channel, user_id, user_info_json))
}
/// Frame twin of [`member_added`].
pub fn member_added_frame(d: Dialect, channel: &str, user_id: &str, user_info_json: &str) -> Bytes {
    render_frame!(w_member_added(d, channel, user_id, user_info_json))
}

/// `{"event":"pusher_internal:member_removed","channel":"c","data":"{\"user_id\":\"2\"}"}`
pub fn member_removed(d: Dialect, channel: &str, user_id: &str) -> String {
    render_string!(w_member_removed(d, channel, user_id))
}
/// Frame twin of [`member_removed`].
pub fn member_removed_frame(d: Dialect, channel: &str, user_id: &str) -> Bytes {
    render_frame!(w_member_removed(d, channel, user_id))
}

/// `{"event":"pusher:subscription_error","channel":"c","data":{"type":"AuthError","error":"..","status":401}}`
pub fn subscription_error(
    d: Dialect,
    channel: &str,
    kind: &str,
    error: &str,
    status: u16,
) -> String {
    render_string!(w_subscription_error(d, channel, kind, error, status))
}
/// Frame twin of [`subscription_error`].
pub fn subscription_error_frame(
    d: Dialect,
    channel: &str,
    kind: &str,
    error: &str,
    status: u16,
) -> Bytes {
    render_frame!(w_subscription_error(d, channel, kind, error, status))
}

/// `{"event":"pusher:signin_success","data":{"user_data":"<the user_data string>"}}`
pub fn signin_success(d: Dialect, user_data: &str) -> String {
    render_string!(w_signin_success(d, user_data))
}
/// Frame twin of [`signin_success`].
pub fn signin_success_frame(d: Dialect, user_data: &str) -> Bytes {
    render_frame!(w_signin_success(d, user_data))
}

/// `{"event":"pusher_internal:subscription_count","channel":"c","data":"{\"subscription_count\":3}"}`
pub fn subscription_count(d: Dialect, channel: &str, count: u64) -> String {
    render_string!(w_subscription_count(d, channel, count))
}
/// Frame twin of [`subscription_count`].
pub fn subscription_count_frame(d: Dialect, channel: &str, count: u64) -> Bytes {
    render_frame!(w_subscription_count(d, channel, count))
}

/// `{"event":"pusher:cache_miss","channel":"c"}` (no `data`, as in the Pusher docs).
pub fn cache_miss(d: Dialect, channel: &str) -> String {
    render_string!(w_cache_miss(d, channel))
}
/// Frame twin of [`cache_miss`].
pub fn cache_miss_frame(d: Dialect, channel: &str) -> Bytes {
    render_frame!(w_cache_miss(d, channel))
}

/// `{"event":"pusher_internal:watchlist_events","data":{"events":[{"name":"online","user_ids":["1"]}]}}`
/// (`events` = `(name, user_ids)` pairs, name `"online"` or `"offline"`).
pub fn watchlist_events(d: Dialect, events: &[(&str, &[&str])]) -> String {
    render_string!(w_watchlist_events(d, events))
}
/// Frame twin of [`watchlist_events`].
pub fn watchlist_events_frame(d: Dialect, events: &[(&str, &[&str])]) -> Bytes {
    render_frame!(w_watchlist_events(d, events))
}

/// Server-triggered event `{"event":..,"channel":..,"data":"<data>"[,"user_id":..]}`: `data` is
/// the HTTP API string, emitted as a JSON string verbatim.
pub fn event(event: &str, channel: &str, data: &str, user_id: Option<&str>) -> String {
    render_string!(w_event(event, channel, data, user_id))
}
/// Frame twin of [`event`]: the fan-out hot path (exactly one allocation, no intermediate String).
pub fn event_frame(event: &str, channel: &str, data: &str, user_id: Option<&str>) -> Bytes {
    render_frame!(w_event(event, channel, data, user_id))
}

/// Client event relay `{"event":..,"channel":..[,"data":<data_json>][,"user_id":..]}`: `data_json`
/// is raw JSON text inserted as is; `user_id` (top level) on presence channels.
pub fn client_event(
    event: &str,
    channel: &str,
    data_json: Option<&str>,
    user_id: Option<&str>,
) -> String {
    render_string!(w_client_event(event, channel, data_json, user_id))
}
/// Frame twin of [`client_event`].
pub fn client_event_frame(
    event: &str,
    channel: &str,
    data_json: Option<&str>,
    user_id: Option<&str>,
) -> Bytes {
    render_frame!(w_client_event(event, channel, data_json, user_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::{text_frame, FrameDecoder, Message, Role};

    fn parse(d: Dialect, s: &str) -> Result<ClientMessage<'_>, MessageError> {
        parse_client_message(d, s.as_bytes())
    }

    fn p(s: &str) -> Result<ClientMessage<'_>, MessageError> {
        parse(Dialect::Pusher, s)
    }

    fn sub<'a>(
        channel: &'a str,
        auth: Option<&'a str>,
        channel_data: Option<&'a str>,
    ) -> ClientMessage<'a> {
        ClientMessage::Subscribe {
            channel: channel.into(),
            auth: auth.map(Into::into),
            channel_data: channel_data.map(Into::into),
        }
    }

    #[test]
    fn parses_subscribe_as_pusher_js_sends_it() {
        assert_eq!(
            p(r#"{"event":"pusher:subscribe","data":{"auth":"","channel":"my-channel"}}"#),
            Ok(sub("my-channel", Some(""), None))
        );
        assert_eq!(
            p(
                r#"{"event":"pusher:subscribe","data":{"auth":"k:abc","channel_data":"{\"user_id\":\"1\",\"user_info\":{}}","channel":"presence-room"}}"#
            ),
            Ok(sub(
                "presence-room",
                Some("k:abc"),
                Some(r#"{"user_id":"1","user_info":{}}"#)
            ))
        );
        assert_eq!(
            p(r#"{"event":"pusher:subscribe","data":{"channel":"c","auth":null}}"#),
            Ok(sub("c", None, None))
        );
    }

    #[test]
    fn subscribe_data_may_be_a_json_string() {
        assert_eq!(
            p(
                r#"{"event":"pusher:subscribe","data":"{\"channel\":\"private-a\",\"auth\":\"k:s\",\"channel_data\":\"{\\\"user_id\\\":1}\"}"}"#
            ),
            Ok(sub("private-a", Some("k:s"), Some(r#"{"user_id":1}"#)))
        );
        assert_eq!(
            p(r#"{"event":"pusher:subscribe","data":"not json"}"#),
            Err(MessageError::BadField("data"))
        );
        assert_eq!(
            p(r#"{"event":"pusher:subscribe","data":"[1]"}"#),
            Err(MessageError::BadField("data"))
        );
        assert_eq!(
            p(r#"{"event":"pusher:subscribe","data":5}"#),
            Err(MessageError::BadField("data"))
        );
    }

    #[test]
    fn subscribe_field_errors() {
        assert_eq!(
            p(r#"{"event":"pusher:subscribe"}"#),
            Err(MessageError::MissingField("data"))
        );
        assert_eq!(
            p(r#"{"event":"pusher:subscribe","data":{}}"#),
            Err(MessageError::MissingField("channel"))
        );
        assert_eq!(
            p(r#"{"event":"pusher:subscribe","data":{"channel":1}}"#),
            Err(MessageError::BadField("channel"))
        );
        assert_eq!(
            p(r#"{"event":"pusher:subscribe","data":{"channel":"c","auth":1}}"#),
            Err(MessageError::BadField("auth"))
        );
        assert_eq!(
            p(
                r#"{"event":"pusher:subscribe","data":{"channel":"c","channel_data":{"user_id":1}}}"#
            ),
            Err(MessageError::BadField("channel_data"))
        );
    }

    #[test]
    fn parses_other_protocol_events() {
        assert_eq!(
            p(r#"{"event":"pusher:unsubscribe","data":{"channel":"c"}}"#),
            Ok(ClientMessage::Unsubscribe {
                channel: "c".into()
            })
        );
        assert_eq!(
            p(r#"{"event":"pusher:unsubscribe","data":"{\"channel\":\"c\"}"}"#),
            Ok(ClientMessage::Unsubscribe {
                channel: "c".into()
            })
        );
        assert_eq!(
            p(r#"{"event":"pusher:ping","data":{}}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(p(r#"{"event":"pusher:ping"}"#), Ok(ClientMessage::Ping));
        assert_eq!(
            p(r#" { "data" : {} , "event" : "pusher:pong" } "#),
            Ok(ClientMessage::Pong)
        );
        assert_eq!(
            p(r#"{"event":"pusher:signin","data":{"auth":"k:sig","user_data":"{\"id\":\"1\"}"}}"#),
            Ok(ClientMessage::Signin {
                auth: "k:sig".into(),
                user_data: r#"{"id":"1"}"#.into()
            })
        );
        assert_eq!(
            p(r#"{"event":"pusher:signin","data":{"auth":"k:sig"}}"#),
            Err(MessageError::MissingField("user_data"))
        );
    }

    #[test]
    fn unknown_events() {
        for ev in [
            "pusher:foo",
            "pusher_internal:subscription_succeeded",
            "my-event",
            "relay:subscribe",
            "pusher:",
        ] {
            let msg = format!(r#"{{"event":"{ev}","data":{{}}}}"#);
            assert_eq!(
                p(&msg),
                Ok(ClientMessage::Unknown { event: ev.into() }),
                "{ev}"
            );
        }
    }

    #[test]
    fn relay_dialect() {
        assert_eq!(
            parse(
                Dialect::Relay,
                r#"{"event":"relay:subscribe","data":{"channel":"c"}}"#
            ),
            Ok(sub("c", None, None))
        );
        assert_eq!(
            parse(Dialect::Relay, r#"{"event":"relay:ping"}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            parse(
                Dialect::Relay,
                r#"{"event":"pusher:subscribe","data":{"channel":"c"}}"#
            ),
            Ok(ClientMessage::Unknown {
                event: "pusher:subscribe".into()
            })
        );
    }

    #[test]
    fn client_event_data_relayed_byte_for_byte() {
        let data = r#"{ "a" : "x\"y\u00e9\n", "b":[1, 2.50, 1e3, -0], "c":{"d":null} }"#;
        let msg = format!(r#"{{"event":"client-typing","channel":"private-room","data":{data}}}"#);
        assert_eq!(
            p(&msg),
            Ok(ClientMessage::ClientEvent {
                event: "client-typing".into(),
                channel: "private-room".into(),
                data: Some(data.into()),
            })
        );
        // Data before event, string data stays a quoted JSON literal.
        let msg = r#"{"data":"he said \"hi\"","channel":"presence-x","event":"client-say"}"#;
        assert_eq!(
            p(msg),
            Ok(ClientMessage::ClientEvent {
                event: "client-say".into(),
                channel: "presence-x".into(),
                data: Some(r#""he said \"hi\"""#.into()),
            })
        );
        for (raw, expected) in [
            ("42", Some("42")),
            ("null", Some("null")),
            ("true", Some("true")),
            ("[]", Some("[]")),
        ] {
            let msg = format!(r#"{{"event":"client-x","channel":"private-c","data":{raw}}}"#);
            match p(&msg) {
                Ok(ClientMessage::ClientEvent { data, .. }) => {
                    assert_eq!(data.as_deref(), expected)
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            p(r#"{"event":"client-x","channel":"private-c"}"#),
            Ok(ClientMessage::ClientEvent {
                event: "client-x".into(),
                channel: "private-c".into(),
                data: None
            })
        );
        assert_eq!(
            p(r#"{"event":"client-x","data":{}}"#),
            Err(MessageError::MissingField("channel"))
        );
        // Client events are accepted regardless of dialect.
        assert!(matches!(
            parse(
                Dialect::Relay,
                r#"{"event":"client-x","channel":"private-c","data":{}}"#
            ),
            Ok(ClientMessage::ClientEvent { .. })
        ));
    }

    #[test]
    fn client_event_escaped_key_falls_back_to_reserialisation() {
        let msg = r#"{"event":"client-x","channel":"private-c","d\u0061ta":{"a": 1}}"#;
        match p(msg) {
            Ok(ClientMessage::ClientEvent { data: Some(d), .. }) => {
                let v: serde_json::Value = serde_json::from_str(&d).unwrap();
                assert_eq!(v, serde_json::json!({"a": 1}));
            }
            other => panic!("{other:?}"),
        }
    }

    /// One reading, one rule: a field the server reads may appear once. (Before, a scanner
    /// took the last `event`/`data` and simd-json the first, so these messages meant two
    /// different things at once.)
    #[test]
    fn duplicate_fields_are_rejected_by_one_rule() {
        assert_eq!(
            p(r#"{"event":"pusher:ping","event":"client-x","channel":"private-c"}"#),
            Err(MessageError::DuplicateField("event"))
        );
        assert_eq!(
            p(r#"{"event":"client-x","channel":"private-c","data":1,"data":2}"#),
            Err(MessageError::DuplicateField("data"))
        );
        assert_eq!(
            p(r#"{"event":"pusher:subscribe","data":{"channel":"a","channel":"private-b"}}"#),
            Err(MessageError::DuplicateField("channel"))
        );
        assert_eq!(
            p(
                r#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\",\"auth\":\"\",\"auth\":\"k:s\"}"}"#
            ),
            Err(MessageError::DuplicateField("auth"))
        );
        // Escaped keys are the same key.
        assert_eq!(
            p(r#"{"event":"pusher:ping","\u0065vent":"client-x"}"#),
            Err(MessageError::DuplicateField("event"))
        );
        // Fields the server does not read may repeat (they are only checked to be JSON).
        assert_eq!(
            p(r#"{"event":"pusher:ping","x":1,"x":[2],"data":{}}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            MessageError::DuplicateField("event").to_string(),
            "Duplicate field 'event'"
        );
    }

    /// The message is not copied: strings without escapes and the client event's `data` span
    /// borrow from the input.
    #[test]
    fn parsed_fields_borrow_from_the_message() {
        let msg = r#"{"event":"client-x","channel":"private-c","data":{"a":[1,2]}}"#;
        let range = msg.as_bytes().as_ptr_range();
        let inside = |s: &str| range.contains(&s.as_ptr());
        match p(msg) {
            Ok(ClientMessage::ClientEvent {
                event: Cow::Borrowed(e),
                channel: Cow::Borrowed(c),
                data: Some(Cow::Borrowed(d)),
            }) => {
                assert!(inside(e) && inside(c) && inside(d));
                assert_eq!(d, r#"{"a":[1,2]}"#);
            }
            other => panic!("expected borrowed fields, got {other:?}"),
        }
        match p(r#"{"event":"pusher:subscribe","data":{"auth":"","channel":"my-channel"}}"#) {
            Ok(ClientMessage::Subscribe {
                channel: Cow::Borrowed(_),
                auth: Some(Cow::Borrowed(_)),
                ..
            }) => {}
            other => panic!("expected borrowed fields, got {other:?}"),
        }
    }

    #[test]
    fn json_errors() {
        assert!(matches!(p(""), Err(MessageError::Json(_))));
        assert!(matches!(p("{"), Err(MessageError::Json(_))));
        assert!(matches!(
            p(r#"{"event":"pusher:ping",}"#),
            Err(MessageError::Json(_))
        ));
        assert!(matches!(p("[1,2]"), Err(MessageError::Json(_))));
        assert!(matches!(p(r#""pusher:ping""#), Err(MessageError::Json(_))));
        assert_eq!(
            p(r#"{"data":{}}"#),
            Err(MessageError::MissingField("event"))
        );
        assert_eq!(p(r#"{"event":7}"#), Err(MessageError::BadField("event")));
        assert_eq!(
            MessageError::MissingField("event").to_string(),
            "Missing field 'event'"
        );
        assert_eq!(
            MessageError::BadField("data").to_string(),
            "Invalid value for field 'data'"
        );
        let bad = b"{\"event\":\"client-\xff\"}".to_vec();
        assert!(parse_client_message(Dialect::Pusher, &bad).is_err());
    }

    /// Checks the String and the frame twin agree and the frame decodes to the string.
    fn same(s: String, frame: Bytes) -> String {
        assert_eq!(frame, text_frame(s.as_bytes()));
        let mut d = FrameDecoder::new(Role::Client, 1 << 20);
        d.handle_bytes(&frame);
        assert_eq!(
            d.poll_message(),
            Ok(Some(Message::Text(Bytes::copy_from_slice(s.as_bytes()))))
        );
        serde_json::from_str::<serde_json::Value>(&s).expect("valid JSON");
        s
    }

    const P: Dialect = Dialect::Pusher;

    #[test]
    fn connection_established_matches_reference() {
        let id = SocketId::new(208836, 27464492);
        assert_eq!(
            same(
                connection_established(P, &id, 120),
                connection_established_frame(P, &id, 120)
            ),
            r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"208836.27464492\",\"activity_timeout\":120}"}"#
        );
        let id = SocketId::new(u64::MAX, 0);
        assert_eq!(
            connection_established(Dialect::Relay, &id, 30),
            r#"{"event":"relay:connection_established","data":"{\"socket_id\":\"18446744073709551615.0\",\"activity_timeout\":30}"}"#
        );
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            same(
                error(P, None, "Invalid signature"),
                error_frame(P, None, "Invalid signature")
            ),
            r#"{"event":"pusher:error","data":{"code":null,"message":"Invalid signature"}}"#
        );
        assert_eq!(
            same(
                error(P, Some(4001), "App key \"x\" does not exist."),
                error_frame(P, Some(4001), "App key \"x\" does not exist.")
            ),
            r#"{"event":"pusher:error","data":{"code":4001,"message":"App key \"x\" does not exist."}}"#
        );
    }

    #[test]
    fn ping_pong() {
        assert_eq!(
            same(ping(P), ping_frame(P)),
            r#"{"event":"pusher:ping","data":{}}"#
        );
        assert_eq!(
            same(pong(P), pong_frame(P)),
            r#"{"event":"pusher:pong","data":{}}"#
        );
        assert_eq!(pong(Dialect::Relay), r#"{"event":"relay:pong","data":{}}"#);
    }

    #[test]
    fn subscription_succeeded_plain_and_presence() {
        assert_eq!(
            same(
                subscription_succeeded(P, "c", None),
                subscription_succeeded_frame(P, "c", None)
            ),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"c","data":"{}"}"#
        );
        let snap = PresenceSnapshot {
            members: vec![("1", r#"{"name":"A"}"#), ("2", "{}")],
        };
        assert_eq!(
            same(
                subscription_succeeded(P, "presence-room", Some(&snap)),
                subscription_succeeded_frame(P, "presence-room", Some(&snap))
            ),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"presence-room","data":"{\"presence\":{\"ids\":[\"1\",\"2\"],\"hash\":{\"1\":{\"name\":\"A\"},\"2\":{}},\"count\":2}}"}"#
        );
        let empty = PresenceSnapshot::default();
        assert_eq!(
            subscription_succeeded(Dialect::Relay, "presence-x", Some(&empty)),
            r#"{"event":"relay:subscription_succeeded","channel":"presence-x","data":"{\"presence\":{\"ids\":[],\"hash\":{},\"count\":0}}"}"#
        );
        // The double-encoded data decodes to the presence object, with escapes handled.
        let snap = PresenceSnapshot {
            members: vec![("a\"b", r#"{"n":"q\"\\"}"#), ("c", "null")],
        };
        let s = subscription_succeeded(P, "presence-x", Some(&snap));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        let inner: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(
            inner,
            serde_json::json!({"presence":{"ids":["a\"b","c"],"hash":{"a\"b":{"n":"q\"\\"},"c":null},"count":2}})
        );
    }

    #[test]
    fn member_events() {
        assert_eq!(
            same(
                member_added(P, "presence-room", "2", r#"{"name":"B"}"#),
                member_added_frame(P, "presence-room", "2", r#"{"name":"B"}"#)
            ),
            r#"{"event":"pusher_internal:member_added","channel":"presence-room","data":"{\"user_id\":\"2\",\"user_info\":{\"name\":\"B\"}}"}"#
        );
        assert_eq!(
            member_added(P, "presence-room", "3", "null"),
            r#"{"event":"pusher_internal:member_added","channel":"presence-room","data":"{\"user_id\":\"3\",\"user_info\":null}"}"#
        );
        assert_eq!(
            same(
                member_removed(P, "presence-room", "2"),
                member_removed_frame(P, "presence-room", "2")
            ),
            r#"{"event":"pusher_internal:member_removed","channel":"presence-room","data":"{\"user_id\":\"2\"}"}"#
        );
    }

    #[test]
    fn other_server_messages() {
        assert_eq!(
            same(
                subscription_error(
                    P,
                    "private-x",
                    "AuthError",
                    "The connection is unauthorized.",
                    401
                ),
                subscription_error_frame(
                    P,
                    "private-x",
                    "AuthError",
                    "The connection is unauthorized.",
                    401
                )
            ),
            r#"{"event":"pusher:subscription_error","channel":"private-x","data":{"type":"AuthError","error":"The connection is unauthorized.","status":401}}"#
        );
        let ud = r#"{"id":"1","user_info":{"name":"Zoë"}}"#;
        assert_eq!(
            same(signin_success(P, ud), signin_success_frame(P, ud)),
            r#"{"event":"pusher:signin_success","data":{"user_data":"{\"id\":\"1\",\"user_info\":{\"name\":\"Zoë\"}}"}}"#
        );
        assert_eq!(
            same(
                subscription_count(P, "c", 3),
                subscription_count_frame(P, "c", 3)
            ),
            r#"{"event":"pusher_internal:subscription_count","channel":"c","data":"{\"subscription_count\":3}"}"#
        );
        assert_eq!(
            same(cache_miss(P, "cache-c"), cache_miss_frame(P, "cache-c")),
            r#"{"event":"pusher:cache_miss","channel":"cache-c"}"#
        );
        let online: &[&str] = &["1", "2"];
        let offline: &[&str] = &[];
        assert_eq!(
            same(
                watchlist_events(P, &[("online", online), ("offline", offline)]),
                watchlist_events_frame(P, &[("online", online), ("offline", offline)])
            ),
            r#"{"event":"pusher_internal:watchlist_events","data":{"events":[{"name":"online","user_ids":["1","2"]},{"name":"offline","user_ids":[]}]}}"#
        );
    }

    #[test]
    fn server_event_data_is_a_json_string_verbatim() {
        let data = r#"{"some":"data"}"#;
        assert_eq!(
            same(
                event("my-event", "my-channel", data, None),
                event_frame("my-event", "my-channel", data, None)
            ),
            r#"{"event":"my-event","channel":"my-channel","data":"{\"some\":\"data\"}"}"#
        );
        assert_eq!(
            event(r"App\Events\OrderShipped", "c", "plain text", Some("42")),
            r#"{"event":"App\\Events\\OrderShipped","channel":"c","data":"plain text","user_id":"42"}"#
        );
        // Round trip of awkward data through serde_json.
        let nasty =
            "quote\" backslash\\ nl\n tab\t nul\u{0} ctl\u{1f} del\u{7f} é € 🎉 \u{2028} </script>";
        let s = same(
            event("e", "c", nasty, None),
            event_frame("e", "c", nasty, None),
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["data"].as_str(), Some(nasty));
        // Large data uses the 16-bit and 64-bit frame lengths.
        for len in [100, 200, 70_000] {
            let d = "x".repeat(len);
            same(event("e", "c", &d, None), event_frame("e", "c", &d, None));
        }
    }

    #[test]
    fn client_event_relay() {
        assert_eq!(
            same(
                client_event(
                    "client-typing",
                    "presence-room",
                    Some(r#"{"x":1}"#),
                    Some("42")
                ),
                client_event_frame(
                    "client-typing",
                    "presence-room",
                    Some(r#"{"x":1}"#),
                    Some("42")
                )
            ),
            r#"{"event":"client-typing","channel":"presence-room","data":{"x":1},"user_id":"42"}"#
        );
        assert_eq!(
            client_event("client-a", "private-b", Some(r#""str""#), None),
            r#"{"event":"client-a","channel":"private-b","data":"str"}"#
        );
        assert_eq!(
            same(
                client_event("client-a", "private-b", None, None),
                client_event_frame("client-a", "private-b", None, None)
            ),
            r#"{"event":"client-a","channel":"private-b"}"#
        );
    }

    #[test]
    fn parse_then_relay_round_trip() {
        let msg = r#"{"event":"client-move","channel":"private-game","data":{"x": 1.50, "who":"\u00e9"}}"#;
        let Ok(ClientMessage::ClientEvent {
            event,
            channel,
            data,
        }) = p(msg)
        else {
            panic!()
        };
        assert_eq!(
            client_event(&event, &channel, data.as_deref(), None),
            r#"{"event":"client-move","channel":"private-game","data":{"x": 1.50, "who":"\u00e9"}}"#
        );
    }
}
