//! Integration tests: real sockets on loopback, Sluice in-process or as a process.

mod support;

mod balance;
mod failover;
mod lifecycle;
mod limits;
mod process;
mod proxy;
