//! Integration tests: real sockets on loopback, Sluice in-process or as a process.

mod support;

mod api;
mod balance;
mod dashboard;
mod failover;
mod lifecycle;
mod limits;
mod metrics;
mod process;
mod proxy;
