//! The hot receive path of a subscriber: everything one socket read's frames change. It runs
//! for every delivery of a fan-out run, so it stays cheap: frames are borrowed from the
//! connection's read buffer ([`FrameReader`]), the payload stamp (phase, event number,
//! intended send time) is found with one substring search and read digit by digit without
//! building a JSON value ([`StampFinder`]), and the sequence tracker and histogram only add
//! to what they have. No allocation happens per frame (proven by `tests/no_alloc.rs` with a
//! counting allocator); a WebSocket ping (rare) copies its payload for the pong.

use crate::latency::Latency;
use crate::loss::SeqTracker;
use crate::payload::StampFinder;
use crate::wsframe::{Frame, FrameError, FrameReader};

/// The receiver's state that deliveries update.
pub struct Tally<'a> {
    /// Current phase: deliveries stamped with another are `stale`.
    pub phase: u32,
    pub channels: u64,
    /// The channel this receiver subscribed to: deliveries of others are `misrouted`.
    pub channel: u64,
    pub tracker: &'a mut SeqTracker,
    pub lat: &'a mut Latency,
    pub stale: &'a mut u64,
    pub misrouted: &'a mut u64,
    /// Every stamped delivery (progress line).
    pub delivered: &'a mut u64,
}

/// What else a read held that needs an answer or ends the connection.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Control {
    pub pusher_ping: bool,
    pub ws_ping: Option<Vec<u8>>,
    pub closed: bool,
}

/// Searches for the `pusher:ping` event name.
pub struct PingFinder(memchr::memmem::Finder<'static>);

impl Default for PingFinder {
    fn default() -> Self {
        PingFinder(memchr::memmem::Finder::new(b"\"pusher:ping\""))
    }
}

/// Records one text message received at `now`: a stamped delivery updates `t`. Returns true
/// if it was a `pusher:ping` (to be answered with a `pusher:pong`). Shared by both receive
/// paths (the per-connection tasks and [`crate::epoll_receiver`]), so they count the same.
#[inline]
pub fn on_text(
    text: &[u8],
    finder: &StampFinder,
    ping: &PingFinder,
    now: u64,
    t: &mut Tally<'_>,
) -> bool {
    if let Some(stamp) = finder.find(text) {
        if stamp.phase != t.phase {
            *t.stale += 1;
        } else if stamp.k % t.channels != t.channel {
            *t.misrouted += 1;
        } else {
            t.tracker.record(stamp.k / t.channels);
            t.lat.record(now, stamp.intended_ns);
        }
        *t.delivered += 1;
        false
    } else {
        ping.0.find(text).is_some()
    }
}

/// Takes every complete frame buffered in `rd`, received at `now` (one clock reading per
/// read): records each stamped delivery in `t`.
pub fn take_frames(
    rd: &mut FrameReader,
    finder: &StampFinder,
    ping: &PingFinder,
    now: u64,
    t: &mut Tally<'_>,
) -> Result<Control, FrameError> {
    let mut c = Control::default();
    rd.drain(|f| {
        match f {
            Frame::Text(text) if on_text(text, finder, ping, now, t) => c.pusher_ping = true,
            Frame::Ping(p) => c.ws_ping = Some(p.to_vec()),
            Frame::Close(_) => c.closed = true,
            _ => {}
        }
        !c.closed
    })?;
    Ok(c)
}
