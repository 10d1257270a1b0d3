//! `ringcast-loadtest`: an open-loop load generator for any Pusher-protocol server.
//!
//! ```text
//!  main thread ── Ctl (atomics: phase, collect, stop) ──► generator thread k (pinned, monoio)
//!      ▲                                                    ├─ subscriber tasks: read, find the
//!      │ ThreadResult per phase (histogram, loss)           │  payload stamp, record latency =
//!      └────────────────────────────────────────────────────┤  now - intended send time
//!                                                           └─ publisher tasks: fixed schedule,
//!                                                              never wait for answers
//! ```
//!
//! Modules: [`latency`] (HdrHistogram accounting), [`loss`] (loss/duplicate detection),
//! [`payload`] (the stamp in each event), [`scenario`] (fanout, sweep phases, connect,
//! presence), [`floor`] (the reference fan-out server), [`report`] (tables, JSON, CSV, SVG).

pub mod clock;
pub mod compare;
pub mod epoll_receiver;
pub mod floor;
pub mod gen;
pub mod http;
pub mod latency;
pub mod loss;
pub mod net;
pub mod payload;
pub mod procfs;
pub mod procs;
pub mod receive;
pub mod report;
pub mod scenario;
pub mod serverwatch;
pub mod tls;
pub mod wsframe;
