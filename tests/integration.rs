//! Integration tests: real sockets on loopback, Sluice in-process or as a process.

mod support;

mod proxy;
