//! HTTP/1.1 for the API: a sans-IO request parser ([`request`]), responses ([`response`]) and
//! the keep-alive connection loop ([`connection`]).

pub mod connection;
pub mod request;
pub mod response;

pub use connection::{serve, Handler, Timeouts};
pub use request::{Limits, Progress, Request, RequestReader};
pub use response::Response;
