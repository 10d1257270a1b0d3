//! Scenario runners. Each takes a plan, drives the generator threads and returns a result
//! struct that the report module prints and serializes.

pub mod abuse;
pub mod abuse_run;
pub mod connect;
pub mod fanout;
pub mod presence;
pub mod rest;
pub mod soak;
